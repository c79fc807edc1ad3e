"""Causal self-attention: projections, rotary positions, grouped-query heads and a KV cache around a kernel.

The kernel is the registry component (``attention``): ``SDPAttention`` calls PyTorch's fused
``scaled_dot_product_attention`` (flash kernels on GPU), ``ReferenceAttention`` writes softmax(QKᵀ/√d)V
out in full for tests. Both take queries ``[B, H, Tq, D]`` and keys/values ``[B, H_kv, Tk, D]`` with
``Tk >= Tq``; query ``i`` sees keys up to ``i + Tk - Tq`` (the queries are the last ``Tq`` positions).
"""

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from llm_gym.models.kv_cache import LayerKVCache
from llm_gym.models.positional import RotaryEmbedding


class AttentionKernelConfig(BaseModel):
    """No settings: attention dropout comes from the model's ``dropout``."""

    model_config = ConfigDict(extra="forbid")


def causal_mask(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[Tq, Tk]``, True where attending is allowed; queries are the last ``Tq`` positions."""
    offset = key_length - query_length
    rows = torch.arange(query_length, device=device)[:, None]
    columns = torch.arange(key_length, device=device)[None, :]
    return columns <= rows + offset


class SDPAttention(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        query_length, key_length = query.shape[2], key.shape[2]
        # is_causal aligns its mask top-left, which is right only when queries and keys are the same positions.
        # One query (a generation step) sees every key; a chunk after cached positions needs an explicit mask.
        mask = None
        if query_length != key_length and query_length > 1:
            mask = causal_mask(query_length, key_length, query.device)
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=query_length == key_length,
            enable_gqa=key.shape[1] != query.shape[1],
        )


class ReferenceAttention(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        group_size = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(group_size, dim=1)
        value = value.repeat_interleave(group_size, dim=1)
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        allowed = causal_mask(query.shape[2], key.shape[2], query.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = self.attention_dropout(scores.softmax(dim=-1))
        return weights @ value


ATTENTION_KERNELS = {
    "SDPAttention": (SDPAttention, AttentionKernelConfig),
    "ReferenceAttention": (ReferenceAttention, AttentionKernelConfig),
}


class CausalSelfAttention(nn.Module):
    """Query/key/value projections, optional rotary positions and KV cache, the kernel, the output projection.

    With ``n_head_kv < n_head`` groups of ``n_head / n_head_kv`` query heads share one key/value head (GQA).
    ``query_norm`` and ``key_norm`` (QK-norm) normalise each head over its ``head_dim``, before rotary, so
    the attention logits stay bounded however large the projections grow.
    """

    def __init__(
        self,
        dim: int,
        n_head: int,
        n_head_kv: int,
        bias: bool,
        kernel: nn.Module,
        rotary: RotaryEmbedding | None = None,
        query_norm: nn.Module | None = None,
        key_norm: nn.Module | None = None,
    ):
        super().__init__()
        self.n_head, self.n_head_kv = n_head, n_head_kv
        self.head_dim = dim // n_head
        self.query = nn.Linear(dim, n_head * self.head_dim, bias=bias)
        self.key = nn.Linear(dim, n_head_kv * self.head_dim, bias=bias)
        self.value = nn.Linear(dim, n_head_kv * self.head_dim, bias=bias)
        self.output = nn.Linear(n_head * self.head_dim, dim, bias=bias)
        self.kernel = kernel
        self.rotary = rotary
        self.query_norm, self.key_norm = query_norm, key_norm

    def _heads(self, projected: torch.Tensor, n_head: int) -> torch.Tensor:
        batch, time, _ = projected.shape
        return projected.view(batch, time, n_head, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, start: int = 0, kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        query = self._heads(self.query(hidden), self.n_head)
        key = self._heads(self.key(hidden), self.n_head_kv)
        value = self._heads(self.value(hidden), self.n_head_kv)
        if self.query_norm is not None:
            query, key = self.query_norm(query), self.key_norm(key)
        if self.rotary is not None:
            query, key = self.rotary(query, key, start)
        if kv_cache is not None:
            key, value = kv_cache.update(key, value, start)
        attended = self.kernel(query, key, value)
        batch, _, time, _ = attended.shape
        return self.output(attended.transpose(1, 2).reshape(batch, time, self.n_head * self.head_dim))
