"""When to save and which checkpoints to keep, as registry components (register key ``checkpoint_strategy``).

A checkpoint is saved when any strategy asks for it, and an older one is deleted unless some strategy
protects it. ``checkpointing.every_n_steps`` and ``checkpointing.keep_last`` are shorthands for
``SaveEveryNSteps`` and ``KeepLast``; a run also always saves at its end. More strategies go in
``checkpointing.strategies``, e.g. ``{type_hint: KeepEveryNSteps, config: {every_n_steps: 1000}}`` to keep
milestones forever while only the newest few others survive.
"""

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from llm_gym.config.app import KeepCount


class CheckpointStrategy:
    def should_save(self, step: int, is_final: bool) -> bool:
        return False

    def protects(self, step: int, newer_steps: Sequence[int]) -> bool:
        """Whether the checkpoint of ``step`` must stay, given the steps of the newer complete checkpoints."""
        return False


class _StrategyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaveEveryNStepsConfig(_StrategyConfig):
    every_n_steps: int = Field(ge=0, description="0 = never (only other strategies save)")


class SaveEveryNSteps(CheckpointStrategy):
    def __init__(self, config: SaveEveryNStepsConfig):
        self.every_n_steps = config.every_n_steps

    def should_save(self, step: int, is_final: bool) -> bool:
        return self.every_n_steps > 0 and step % self.every_n_steps == 0


class SaveAtEnd(CheckpointStrategy):
    def should_save(self, step: int, is_final: bool) -> bool:
        return is_final


class SaveAtStepsConfig(_StrategyConfig):
    steps: list[PositiveInt]


class SaveAtSteps(CheckpointStrategy):
    def __init__(self, config: SaveAtStepsConfig):
        self.steps = frozenset(config.steps)

    def should_save(self, step: int, is_final: bool) -> bool:
        return step in self.steps


class KeepLastConfig(_StrategyConfig):
    count: KeepCount = Field(description="newest checkpoints kept; -1 = all")


class KeepLast(CheckpointStrategy):
    def __init__(self, config: KeepLastConfig):
        self.count = config.count

    def protects(self, step: int, newer_steps: Sequence[int]) -> bool:
        return self.count == -1 or len(newer_steps) < self.count


class KeepEveryNStepsConfig(_StrategyConfig):
    every_n_steps: PositiveInt


class KeepEveryNSteps(CheckpointStrategy):
    def __init__(self, config: KeepEveryNStepsConfig):
        self.every_n_steps = config.every_n_steps

    def protects(self, step: int, newer_steps: Sequence[int]) -> bool:
        return step % self.every_n_steps == 0


CHECKPOINT_STRATEGIES = {
    "SaveEveryNSteps": (SaveEveryNSteps, SaveEveryNStepsConfig),
    "SaveAtEnd": (SaveAtEnd, _StrategyConfig),
    "SaveAtSteps": (SaveAtSteps, SaveAtStepsConfig),
    "KeepLast": (KeepLast, KeepLastConfig),
    "KeepEveryNSteps": (KeepEveryNSteps, KeepEveryNStepsConfig),
}
