"""Optimizers as registry components, and the weight-decay parameter groups they are built with.

The configs describe torch's own optimizers; ``params`` is injected at build time.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat
from torch import nn


class _OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: PositiveFloat = Field(description="peak learning rate")
    weight_decay: NonNegativeFloat = 0.0


class AdamWConfig(_OptimizerConfig):
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.1
    foreach: bool | None = None
    fused: bool | None = None


class AdamConfig(_OptimizerConfig):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    foreach: bool | None = None
    fused: bool | None = None


class SGDConfig(_OptimizerConfig):
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    foreach: bool | None = None


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
