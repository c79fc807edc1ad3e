"""Evaluators the training loop runs every ``training.eval_interval`` steps: registry components under the key
``evaluator``, listed in the config's ``evaluation.evaluators``.

Each has a ``name``, the ``split`` of its lines in metrics.jsonl, and is called with the model being trained,
its parallelism and ``split_batches(split)`` (the ``Batch``es of a ``data.eval_datasets``
split); it returns the metrics to log. Every rank calls it. What an evaluator needs from the run arrives as
``context`` when it is built.

- ``MultipleChoice``: a task file (``task_formats``), logged as ``accuracy`` and ``accuracy_norm``.
- ``BitsPerByte``: an evaluation split's ``loss`` and ``bits_per_byte``, in one pass; its line replaces the
  split's plain loss line, so the split is evaluated once.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from llm_gym.data.collators import Batch
from llm_gym.data.tokenizers import Tokenizer
from llm_gym.evaluation.language_modeling import language_modeling_totals
from llm_gym.evaluation.multiple_choice import score_multiple_choice
from llm_gym.evaluation.task_formats import TASK_FORMATS, load_task
from llm_gym.evaluation.text_bytes import token_byte_lengths
from llm_gym.parallel.strategies import ParallelismStrategy

SplitBatches = Callable[[str], Iterable[Batch]]


@dataclass(frozen=True)
class EvaluationContext:
    """What the run gives every evaluator it builds."""

    tokenizer: Tokenizer
    """``data.tokenizer``, checked to fit the model."""
    vocab_size: int
    sequence_length: int
    """The longest input the model takes."""
    micro_batch_size: int
    """``training.micro_batch_size``: sequences per forward pass unless the evaluator says otherwise."""


class MultipleChoiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="the split of its metrics.jsonl lines")
    format: str = Field("jsonl", pattern="^(" + "|".join(TASK_FORMATS) + ")$", description="the task file's format")
    path: Path = Field(description="the task file (a corpus JSONL for format code_lines)")
    max_examples: PositiveInt | None = Field(None, description="the file's first N examples; null = all")
    batch_size: PositiveInt | None = Field(None, description="choices per forward pass; null = micro_batch_size")


class MultipleChoiceEvaluator:
    def __init__(self, config: MultipleChoiceConfig, context: EvaluationContext):
        self.name, self.context = config.name, context
        self.examples = load_task(config.format, config.path, config.max_examples)
        self.batch_size = config.batch_size or context.micro_batch_size

    def __call__(
        self, model: nn.Module, parallelism: ParallelismStrategy, split_batches: SplitBatches
    ) -> dict[str, float]:
        env = parallelism.env
        result = score_multiple_choice(
            model,
            self.context.tokenizer,
            self.examples,
            self.context.sequence_length,
            self.batch_size,
            env.device,
            parallelism.forward_context,
            rank=env.rank,
            world_size=env.world_size,
        )
        return result.metrics()


class BitsPerByteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = Field(min_length=1, description="a split of data.eval_datasets")


class BitsPerByteEvaluator:
    def __init__(self, config: BitsPerByteConfig, context: EvaluationContext):
        self.name = config.split
        self.token_bytes = token_byte_lengths(context.tokenizer, context.vocab_size)

    def __call__(
        self, model: nn.Module, parallelism: ParallelismStrategy, split_batches: SplitBatches
    ) -> dict[str, float]:
        totals = language_modeling_totals(
            model, split_batches(self.name), self.token_bytes, parallelism.env.device, parallelism.forward_context
        )
        return {"loss": totals.loss, "bits_per_byte": totals.bits_per_byte}


EVALUATORS = {
    "MultipleChoice": (MultipleChoiceEvaluator, MultipleChoiceConfig),
    "BitsPerByte": (BitsPerByteEvaluator, BitsPerByteConfig),
}
