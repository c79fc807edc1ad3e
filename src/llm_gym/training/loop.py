"""The training loop. It receives built components and never reads YAML; everything else plugs into it."""

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from llm_gym.config.app import NonFiniteAction, TrainingSettings
from llm_gym.data.collators import Batch
from llm_gym.errors import RankLocalError, RunStopped, UserError
from llm_gym.logging_broker.messages import MetricsRecord, ProgressUpdate, TextMessage
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.training.preemption import PREEMPTED_EXIT_STATUS, request_requeue
from llm_gym.training.profiling import MemorySnapshots, PhaseClock, StepTrace
from llm_gym.training.step import StepOutcome, StepResult, evaluate, train_step


class NonFiniteLossError(UserError):
    """Training diverged; nothing non-finite was written to a checkpoint."""


def describe_non_finite(result: StepResult) -> str:
    """Which of the step's loss and gradient norm is not finite, with both values."""
    loss_finite, grad_norm_finite = math.isfinite(result.loss), math.isfinite(result.grad_norm)
    if not loss_finite and not grad_norm_finite:
        return f"non-finite loss ({result.loss}) and gradient norm ({result.grad_norm})"
    if not loss_finite:
        return f"non-finite loss ({result.loss}; gradient norm {result.grad_norm})"
    return f"non-finite gradient norm ({result.grad_norm}; the loss, {result.loss}, is finite)"


@dataclass
class TrainingProgress:
    """Counters that a checkpoint saves and a resumed run continues from."""

    step: int = 0
    tokens_seen: int = 0
    skipped_steps: int = 0
    consecutive_skipped_steps: int = 0
    """Skipped since the last update; not saved (checkpoints of earlier releases lack it), so a resumed run
    counts from 0."""

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


