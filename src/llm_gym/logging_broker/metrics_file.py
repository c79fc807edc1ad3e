"""``metrics.jsonl``: one JSON object per metrics record, the experiment's durable record of training."""

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import MetricsRecord
from llm_gym.outputs import writing


class MetricsJsonlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field("metrics.jsonl", min_length=1, description="file name inside the experiment directory")


def metrics_line(record: MetricsRecord) -> str:
    """``{"step": .., "split": .., **metrics}``; non-finite values become ``null`` so the file stays strict JSON."""
    row: dict[str, Any] = {"step": record.step, "split": record.split}
    row.update((key, _json_number(value)) for key, value in record.metrics.items())
    return json.dumps(row)


def _json_number(value: Any) -> int | float | None:
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsJsonl(Subscriber):
    """Writes ``experiment_dir/filename``, one line per record, flushed as written.

    A fresh run replaces an existing file. A resumed run keeps the lines up to its checkpoint's step and
    drops the later ones, which the run killed after that checkpoint wrote and the resumed run writes again.
    """

    message_types = (MetricsRecord,)

    def __init__(
        self, config: MetricsJsonlConfig, experiment_dir: Path, resolved_config: dict, resume_step: int | None
    ) -> None:
        self.path = Path(experiment_dir) / config.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            _truncate_after(self.path, resume_step)
            self._file = self.path.open("a", encoding="utf-8")
        else:
            self._file = self.path.open("w", encoding="utf-8")

    def consume(self, message: MetricsRecord) -> None:
        with writing(self.path):
            self._file.write(metrics_line(message) + "\n")
            self._file.flush()

    def close(self) -> None:
        with writing(self.path):  # flushes what a full disk refused before, which fails again
            self._file.close()


def _truncate_after(path: Path, last_step: int) -> None:
    """Keep the lines up to ``last_step``, atomically; a torn last line of a killed run goes too."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)
