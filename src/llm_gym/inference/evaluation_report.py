"""What ``llm_gym evaluate`` shows and keeps: a table on stdout and one JSON file per evaluation.

The JSON file holds no time or host, only what the checkpoint and the request determine, so evaluating the
same checkpoint the same way writes the same bytes (on the same kind of device).
"""

import json
import math
import os
from pathlib import Path
from typing import Any

from llm_gym.inference.evaluation import EvaluationReport
from llm_gym.logging_broker.text_table import text_table


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def report_lines(report: EvaluationReport) -> list[str]:
    lines = [f"{report.checkpoint_dir}: step {report.step}, config {report.config_fingerprint}"]
    if report.corpora:
        rows = [
            [name, f"{samples:,}", f"{totals.tokens:,}", f"{totals.bytes:,}", _number(totals.loss),
             _number(totals.perplexity, 2), _number(totals.bits_per_byte)]
            for name, (_, samples, totals) in report.corpora.items()
        ]  # fmt: skip
        lines += text_table(["corpus", "samples", "tokens", "bytes", "loss", "perplexity", "bits/byte"], rows)
    if report.tasks:
        rows = [
            [name, f"{result.examples:,}", _number(result.accuracy), _number(result.accuracy_norm),
             _number(result.chance)]
            for name, (_, result) in report.tasks.items()
        ]  # fmt: skip
        lines += text_table(["task", "examples", "accuracy", "accuracy_norm", "chance"], rows)
    for task, metrics in report.harness.items():
        lines.append(f"harness {task}: " + ", ".join(f"{key} {_number(value)}" for key, value in metrics.items()))
    return lines


def _strict_json(value: Any) -> Any:
    """Non-finite numbers become null: the file stays strict JSON, as metrics.jsonl does."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    return value


def write_report(report: EvaluationReport, path: Path) -> None:
    """Write the JSON under a temporary name and rename it: a file under ``path`` is always complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(_strict_json(report.to_json()), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
