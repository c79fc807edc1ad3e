"""Feed-forward layers as registry components (``mlp``), built with ``mlp_factory(dim=..., bias=...)``.

``bias`` comes from the model's ``bias`` setting, so one switch turns biases of every linear layer on or off.
Each MLP names its last projection ``output``: the residual projection that scaled inits shrink.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn


class GELUMLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_dim: PositiveInt = Field(description="inner width; GPT-2 uses 4 × dim")
    approximate: Literal["tanh", "none"] = Field("tanh", description="GPT-2 uses the tanh approximation")


class GELUMLP(nn.Module):
    """Linear → GELU → linear (GPT-2)."""

    def __init__(self, config: GELUMLPConfig, dim: int, bias: bool):
        super().__init__()
        self.approximate = config.approximate
        self.input = nn.Linear(dim, config.hidden_dim, bias=bias)
        self.output = nn.Linear(config.hidden_dim, dim, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(F.gelu(self.input(hidden), approximate=self.approximate))


class SwiGLUMLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_dim: PositiveInt = Field(description="inner width; Llama uses about 8/3 × dim, rounded up")


class SwiGLUMLP(nn.Module):
    """SiLU(gate(x)) ⊙ up(x) → linear (Llama)."""

    def __init__(self, config: SwiGLUMLPConfig, dim: int, bias: bool):
        super().__init__()
        self.gate = nn.Linear(dim, config.hidden_dim, bias=bias)
        self.input = nn.Linear(dim, config.hidden_dim, bias=bias)
        self.output = nn.Linear(config.hidden_dim, dim, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(F.silu(self.gate(hidden)) * self.input(hidden))


MLPS = {
    "GELUMLP": (GELUMLP, GELUMLPConfig),
    "SwiGLUMLP": (SwiGLUMLP, SwiGLUMLPConfig),
}
