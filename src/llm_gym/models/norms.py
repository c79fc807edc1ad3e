"""Normalisation layers as registry components (``norm``); the model builds each with ``norm_factory(dim=...)``."""

from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn


class LayerNormConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bias: bool = True
    eps: PositiveFloat = 1e-5


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias (GPT-2 has one; many later models drop it)."""

    def __init__(self, config: LayerNormConfig, dim: int):
        super().__init__(dim, eps=config.eps, bias=config.bias)


class RMSNormConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eps: PositiveFloat = 1e-5


class RMSNorm(nn.RMSNorm):
    """Root-mean-square norm with a learned scale (Llama)."""

    def __init__(self, config: RMSNormConfig, dim: int):
        super().__init__(dim, eps=config.eps)


NORMS = {
    "LayerNorm": (LayerNorm, LayerNormConfig),
    "RMSNorm": (RMSNorm, RMSNormConfig),
}
