"""The training loop. It receives built components and never reads YAML; everything else plugs into it."""

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from llm_gym.config.app import NonFiniteAction, TrainingSettings
from llm_gym.errors import RankLocalError, UserError
from llm_gym.logging_broker.messages import MetricsRecord, ProgressUpdate, TextMessage
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.training.step import BatchKeys, StepResult, evaluate, train_step


class NonFiniteLossError(UserError):
    """Training diverged; nothing non-finite was written to a checkpoint."""


@dataclass
class TrainingProgress:
    """Counters that a checkpoint saves and a resumed run continues from."""

    step: int = 0
    tokens_seen: int = 0
    skipped_steps: int = 0

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
        split_batches: Callable[[str], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    ) -> dict[str, float]: ...


@dataclass
class Trainer:
    settings: TrainingSettings
    model: nn.Module
    parallelism: ParallelismStrategy
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    train_batches: Iterable[dict]
    eval_splits: dict[str, Callable[[], Iterable[dict]]]
    broker: Publisher
    checkpointer: CheckpointSaver
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    batch_keys: BatchKeys = field(default_factory=BatchKeys)
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

    def _optimizer_step(self, batches: Iterator[dict]) -> StepResult:
        micro_batches = [
            self._in_vocabulary(next(batches), "train") for _ in range(self.settings.gradient_accumulation_steps)
        ]
        result = train_step(self.model, self.parallelism, micro_batches, self.batch_keys, self.settings.max_grad_norm)
        self._last_lr = self.lr_scheduler.get_last_lr()[0]
        if result.finite:
            self.optimizer.step()
        elif self.settings.on_nonfinite == NonFiniteAction.STOP:
            raise NonFiniteLossError(
                f"non-finite loss ({result.loss}) or gradient norm ({result.grad_norm}) at step "
                f"{self.progress.step + 1}; lower optimizer.config.lr or set training.on_nonfinite=skip"
            )
        else:
            self.progress.skipped_steps += 1
            self.broker.publish(TextMessage(f"step {self.progress.step + 1}: non-finite loss, update skipped"))
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
        for split, make_batches in self.eval_splits.items():
            if split in reported_by_evaluators:
                continue
            batches = (self._in_vocabulary(batch, split) for batch in make_batches())
            loss = evaluate(self.model, self.parallelism, batches, self.batch_keys)
            self.broker.publish(MetricsRecord(self.progress.step, split, {"loss": loss}))
        for evaluator in self.evaluators:
            metrics = evaluator(self.model, self.parallelism, self._split_batches)
            self.broker.publish(MetricsRecord(self.progress.step, evaluator.name, metrics))

    def _split_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.eval_splits[split]():
            batch = self._in_vocabulary(batch, split)
            yield batch[self.batch_keys.inputs], batch[self.batch_keys.targets]

    def _in_vocabulary(self, batch: dict, split: str) -> dict:
        # An id past the embedding table is an IndexError traceback on CPU and a device-side assert on a GPU.
        if self.vocab_size is not None:
            inputs, targets = batch[self.batch_keys.inputs], batch[self.batch_keys.targets]
            largest, smallest = max(int(inputs.max()), int(targets.max())), int(inputs.min())
            if largest >= self.vocab_size or smallest < 0:
                raise RankLocalError(
                    f"token id {largest if smallest >= 0 else smallest} in a {split} batch is outside the model's "
                    f"vocabulary of {self.vocab_size} (model.config.vocab_size): the data was tokenized with "
                    "another vocabulary; tokenize it with the tokenizer the model is configured for, or raise "
                    "model.config.vocab_size"
                )
        return batch
