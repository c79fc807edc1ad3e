"""Optimizers as registry components, and the weight-decay parameter groups they are built with.

The configs describe torch's own optimizers; ``params`` is injected at build time.
"""

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator
from torch import nn

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
Beta = Annotated[float, Field(ge=0, lt=1)]
"""A moment's decay rate: torch refuses any outside [0, 1)."""


class _OptimizerConfig(BaseModel):
    # .inf and .nan are refused for every number: no optimizer can step with them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lr: PositiveFloat = Field(description="peak learning rate")
    weight_decay: NonNegativeFloat = 0.0

    def _step_scalars(self) -> dict[str, float]:
        """The numbers a step multiplies the float32 weights, gradients or moments by, named as in the config."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "lr × weight_decay": self.lr * self.weight_decay}

    @model_validator(mode="after")
    def _step_scalars_fit_float32(self) -> "_OptimizerConfig":
        # torch converts them to the tensors' dtype, and one beyond float32 stops the run with an overflow error.
        for name, value in self._step_scalars().items():
            if value > FLOAT32_MAX:
                raise ValueError(
                    f"{name} = {value:.3g} is beyond the largest float32 ({FLOAT32_MAX:.3g}), the type of the "
                    "weights a step scales by it"
                )
        return self


class _AdamLikeConfig(_OptimizerConfig):
    betas: tuple[Beta, Beta]
    eps: PositiveFloat = 1e-8
    foreach: bool | None = None
    fused: bool | None = None

    def _step_scalars(self) -> dict[str, float]:
        # The first step's bias correction divides the learning rate by 1 - betas[0].
        first_step = self.lr / (1 - self.betas[0])
        return {**super()._step_scalars(), "eps": self.eps, "lr / (1 - betas[0]), the first step's size": first_step}


class AdamWConfig(_AdamLikeConfig):
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.1


class AdamConfig(_AdamLikeConfig):
    betas: tuple[Beta, Beta] = (0.9, 0.999)


class SGDConfig(_OptimizerConfig):
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    foreach: bool | None = None

    def _step_scalars(self) -> dict[str, float]:
        return {**super()._step_scalars(), "momentum": self.momentum}


def weight_decay_parameter_groups(model: nn.Module) -> list[dict]:
    """Two groups: matrices decay; biases, norm weights and embeddings do not (GPT-2/Llama practice).

    The second group pins ``weight_decay`` to 0; the first takes the optimizer's configured value.
    """
    embedding_params = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or id(parameter) in embedding_params:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


OPTIMIZERS = {
    "AdamW": (torch.optim.AdamW, AdamWConfig),
    "Adam": (torch.optim.Adam, AdamConfig),
    "SGD": (torch.optim.SGD, SGDConfig),
}
