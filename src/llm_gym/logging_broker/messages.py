"""What the training loop publishes. Subscribers pick the types they handle."""

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsRecord:
    """One train log line (split ``train``) or one evaluation split's result, after ``step`` optimizer steps."""

    step: int
    split: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ProgressUpdate:
    """Published after every optimizer step on rank 0; cheap to consume. Its ``metrics`` (loss, tokens_per_s)
    are the last train line's, empty before the first: reading a step's own loss would wait for the device."""

    step: int
    max_steps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TextMessage:
    """A note for the humans watching: a resume, a skipped step, a generated sample."""

    text: str
