"""Training curves from ``metrics.jsonl``: loss per split, learning rate and throughput against the step; bits per
byte and task accuracy when evaluators logged them; several runs overlaid, one colour each."""

import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

# The Agg canvas directly, not pyplot: no global figure state, no display needed.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from llm_gym.errors import UserError
from llm_gym.outputs import refuse_writing_over_inputs, writing

PANELS = {"loss": "loss (nats/token)", "lr": "learning rate", "tokens_per_s": "tokens/s"}
"""Plotted keys and their axis labels; loss for every split, the others from the train lines."""
EVALUATION_PANELS = {"bits_per_byte": "bits per byte", "accuracy": "accuracy"}
PHASE_PREFIX, PHASE_SUFFIX = "phase_", "_s"
"""Train lines' seconds per step of each phase (``phase_data_s``, ...): a stacked panel of the first run."""
PHASES_PANEL = "phases"
"""Plotted for every split that logs them (``evaluation.evaluators``), when any run does."""
METRICS_FILE = "metrics.jsonl"
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
    for key in (*PANELS, *EVALUATION_PANELS):
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


def metrics_file(path: Path) -> Path:
    """``path`` itself, or the metrics.jsonl of the experiment directory ``path``."""
    return path / METRICS_FILE if path.is_dir() else path


def run_labels(paths: Sequence[Path]) -> list[str]:
    """A short name per run: its experiment directory's name, or the whole path where two names agree."""
    names = [metrics_file(path).resolve().parent.name for path in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths, strict=True)]


def smoothed(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing; a gap (NaN) stays a gap and is skipped."""
    average, seen, result = 0.0, 0, []
    for value in values:
        if math.isnan(value):
            result.append(value)
            continue
        average, seen = weight * average + (1 - weight) * value, seen + 1
        result.append(average / (1 - weight**seen))
    return result


def _is_phase(key: str) -> bool:
    return key.startswith(PHASE_PREFIX) and key.endswith(PHASE_SUFFIX)


def _stack_phases(axis, records: list[dict], phase_keys: list[str]) -> None:
    """Where each step's time went, phase above phase, at each train line."""
    lines = [record for record in records if record.get("split") == "train" and phase_keys[0] in record]
    steps = [record["step"] for record in lines]
    values = [[record.get(key, 0.0) for record in lines] for key in phase_keys]
    names = [key.removeprefix(PHASE_PREFIX).removesuffix(PHASE_SUFFIX) for key in phase_keys]
    axis.stackplot(steps, values, labels=names, alpha=0.8)
    axis.legend(title="phase", fontsize="small", loc="upper right")


def plot_metrics(metrics_paths: Sequence[Path], output_path: Path, smoothing: float = 0.0) -> None:
    """Render the curves of one run, or of several overlaid, to a PNG; it appears at ``output_path`` only when
    complete. ``smoothing`` (0 to < 1) smooths the train curves; evaluation points are drawn as logged."""
    paths = list(metrics_paths)
    refuse_writing_over_inputs([output_path], [metrics_file(path) for path in paths], "--output_path")
    runs = {label: read_metrics(metrics_file(path)) for label, path in zip(run_labels(paths), paths, strict=True)}
    panels = dict(PANELS)
    panels.update(
        (key, label)
        for key, label in EVALUATION_PANELS.items()
        if any(key in record for records in runs.values() for record in records)
    )
    first_run, first_records = next(iter(runs.items()))
    phase_keys = sorted({key for record in first_records for key in record if _is_phase(key)})
    if phase_keys:
        panels[PHASES_PANEL] = "s per step" if len(runs) == 1 else f"s per step ({first_run})"
    figure = Figure(figsize=(8, 3 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True)
    for axis, (key, label) in zip(axes, panels.items(), strict=True):
        if key == PHASES_PANEL:
            _stack_phases(axis, first_records, phase_keys)
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            continue
        drawn = False
        for run_index, (run, records) in enumerate(runs.items()):
            series = _series(records, key, splits={"train"} if key in ("lr", "tokens_per_s") else None)
            for split, points in sorted(series.items(), key=lambda item: (item[0] != "train", item[0])):
                steps, values = zip(*points, strict=True)
                if split == "train" and smoothing:
                    values = smoothed(values, smoothing)
                axis.plot(
                    steps,
                    values,
                    label=split if len(runs) == 1 else f"{run} {split}",
                    color=f"C{run_index}" if len(runs) > 1 else None,
                    linestyle="-" if split == "train" else "--",
                    marker=None if split == "train" else "o",
                    markersize=4,
                )
                drawn = True
        if not drawn:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="gray")
        elif key in ("loss", *EVALUATION_PANELS):
            axis.legend(title="split" if len(runs) == 1 else "run, split", fontsize="small")
        if key == "lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    last_step = max(record["step"] for records in runs.values() for record in records)
    title = str(metrics_file(paths[0])) if len(runs) == 1 else f"{len(runs)} runs"
    axes[0].set_title(f"{title} (last step {last_step}" + (f", train smoothed {smoothing}" if smoothing else "") + ")")
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
