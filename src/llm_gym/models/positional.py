"""Where a token's position enters the model: learned absolute embeddings (GPT-2) or rotary embeddings (Llama).

Rotary angles are computed in float32 from ``theta`` on every call rather than cached in a buffer: there is no
state to materialise after a meta-device build, nothing for ``model.to(dtype)`` to round, and nothing for
FSDP's input casting to touch. The cost (one outer product and a cos/sin per layer) is negligible beside the
attention it feeds.
"""

import math
from enum import Enum

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import nn


class PositionalEncoding(str, Enum):
    LEARNED = "learned"
    ROPE = "rope"


class DocumentPositions(str, Enum):
    """Where the positions of a packed sample count from: ``continue`` across documents, or ``restart`` at 0 at
    the first token of each document."""

    CONTINUE = "continue"
    RESTART = "restart"


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` positions counted from each document's first token, for ``document_ids [B, T]`` that do not
    decrease along a row (a new document begins where the id changes)."""
    indices = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return indices - torch.where(starts, indices, 0).cummax(dim=1).values


class LearnedPositionEmbedding(nn.Embedding):
    """One learned vector per position, looked up for the model's positions and added to the token embeddings.

    A plain lookup of its input, so that a tensor-parallel plan can split it as it splits any embedding."""


class Llama3RopeScaling(BaseModel):
    """Llama 3.1's frequency scaling for a longer context: long wavelengths slowed by ``factor``, short ones kept,
    those between blended (Hugging Face ``rope_type: llama3``)."""

    model_config = ConfigDict(extra="forbid")

    factor: PositiveFloat
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_max_position_embeddings: PositiveInt = Field(description="the context length trained before scaling")

    @model_validator(mode="after")
    def _high_above_low(self) -> "Llama3RopeScaling":
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must exceed low_freq_factor ({self.low_freq_factor})"
            )
        return self

    def scale(self, inverse_frequencies: torch.Tensor) -> torch.Tensor:
        wavelengths = 2 * math.pi / inverse_frequencies
        context = self.original_max_position_embeddings
        slowed = torch.where(wavelengths > context / self.low_freq_factor, inverse_frequencies / self.factor,
                             inverse_frequencies)  # fmt: skip
        smooth = (context / wavelengths - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * slowed / self.factor + smooth * slowed
        between = (wavelengths >= context / self.high_freq_factor) & (wavelengths <= context / self.low_freq_factor)
        return torch.where(between, blended, slowed)


class RotaryEmbedding(nn.Module):
    """Rotates query and key heads by position-dependent angles (RoPE).

    Uses the half-split layout of GPT-NeoX and Hugging Face Llama (dimension ``i`` pairs with
    ``i + head_dim / 2``), so Llama weights map to and from ``transformers`` without permutation.
    """

    def __init__(self, head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = scaling

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}" + (f", scaling={self.scaling}" if self.scaling else "")

    def angles(
        self, start: int, length: int, device: torch.device, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Angles ``[length, head_dim / 2]`` for positions ``start .. start + length - 1``, in float32; for
        ``positions [B, length]``, ``[B, 1, length, head_dim / 2]`` (one per row, broadcast over heads)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        inverse_frequencies = 1.0 / (self.theta**exponents)
        if self.scaling is not None:
            inverse_frequencies = self.scaling.scale(inverse_frequencies)
        if positions is not None:
            return positions[:, None, :, None].float() * inverse_frequencies
        positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
        return positions[:, None] * inverse_frequencies[None, :]

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``[batch, heads, time, head_dim]`` queries and keys whose first position is ``start``, or whose
        positions are ``positions [batch, time]``."""
        angles = self.angles(start, query.shape[2], query.device, positions)
        cos, sin = angles.cos(), angles.sin()
        return _rotate(query, cos, sin), _rotate(key, cos, sin)


def _rotate(heads: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = heads.float().chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    return rotated.to(heads.dtype)
