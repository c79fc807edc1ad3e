"""Learning-rate schedules as registry components, stepped once per optimizer step.

``optimizer`` is injected at build time. Step counts are optimizer steps, so
``total_steps: ${training.max_steps}`` ties a schedule to the run length. A schedule's factor at step ``s``
is the lr of the ``s + 1``-th optimizer step.
"""

import bisect
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from enum import Enum

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from llm_gym.registry import Component, ComponentFactory


class _SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepLRConfig(_SchedulerConfig):
    step_size: PositiveInt
    gamma: PositiveFloat = 0.1


class ConstantLRConfig(_SchedulerConfig):
    factor: float = Field(1.0, gt=0, le=1)
    total_iters: NonNegativeInt = 0


class OneCycleLRConfig(_SchedulerConfig):
    max_lr: PositiveFloat
    total_steps: PositiveInt
    pct_start: float = Field(0.3, gt=0, lt=1)
    anneal_strategy: str = Field("cos", pattern="^(cos|linear)$")
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    cycle_momentum: bool = False


class LinearLRConfig(_SchedulerConfig):
    start_factor: float = Field(1.0 / 3, gt=0, le=1)
    end_factor: float = Field(1.0, ge=0, le=1)
    total_iters: PositiveInt = 5


class CosineAnnealingLRConfig(_SchedulerConfig):
    T_max: PositiveInt
    eta_min: NonNegativeFloat = 0.0


class LinearWarmupCosineDecayConfig(_SchedulerConfig):
    warmup_steps: NonNegativeInt
    total_steps: PositiveInt
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak lr")

    @model_validator(mode="after")
    def _warmup_within_total(self) -> "LinearWarmupCosineDecayConfig":
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds total_steps ({self.total_steps})")
        return self


