"""What `llm_gym validate` prints after the resolved config: the figures a researcher checks first."""

from collections.abc import Iterator

from llm_gym.config.app import TrainingAppConfig
from llm_gym.models.flops import describe_model


def describe_config(config: TrainingAppConfig, world_size: int) -> Iterator[str]:
    training = config.training
    yield f"world size: {world_size}"
    yield (
        f"global batch: {training.samples_per_step(world_size)} samples × {training.sequence_length} tokens"
        f" = {training.samples_per_step(world_size) * training.sequence_length:,} tokens per step"
    )
    yield from describe_model(config.model, training.sequence_length)
