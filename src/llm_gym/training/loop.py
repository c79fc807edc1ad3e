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
from llm_gym.errors import RankLocalError, UserError
from llm_gym.logging_broker.messages import MetricsRecord, ProgressUpdate, TextMessage
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.training.step import StepResult, evaluate, train_step


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


class TrainingThroughput:
    """Tokens per second over a log window, counting the time of training steps and their logging only.

    Evaluation and checkpoint saves inside the window are left out, so a save does not pass for a slow step.
    """

    def __init__(self) -> None:
        self._tokens, self._seconds, self._since = 0, 0.0, time.perf_counter()

    def add(self, tokens: int) -> float:
        """Count a step's tokens; return the window's tokens per second so far."""
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
    def maybe_save(self, step: int, is_final: bool) -> None: ...


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
    evaluators: list[Evaluator] = field(default_factory=list)
    """An evaluator named after an eval split reports that split in place of its plain loss line."""
    _last_lr: float = field(default=0.0, init=False)

    def train(self) -> None:
        settings, progress = self.settings, self.progress
        batches = iter(self.train_batches)
        self.model.train()
        if settings.eval_at_start and progress.step == 0:
            self._evaluate_all()
        throughput = TrainingThroughput()
        while progress.step < settings.max_steps:
            result = self._optimizer_step(batches)
            progress.step += 1
            progress.tokens_seen += result.tokens
            tokens_per_s = throughput.add(result.tokens)
            is_final = progress.step == settings.max_steps
            metrics = {"loss": result.loss, "tokens_per_s": tokens_per_s}
            self.broker.publish(ProgressUpdate(progress.step, settings.max_steps, metrics))
            if progress.step % settings.log_interval == 0 or is_final:
                self.broker.publish(MetricsRecord(progress.step, "train", self._train_metrics(result, tokens_per_s)))
                throughput.start_window()
            with throughput.paused():
                if progress.step % settings.eval_interval == 0 or is_final:
                    self._evaluate_all()
                self.checkpointer.maybe_save(progress.step, is_final)

    def _optimizer_step(self, batches: Iterator[Batch]) -> StepResult:
        micro_batches = [
            self._in_vocabulary(next(batches), "train") for _ in range(self.settings.gradient_accumulation_steps)
        ]
        result = train_step(self.model, self.parallelism, micro_batches, self.settings.max_grad_norm)
        self._last_lr = self.lr_scheduler.get_last_lr()[0]
        step, progress = self.progress.step + 1, self.progress
        non_finite = "" if result.finite else describe_non_finite(result)
        if result.finite:
            self.optimizer.step()
            progress.consecutive_skipped_steps = 0
        elif self.settings.on_nonfinite == NonFiniteAction.STOP:
            raise NonFiniteLossError(
                f"{non_finite} at step {step}; lower optimizer.config.lr or set training.on_nonfinite=skip"
            )
        else:
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
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        return result

    def _train_metrics(self, result: StepResult, tokens_per_s: float) -> dict[str, float]:
        return {
            "loss": result.loss,
            "lr": self._last_lr,
            "grad_norm": result.grad_norm,
            "tokens_seen": self.progress.tokens_seen,
            "tokens_per_s": tokens_per_s,
            **(self.hardware_metrics(tokens_per_s) if self.hardware_metrics else {}),
        }

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
            inputs, targets = batch.inputs, batch.targets
            largest, smallest = max(int(inputs.max()), int(targets.max())), int(inputs.min())
            if largest >= self.vocab_size or smallest < 0:
                raise RankLocalError(
                    f"token id {largest if smallest >= 0 else smallest} in a {split} batch is outside the model's "
                    f"vocabulary of {self.vocab_size} (model.config.vocab_size): the data was tokenized with "
                    "another vocabulary; tokenize it with the tokenizer the model is configured for, or raise "
                    "model.config.vocab_size"
                )
        return batch
