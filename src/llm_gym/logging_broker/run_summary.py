"""``llm_gym compare``: one line per run from its metrics.jsonl, to set runs side by side.

Final and best loss of an evaluation split, tokens trained on, and training time. The time is what the train
lines imply, the sum over log windows of tokens / tokens_per_s: the time of the optimizer steps, without
evaluation and checkpoint saves (which tokens_per_s leaves out), so runs on one kind of machine compare.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_gym.errors import UserError
from llm_gym.logging_broker.plot import metrics_file, read_metrics, run_labels
from llm_gym.logging_broker.text_table import text_table


@dataclass(frozen=True)
class RunSummary:
    run: str
    last_step: int
    final_loss: float
    final_step: int | None
    best_loss: float
    best_step: int | None
    tokens: int | None
    train_seconds: float | None


def summarize_run(run: str, records: list[dict], split: str) -> RunSummary:
    evaluations = [
        (record["step"], float(record["loss"]))
        for record in records
        if record["split"] == split and isinstance(record.get("loss"), int | float) and math.isfinite(record["loss"])
    ]
    train = [record for record in records if record["split"] == "train"]
    final_step, final_loss = evaluations[-1] if evaluations else (None, math.nan)
    best_step, best_loss = min(evaluations, key=lambda item: item[1]) if evaluations else (None, math.nan)
    tokens = [record["tokens_seen"] for record in train if isinstance(record.get("tokens_seen"), int)]
    seconds, previous = 0.0, 0
    for record in train:
        tokens_seen, rate = record.get("tokens_seen"), record.get("tokens_per_s")
        if not isinstance(tokens_seen, int) or not isinstance(rate, int | float) or rate <= 0:
            continue
        seconds, previous = seconds + (tokens_seen - previous) / rate, tokens_seen
    return RunSummary(
        run,
        max(record["step"] for record in records),
        final_loss,
        final_step,
        best_loss,
        best_step,
        tokens[-1] if tokens else None,
        seconds if tokens else None,
    )


def summarize_runs(metrics_paths: Sequence[Path], split: str = "val") -> list[RunSummary]:
    summaries = [
        summarize_run(label, read_metrics(metrics_file(path)), split)
        for label, path in zip(run_labels(metrics_paths), metrics_paths, strict=True)
    ]
    if all(summary.final_step is None for summary in summaries):
        raise UserError(f"no run has a '{split}' line with a loss: name the evaluation split with --split")
    return summaries


def _loss_at(loss: float, step: int | None) -> str:
    return "-" if step is None else f"{loss:.4f} @ {step}"


def comparison_lines(summaries: Sequence[RunSummary], split: str) -> list[str]:
    header = ["run", "steps", f"final {split} loss", f"best {split} loss", "tokens", "train time"]
    rows = [
        [
            summary.run,
            f"{summary.last_step:,}",
            _loss_at(summary.final_loss, summary.final_step),
            _loss_at(summary.best_loss, summary.best_step),
            "-" if summary.tokens is None else f"{summary.tokens:,}",
            "-" if summary.train_seconds is None else f"{summary.train_seconds:,.1f} s",
        ]
        for summary in summaries
    ]
    return text_table(header, rows)
