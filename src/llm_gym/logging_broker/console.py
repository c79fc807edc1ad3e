"""The console logger: a rich progress bar on a terminal, plain lines in log files."""

import datetime
import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import MetricsRecord, ProgressUpdate, TextMessage


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    progress_bar: bool = True


def format_metrics(record: MetricsRecord, max_steps: int | None = None) -> str:
    """``step 10/100 train loss 3.2146 lr 3.000e-04 ...``: one greppable line per record. The phase timings
    (``phase_*_s``) stay in metrics.jsonl and the plot: six more numbers a line would bury the others."""
    step = f"{record.step}/{max_steps}" if max_steps else str(record.step)
    shown = {key: value for key, value in record.metrics.items() if not key.startswith(_PHASE_PREFIX)}
    values = (f"{key} {_format_value(key, value)}" for key, value in shown.items())
    return " ".join([f"step {step}", record.split, *values])


_PHASE_PREFIX = "phase_"
# One format per key whatever the magnitude, so a column of lines reads alike as the values change.
_KEY_FORMATS = {"lr": "{:.3e}", "tokens_per_s": "{:,.0f}"}


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    value = float(value)
    if key in _KEY_FORMATS and math.isfinite(value):
        return _KEY_FORMATS[key].format(value)
    if math.isfinite(value) and abs(value) >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.4f}"


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Console(Subscriber):
    """Progress bar (step, loss, tokens/s, ETA) with eval results and notes printed above it.

    Without a terminal on stdout, or with ``progress_bar: false``, every metrics record becomes a plain line.
    ``console`` is the rich console to draw on (tests pass a recording one); stdout by default.
    """

    message_types = (ProgressUpdate, MetricsRecord, TextMessage)

    def __init__(
        self,
        config: ConsoleConfig,
        experiment_dir: Path,
        resolved_config: dict,
        resume_step: int | None,
        console: RichConsole | None = None,
    ) -> None:
        self._console = console or RichConsole()
        self._show_bar = config.progress_bar and self._console.is_terminal
        self._progress: Progress | None = None
        self._task_id: Any = None
        self._max_steps: int | None = None
        self._started = time.monotonic()
        self._first_update: tuple[float, int] | None = None
        """When the first step was reported, and which: the origin of the time-left estimate of plain lines."""

    def consume(self, message: Any) -> None:
        if isinstance(message, ProgressUpdate):
            self._on_progress(message)
        elif isinstance(message, MetricsRecord):
            if not self._show_bar:
                line = format_metrics(message, self._max_steps)
                self._print_plain(line + self._timing(message.step) if message.split == "train" else line)
            elif message.split != "train":  # the bar already shows the train loss
                self._print_above_bar(format_metrics(message, self._max_steps))
        elif self._show_bar:
            self._print_above_bar(message.text)
        else:
            self._print_plain(message.text)

    def _timing(self, step: int) -> str:
        """`` elapsed 0:01:02 eta 0:09:18`` for log files, which have no bar to show it."""
        now = time.monotonic()
        text = f" elapsed {_duration(now - self._started)}"
        if self._first_update is not None and self._max_steps and step > self._first_update[1]:
            first_time, first_step = self._first_update
            seconds_per_step = (now - first_time) / (step - first_step)
            text += f" eta {_duration(seconds_per_step * (self._max_steps - step))}"
        return text

    def _on_progress(self, update: ProgressUpdate) -> None:
        self._max_steps = update.max_steps
        if self._first_update is None:
            self._first_update = (time.monotonic(), update.step)
        if not self._show_bar:
            return
        fields = {"loss": update.metrics.get("loss", math.nan), "tokens_per_s": update.metrics.get("tokens_per_s", 0.0)}
        if self._progress is None:
            self._progress = self._new_progress()
            # Added before the first render, so a resumed run's bar never flashes 0/max_steps.
            self._task_id = self._progress.add_task("train", total=update.max_steps, completed=update.step, **fields)
            self._progress.start()
        else:
            self._progress.update(self._task_id, completed=update.step, **fields)

    def _new_progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[tokens_per_s]:,.0f} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            refresh_per_second=4,
        )

    def _print_above_bar(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _print_plain(self, text: str) -> None:
        # Plain print, not rich: log files get unwrapped, uncoloured lines.
        print(text, file=self._console.file, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
