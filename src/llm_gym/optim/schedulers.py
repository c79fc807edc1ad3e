"""Learning-rate schedules as registry components, stepped once per optimizer step.

``optimizer`` is injected at build time. Step counts are optimizer steps, so
``total_steps: ${training.max_steps}`` ties a schedule to the run length.
"""

import math

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
from torch.optim.lr_scheduler import LambdaLR


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
            return (step + 1) / (self.warmup_steps + 1)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


SCHEDULERS = {
    "StepLR": (torch.optim.lr_scheduler.StepLR, StepLRConfig),
    "ConstantLR": (torch.optim.lr_scheduler.ConstantLR, ConstantLRConfig),
    "OneCycleLR": (torch.optim.lr_scheduler.OneCycleLR, OneCycleLRConfig),
    "LinearLR": (torch.optim.lr_scheduler.LinearLR, LinearLRConfig),
    "CosineAnnealingLR": (torch.optim.lr_scheduler.CosineAnnealingLR, CosineAnnealingLRConfig),
    "LinearWarmupCosineDecay": (LinearWarmupCosineDecay, LinearWarmupCosineDecayConfig),
}
