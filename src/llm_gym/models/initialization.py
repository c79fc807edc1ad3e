"""Weight initialisation schemes as registry components (``init``), built with ``init_factory(n_layer=...)``.

A scheme only draws matrices; the model decides which matrix is which. Biases start at zero and norms at
their identity (``reset_parameters``), in place, which works on the DTensor shards of an FSDP2 model after
``to_empty``. Random matrices of a sharded model are drawn whole on every rank (same seed, same values) and
each rank keeps its shard: the weights then do not depend on the number of ranks, at the cost of one full
matrix of transient memory. (Drawing into the shards directly would repeat the same values in every shard
on CPU, where DTensor has no offset-based RNG.)
"""

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

ResidualScaling = Literal["n_layer", "depth", "none"]

_RESIDUAL_SCALING_DOC = (
    "std of residual output projections: n_layer = std/√(2·n_layer) (GPT-2), "
    "depth = std/√(2·(layer+1)) (torchtitan's Llama), none = std"
)


class WeightInit:
    """Draws a model's matrices: ``std`` for embeddings and linear layers, scaled down on residual projections."""

    def __init__(self, n_layer: int, std: float, residual_scaling: ResidualScaling):
        self.n_layer = n_layer
        self.std = std
        self.residual_scaling = residual_scaling

    def embedding_(self, weight: torch.Tensor) -> None:
        self._draw_whole_(weight, self.std)

    def linear_(self, weight: torch.Tensor) -> None:
        self._draw_whole_(weight, self.std)

    def residual_projection_(self, weight: torch.Tensor, layer_index: int) -> None:
        """The last projection of an attention or MLP, whose output is added to the residual stream."""
        self._draw_whole_(weight, self.residual_std(layer_index))

    def residual_std(self, layer_index: int) -> float:
        if self.residual_scaling == "n_layer":
            return self.std / math.sqrt(2 * self.n_layer)
        if self.residual_scaling == "depth":
            return self.std / math.sqrt(2 * (layer_index + 1))
        return self.std

    def _draw_whole_(self, weight: torch.Tensor, std: float) -> None:
        if not isinstance(weight, DTensor):
            self._draw_(weight, std)
            return
        whole = torch.empty(weight.shape, dtype=weight.dtype, device=weight.to_local().device)
        self._draw_(whole, std)
        weight.copy_(distribute_tensor(whole, weight.device_mesh, weight.placements))

    def _draw_(self, weight: torch.Tensor, std: float) -> None:
        raise NotImplementedError


class ScaledNormalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    std: PositiveFloat = 0.02
    residual_scaling: ResidualScaling = Field("n_layer", description=_RESIDUAL_SCALING_DOC)


class ScaledNormal(WeightInit):
    """N(0, std²) everywhere, residual projections scaled (GPT-2)."""

    def __init__(self, config: ScaledNormalConfig, n_layer: int):
        super().__init__(n_layer, config.std, config.residual_scaling)

    def _draw_(self, weight: torch.Tensor, std: float) -> None:
        nn.init.normal_(weight, mean=0.0, std=std)


class TruncatedNormalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    std: PositiveFloat = 0.02
    cutoff: PositiveFloat = Field(3.0, description="truncate at ± cutoff × std")
    residual_scaling: ResidualScaling = Field("depth", description=_RESIDUAL_SCALING_DOC)


class TruncatedNormal(WeightInit):
    """N(0, std²) truncated at ± cutoff·std (Llama-style pretraining, OLMo, torchtitan)."""

    def __init__(self, config: TruncatedNormalConfig, n_layer: int):
        super().__init__(n_layer, config.std, config.residual_scaling)
        self.cutoff = config.cutoff

    def _draw_(self, weight: torch.Tensor, std: float) -> None:
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-self.cutoff * std, b=self.cutoff * std)


WEIGHT_INITS = {
    "ScaledNormal": (ScaledNormal, ScaledNormalConfig),
    "TruncatedNormal": (TruncatedNormal, TruncatedNormalConfig),
}
