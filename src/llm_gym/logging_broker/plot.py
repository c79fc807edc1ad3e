"""Training curves from ``metrics.jsonl``: loss per split, learning rate and throughput against the step."""

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

# The Agg canvas directly, not pyplot: no global figure state, no display needed.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from llm_gym.errors import UserError
from llm_gym.outputs import refuse_writing_over_inputs, writing

PANELS = {"loss": "loss (nats/token)", "lr": "learning rate", "tokens_per_s": "tokens/s"}
"""Plotted keys and their axis labels; loss for every split, the others from the train lines."""
MAX_STEP = 2**63 - 1
"""Steps are plotted as floats; the trainer's counters are 64-bit."""


def read_metrics(path: Path) -> list[dict]:
    """Every record of a metrics file; a UserError names the first line that is not a metrics record."""
    if not path.is_file():
        raise UserError(f"metrics file not found: {path}")
    records = []
    with path.open("rb") as lines:
        for number, raw_line in enumerate(lines, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})") from None
            if line.strip():
                records.append(_parse_record(line, f"{path}:{number}"))
    if not records:
        raise UserError(f"metrics file is empty: {path}")
    return records


def _parse_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg})") from error
    except ValueError as error:  # a number of more digits than Python converts
        raise UserError(f"{where}: not readable JSON ({error})") from error
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("step"), int) or not isinstance(record.get("split"), str):
        raise UserError(f"{where}: a metrics record needs an integer 'step' and a string 'split'")
    if not 0 <= record["step"] <= MAX_STEP:
        raise UserError(f"{where}: 'step' must be between 0 and 2^63 - 1")
    for key in PANELS:
        # null stands for a non-finite value and is drawn as a gap.
        if key not in record or record[key] is None:
            continue
        if not isinstance(record[key], int | float):
            raise UserError(f"{where}: '{key}' must be a number, got {record[key]!r}")
        if isinstance(record[key], int) and abs(record[key]) > sys.float_info.max:
            raise UserError(f"{where}: '{key}' is an integer too large to plot")
    return record


def _series(records: list[dict], key: str, splits: set[str] | None) -> dict[str, list[tuple[int, float]]]:
    series = defaultdict(list)
    for record in records:
        if key in record and (splits is None or record["split"] in splits):
            value = math.nan if record[key] is None else float(record[key])
            series[record["split"]].append((record["step"], value))
    return series


def plot_metrics(metrics_path: Path, output_path: Path) -> None:
    """Render the curves to a PNG; the image appears at ``output_path`` only when complete."""
    refuse_writing_over_inputs([output_path], [metrics_path], "--output_path")
    records = read_metrics(metrics_path)
    figure = Figure(figsize=(8, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for axis, (key, label) in zip(axes, PANELS.items(), strict=True):
        series = _series(records, key, splits=None if key == "loss" else {"train"})
        for split, points in sorted(series.items(), key=lambda item: (item[0] != "train", item[0])):
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=split, marker=None if split == "train" else "o", markersize=4)
        if not series:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="gray")
        if key == "lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(title="split")
    axes[0].set_title(f"{metrics_path} (last step {max(record['step'] for record in records)})")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(f".{output_path.name}.tmp")
    try:
        with writing(output_path):
            figure.savefig(temporary, format="png", dpi=120)
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)