@dataclass
class LossWindow:
    """The train loss since the previous train line, token-weighted over its steps: the line's ``loss``.

    A checkpoint saves it, so that a resumed run writes the lines of an uninterrupted one. Steps whose loss
    is not finite (updates skipped with ``on_nonfinite: skip``) are left out.
    """

    loss_sum: float = 0.0
    z_loss_sum: float = 0.0
    tokens: int = 0

    def add(self, result: StepResult) -> None:
        if math.isfinite(result.loss_sum) and math.isfinite(result.z_loss_sum):
            self.loss_sum += result.loss_sum
            self.z_loss_sum += result.z_loss_sum
            self.tokens += result.tokens

    def means(self) -> tuple[float, float]:
        """Cross-entropy and z-loss per target token over the window (NaN when no step counted)."""
        if not self.tokens:
            return math.nan, math.nan
        return self.loss_sum / self.tokens, self.z_loss_sum / self.tokens

    def start(self) -> None:
        self.loss_sum, self.z_loss_sum, self.tokens = 0.0, 0.0, 0

    def state_dict(self) -> dict[str, float | int]:
        return {"loss_sum": self.loss_sum, "z_loss_sum": self.z_loss_sum, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.z_loss_sum = float(state["loss_sum"]), float(state["z_loss_sum"])
        self.tokens = int(state["tokens"])


class TrainingThroughput:
    """Tokens per second over a log window, counting the time of training steps and their logging only.

    Evaluation and checkpoint saves inside the window are left out, so a save does not pass for a slow step.
    Tokens are counted when the loop reads the steps from the device, so the time up to then is the time the
    device took for them, not the time the host took to queue them.
    """

    def __init__(self) -> None:
        self._tokens, self._seconds, self._since = 0, 0.0, time.perf_counter()

    def add(self, tokens: int) -> float:
        """Count the tokens of the steps since the last call; return the window's tokens per second so far."""
        now = time.perf_counter()
        self._tokens, self._seconds, self._since = self._tokens + tokens, self._seconds + now - self._since, now
        return self._tokens / max(self._seconds, 1e-9)

    def start_window(self) -> None:
        self._tokens, self._seconds = 0, 0.0

    @contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self._since += time.perf_counter() - start


class Publisher(Protocol):
    def publish(self, message: Any) -> None: ...


class CheckpointSaver(Protocol):
    def is_due(self, step: int, is_final: bool) -> bool:
        """Asked after every step, on every rank."""
        ...

    def save(self, step: int) -> None: ...

    def finish(self) -> None:
        """Wait for a save still being written (``checkpointing.async``) and publish it."""
        ...


class StopRequests(Protocol):
    def should_stop(self) -> bool:
        """Asked after every step, on every rank; the same answer on all of them (``PreemptionWatch``)."""
        ...


class Heartbeat(Protocol):
    def beat(self) -> None:
        """Told of each finished step, evaluation and save (``HangWatchdog``)."""
        ...


class Evaluator(Protocol):
    """Run with every evaluation (``evaluation.evaluators``); its metrics go out under the split ``name``."""

    name: str

    def __call__(
        self,
        model: nn.Module,
        parallelism: ParallelismStrategy,
        split_batches: Callable[[str], Iterable[Batch]],
    ) -> dict[str, float]: ...


@dataclass
class Trainer:
    settings: TrainingSettings
    model: nn.Module
    parallelism: ParallelismStrategy
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    train_batches: Iterable[Batch]
    eval_splits: dict[str, Callable[[], Iterable[Batch]]]
    broker: Publisher
    checkpointer: CheckpointSaver
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    hardware_metrics: Callable[[float], dict[str, float]] | None = None
    """Figures derived from tokens/s on an accelerator (mfu, peak memory)."""
    vocab_size: int | None = None
    """The model's vocabulary; a batch with a token id beyond it is refused before it reaches the embedding."""
    loss_window: LossWindow = field(default_factory=LossWindow)
    evaluators: list[Evaluator] = field(default_factory=list)
    """An evaluator named after an eval split reports that split in place of its plain loss line."""
    stop_requests: StopRequests | None = None
    """Preemption: the run saves and stops after the step at which it answers True."""
    heartbeat: Heartbeat | None = None
    step_trace: StepTrace | None = None
    memory_snapshots: MemorySnapshots | None = None
    gather_step_seconds: Callable[[float], list[float]] | None = None
    """Every rank's training seconds per step over the log window, by rank (several ranks): the stragglers."""
    _last_lr: float = field(default=0.0, init=False)
    _unread: list[tuple[int, StepOutcome]] = field(default_factory=list, init=False)
    """The steps whose outcome the host has not read yet, with their numbers."""
    _phases: PhaseClock = field(default_factory=PhaseClock, init=False)

    def train(self) -> None:
        """Step until ``max_steps``. The host reads what the steps gave only on steps that log, evaluate or
        save: an ordinary step queues its work on the device and goes on to the next without waiting."""
        settings, progress = self.settings, self.progress
        batches = iter(self.train_batches)
        self.model.train()
        if settings.eval_at_start and progress.step == 0:
            self._evaluate_all()
        throughput = TrainingThroughput()
        shown: dict[str, float] = {}
        """What the progress bar shows: the last train line's loss and tokens/s."""
        phases = self._phases
        while progress.step < settings.max_steps:
            if self.step_trace is not None:
                self.step_trace.before_step(progress.step + 1)
            self._optimizer_step(batches)
            progress.step += 1
            phases.steps += 1
            step, is_final = progress.step, progress.step == settings.max_steps
            logs = step % settings.log_interval == 0 or is_final
            evaluates = step % settings.eval_interval == 0 or is_final
            with phases.phase("checkpoint"):
                saves = self.checkpointer.is_due(step, is_final)
            if logs or evaluates or saves:
                last, tokens_per_s = self._read_steps(throughput)
            line = self._train_metrics(last, tokens_per_s) if logs else None
            if line is not None:
                shown = {"loss": line["loss"], "tokens_per_s": tokens_per_s}
            self.broker.publish(ProgressUpdate(step, settings.max_steps, shown))
            if line is not None:
                self.broker.publish(MetricsRecord(step, "train", line))
                throughput.start_window()
                self.loss_window.start()
                phases.start_window()
            with throughput.paused():
                if evaluates:
                    with phases.phase("evaluation"):
                        self._evaluate_all()
                    self._beat()
                if saves:
                    with phases.phase("checkpoint"):
                        self.checkpointer.save(step)
            self._beat()
            if self.step_trace is not None:
                self.step_trace.after_step(step)
            if self.memory_snapshots is not None:
                self.memory_snapshots.after_step(step)
            if self.stop_requests is not None and self.stop_requests.should_stop() and not is_final:
                self._stop_for_preemption(step, saved=saves, throughput=throughput)
        self.checkpointer.finish()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    def _stop_for_preemption(self, step: int, saved: bool, throughput: TrainingThroughput) -> None:
        if not saved:
            if self._unread:
                self._read_steps(throughput)  # stops at a non-finite step, before saving it
            self.checkpointer.save(step)
        self.checkpointer.finish()
        message = (
            f"asked to stop (SIGTERM or SIGUSR1): stopped after step {step} of {self.settings.max_steps}, its "
            "checkpoint saved; run it again with --resume auto to continue"
        )
        self.broker.publish(TextMessage(message))
        request_requeue()
        raise RunStopped(message, PREEMPTED_EXIT_STATUS)

    def _read_steps(self, throughput: TrainingThroughput) -> tuple[StepResult, float]:
        """Wait for the device and read the steps since the last read, in one transfer: count their tokens and
        losses, and stop at the first non-finite one (``on_nonfinite: stop``), so that nothing after it is
        logged as trained or saved. Returns the last step's result and the window's tokens/s."""
        with self._phases.phase("device_wait"):
            results = StepOutcome.read_all([outcome for _, outcome in self._unread])
        for (step, _), result in zip(self._unread, results, strict=True):
            if not result.finite and self.settings.on_nonfinite == NonFiniteAction.STOP:
                raise NonFiniteLossError(
                    f"{describe_non_finite(result)} at step {step}; lower optimizer.config.lr or set "
                    "training.on_nonfinite=skip"
                )
            self.progress.tokens_seen += result.tokens
            self.loss_window.add(result)
        self._unread.clear()
        return results[-1], throughput.add(sum(result.tokens for result in results))

    def _optimizer_step(self, batches: Iterator[Batch]) -> None:
        settings, phases = self.settings, self._phases
        with phases.phase("data"):
            micro_batches = [
                self._in_vocabulary(next(batches), "train") for _ in range(settings.gradient_accumulation_steps)
            ]
        with phases.phase("step"):
            outcome = train_step(
                self.model,
                self.parallelism,
                micro_batches,
                settings.max_grad_norm,
                settings.z_loss_weight,
                settings.loss_chunk_tokens,
            )
        self._last_lr = self.lr_scheduler.get_last_lr()[0]
        step = self.progress.step + 1
        self._unread.append((step, outcome))
        if self.settings.on_nonfinite == NonFiniteAction.SKIP:
            # Skipping decides on the host whether to update: this step waits for the device.
            with phases.phase("device_wait"):
                result = outcome.read()
            with phases.phase("optimizer"):
                self._update_unless_non_finite(step, result)
        else:
            # Updated without waiting: a non-finite step stops the run when the steps are next read, which is
            # before any evaluation or save.
            with phases.phase("optimizer"):
                self.optimizer.step()
        with phases.phase("optimizer"):
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_scheduler.step()

    def _update_unless_non_finite(self, step: int, result: StepResult) -> None:
        progress = self.progress
        if result.finite:
            self.optimizer.step()
            progress.consecutive_skipped_steps = 0
            return
        non_finite = describe_non_finite(result)
        progress.skipped_steps += 1
        progress.consecutive_skipped_steps += 1
        limit = self.settings.max_consecutive_skipped_steps
        if progress.consecutive_skipped_steps >= limit:
            raise NonFiniteLossError(
                f"{limit} steps in a row ({step - limit + 1}-{step}) had non-finite values and were skipped, "
                f"the last with {non_finite} (training.max_consecutive_skipped_steps: {limit}): the run has "
                "diverged; lower optimizer.config.lr, or raise training.max_consecutive_skipped_steps"
            )
        self.broker.publish(TextMessage(f"step {step}: {non_finite}, update skipped"))

    def _train_metrics(self, result: StepResult, tokens_per_s: float) -> dict[str, float]:
        loss, z_loss = self.loss_window.means()
        return {
            "loss": loss,
            "loss_step": result.loss,
            **({"z_loss": z_loss} if self.settings.z_loss_weight else {}),
            "lr": self._last_lr,
            "grad_norm": result.grad_norm,
            "tokens_seen": self.progress.tokens_seen,
            "tokens_per_s": tokens_per_s,
            **(self.hardware_metrics(tokens_per_s) if self.hardware_metrics else {}),
            **self._phases.per_step(),
            **self._step_time_spread(),
        }

    def _step_time_spread(self) -> dict[str, float]:
        """The slowest and fastest rank's training seconds per step in the window, and the slowest rank."""
        if self.gather_step_seconds is None:
            return {}
        by_rank = self.gather_step_seconds(self._phases.step_seconds())
        slowest = max(range(len(by_rank)), key=by_rank.__getitem__)
        return {"step_time_max_s": by_rank[slowest], "step_time_min_s": min(by_rank), "slowest_rank": slowest}

    def _evaluate_all(self) -> None:
        reported_by_evaluators = {evaluator.name for evaluator in self.evaluators}
        for split in self.eval_splits:
            if split in reported_by_evaluators:
                continue
            loss = evaluate(self.model, self.parallelism, self._split_batches(split))
            self.broker.publish(MetricsRecord(self.progress.step, split, {"loss": loss}))
        for evaluator in self.evaluators:
            metrics = evaluator(self.model, self.parallelism, self._split_batches)
            self.broker.publish(MetricsRecord(self.progress.step, evaluator.name, metrics))

    def _split_batches(self, split: str) -> Iterator[Batch]:
        return (self._in_vocabulary(batch, split) for batch in self.eval_splits[split]())

    def _in_vocabulary(self, batch: Batch, split: str) -> Batch:
        # An id past the embedding table is an IndexError traceback on CPU and a device-side assert on a GPU.
        if self.vocab_size is not None:
            # Read through numpy: the batch is still on the host, and nothing here may wait for the device.
            inputs, targets = batch.inputs.numpy(), batch.targets.numpy()
            largest, smallest = max(int(inputs.max()), int(targets.max())), int(inputs.min())
            if largest >= self.vocab_size or smallest < 0:
                raise RankLocalError(
                    f"token id {largest if smallest >= 0 else smallest} in a {split} batch is outside the model's "
                    f"vocabulary of {self.vocab_size} (model.config.vocab_size): the data was tokenized with "
                    "another vocabulary; tokenize it with the tokenizer the model is configured for, or raise "
                    "model.config.vocab_size"
                )
        return batch