class LinearWarmupCosineDecay(LambdaLR):
    """Linear warmup from ~0 to the peak lr, then cosine decay to ``min_lr_ratio`` × peak, then flat."""

    def __init__(self, config: LinearWarmupCosineDecayConfig, optimizer: torch.optim.Optimizer):
        self.warmup_steps, self.total_steps = config.warmup_steps, config.total_steps
        self.min_lr_ratio = config.min_lr_ratio
        super().__init__(optimizer, self.lr_factor)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _DECAY_SHAPES[DecayShape.COSINE](progress)


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear from ~0 to the peak: ``(step + 1) / (warmup_steps + 1)``, so the first step already trains."""
    return (step + 1) / (warmup_steps + 1)


class DecayShape(str, Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    ONE_MINUS_SQRT = "1-sqrt"


# Each maps decay progress 0 → 1 to a factor 1 → 0.
_DECAY_SHAPES: dict[DecayShape, Callable[[float], float]] = {
    DecayShape.LINEAR: lambda progress: 1.0 - progress,
    DecayShape.COSINE: lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    DecayShape.ONE_MINUS_SQRT: lambda progress: 1.0 - math.sqrt(progress),
}


class WarmupStableDecayConfig(_SchedulerConfig):
    warmup_steps: NonNegativeInt
    total_steps: PositiveInt
    decay_steps: PositiveInt | None = Field(None, description="the decay's length in steps; or decay_fraction")
    decay_fraction: float | None = Field(
        None, gt=0, le=1, description="the decay's length as a fraction of total_steps; or decay_steps"
    )
    decay_shape: DecayShape = DecayShape.LINEAR
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak lr")

    @model_validator(mode="after")
    def _phases_fit(self) -> "WarmupStableDecayConfig":
        if (self.decay_steps is None) == (self.decay_fraction is None):
            raise ValueError("give exactly one of decay_steps (a count) and decay_fraction (a fraction of total_steps)")
        if self.warmup_steps + self.decay_length > self.total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) + decay steps ({self.decay_length}) exceed total_steps "
                f"({self.total_steps})"
            )
        return self

    @property
    def decay_length(self) -> int:
        """The decay's length in steps: ``decay_steps``, or ``decay_fraction`` of ``total_steps`` (rounded half
        up, at least 1)."""
        if self.decay_steps is not None:
            return self.decay_steps
        return max(1, math.floor(self.decay_fraction * self.total_steps + 0.5))


class WarmupStableDecay(LambdaLR):
    """Warmup–stable–decay: linear warmup as ``LinearWarmupCosineDecay``'s, the peak lr until the last
    ``decay_steps`` steps, then a decay of ``decay_shape`` towards ``min_lr_ratio`` × peak, which step
    ``total_steps`` would reach (and steps past it keep).

    The decay starts at ``total_steps - decay_steps``, so a run lengthened during the stable phase (a larger
    ``total_steps``) keeps its learning rate until the new decay begins.
    """

    def __init__(self, config: WarmupStableDecayConfig, optimizer: torch.optim.Optimizer):
        self.warmup_steps, self.total_steps = config.warmup_steps, config.total_steps
        self.decay_steps, self.decay_shape, self.min_lr_ratio = (
            config.decay_length,
            config.decay_shape,
            config.min_lr_ratio,
        )
        super().__init__(optimizer, self.lr_factor)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / self.decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _DECAY_SHAPES[self.decay_shape](progress)


class SequentialConfig(_SchedulerConfig):
    schedules: list[Component("lr_scheduler")] = Field(min_length=2, description="schedules, in the order they run")
    milestones: list[PositiveInt] = Field(description="the step at which each schedule after the first starts")

    @model_validator(mode="after")
    def _one_milestone_between_schedules(self) -> "SequentialConfig":
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(
                f"milestones: {len(self.schedules)} schedules need {len(self.schedules) - 1} milestones, "
                f"got {len(self.milestones)}"
            )
        if any(later <= earlier for earlier, later in itertools.pairwise(self.milestones)):
            raise ValueError(f"milestones must increase, got {self.milestones}")
        return self


class Sequential(LRScheduler):
    """Runs ``schedules`` one after another: the first until ``milestones[0]``, the next until
    ``milestones[1]``, ... the last to the end of the run.

    Each schedule drives an optimizer of its own (a stand-in holding the real optimizer's param-group lrs),
    and starts at its own step 0 when its turn comes; this schedule copies the active one's lrs onto the real
    param groups. Unlike ``torch.optim.lr_scheduler.SequentialLR``, building the schedules therefore changes
    nothing for the others (no shared ``initial_lr``, no initial step that moves another schedule's lr), a
    schedule without a closed form (``CosineAnnealingLR``'s recursion) continues from its own state rather
    than being re-entered at an epoch, and restoring the position is stepping, like every schedule here.
    """

    def __init__(
        self, config: SequentialConfig, optimizer: torch.optim.Optimizer, schedules: Sequence[ComponentFactory]
    ):
        """``schedules`` are ``config``'s, as factories."""
        self.milestones = list(config.milestones)
        self.schedules: list[LRScheduler] = [build(optimizer=_stand_in(optimizer)) for build in schedules]
        super().__init__(optimizer)

    def step(self, epoch: None = None) -> None:
        if epoch is not None:
            raise ValueError("Sequential steps one step at a time")
        self.last_epoch += 1
        index = bisect.bisect_right(self.milestones, self.last_epoch)
        schedule = self.schedules[index]
        if self.last_epoch > (self.milestones[index - 1] if index else 0):  # its step 0 is its construction
            with warnings.catch_warnings():
                # The stand-in optimizer is never stepped, which torch would warn about.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                schedule.step()
        self._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def _stand_in(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """An optimizer over nothing with ``optimizer``'s param-group lrs, for a schedule to drive."""
    return torch.optim.SGD(
        [{"params": [torch.zeros(0)], "lr": group.get("initial_lr", group["lr"])} for group in optimizer.param_groups]
    )


SCHEDULERS = {
    "StepLR": (torch.optim.lr_scheduler.StepLR, StepLRConfig),
    "ConstantLR": (torch.optim.lr_scheduler.ConstantLR, ConstantLRConfig),
    "OneCycleLR": (torch.optim.lr_scheduler.OneCycleLR, OneCycleLRConfig),
    "LinearLR": (torch.optim.lr_scheduler.LinearLR, LinearLRConfig),
    "CosineAnnealingLR": (torch.optim.lr_scheduler.CosineAnnealingLR, CosineAnnealingLRConfig),
    "LinearWarmupCosineDecay": (LinearWarmupCosineDecay, LinearWarmupCosineDecayConfig),
    "WarmupStableDecay": (WarmupStableDecay, WarmupStableDecayConfig),
    "Sequential": (Sequential, SequentialConfig),
}
