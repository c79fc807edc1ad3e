"""Causal self-attention: projections, rotary positions, grouped-query heads and a KV cache around a kernel.

The kernel is the registry component (``attention``): ``SDPAttention`` calls PyTorch's fused
``scaled_dot_product_attention`` (flash kernels on GPU), ``ReferenceAttention`` writes softmax(QKᵀ/√d)V
out in full for tests. Both take queries ``[B, H, Tq, D]`` and keys/values ``[B, H_kv, Tk, D]`` with
``Tk >= Tq``; query ``i`` sees keys up to ``i + Tk - Tq`` (the queries are the last ``Tq`` positions).

Document masking (packed samples, ``model.config.document_masking``): a kernel that supports it has
``document_mask(document_ids)``, which the model calls once per forward to turn ``document_ids [B, T]``
into a mask of its own kind, and takes that mask as ``forward(..., document_mask=...)`` in every layer;
query ``i`` then sees key ``j`` only for ``j <= i`` in the same document. ``SDPAttention`` makes a boolean
block-diagonal causal mask for SDPA (any device) or a FlexAttention ``BlockMask``, by its
``document_kernel``.
"""

import functools
import importlib.util
import math
import warnings
from enum import Enum

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from llm_gym.errors import ConfigError
from llm_gym.models.contract import SequenceExchange
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


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` for ``document_ids [B, T]``: True where key ``j <= i`` is in query ``i``'s document."""
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    length = document_ids.shape[1]
    return (same_document & causal_mask(length, length, document_ids.device))[:, None]


def document_block_mask(document_ids: torch.Tensor) -> BlockMask:
    """The FlexAttention ``BlockMask`` of ``document_causal_mask``: blocks wholly outside every document are
    skipped, not computed and masked."""

    def same_document_causal(batch: torch.Tensor, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
        return (key <= query) & (document_ids[batch, query] == document_ids[batch, key])

    batch, length = document_ids.shape
    return create_block_mask(same_document_causal, batch, None, length, length, device=document_ids.device)


@functools.cache
def _compiled_flex_attention():
    # Uncompiled, flex_attention computes every score and masks them; compiled, it skips the masked blocks.
    # Compiled on first use, so that importing the models costs no compiler start. Static shapes: a training
    # run has one shape, and inductor's CPU kernel for dynamic shapes fails to compile (torch 2.13).
    return torch.compile(flex_attention, dynamic=False)


class DocumentKernel(str, Enum):
    AUTO = "auto"
    SDPA = "sdpa"
    FLEX = "flex"


def _flex_attention_on(device: torch.device):
    """Compiled FlexAttention on CUDA; on CPU the unfused one, which materialises the masked scores. Inductor's
    CPU kernel returns wrong rows, different ones from run to run, for a batched document mask (torch 2.13; the
    test comparing flex with the boolean mask catches it)."""
    if device.type == "cuda":
        return _compiled_flex_attention()

    def unfused(*args, **kwargs):
        with warnings.catch_warnings():
            # Its advice (compile it) is what the CPU must not follow.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return unfused


def flex_attention_works(device: torch.device) -> bool:
    """Where ``auto`` picks FlexAttention: CUDA with triton, which compiles its kernels. On CPU it has no
    backward (torch 2.13) and runs uncompiled, so it serves there only evaluation, when asked for."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


class SDPAttentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_kernel: DocumentKernel = Field(
        DocumentKernel.AUTO,
        description="with model.config.document_masking: sdpa (a boolean mask, any device), flex (FlexAttention "
        "block masks, compiled; trains on CUDA only) or auto (flex on CUDA with triton and no attention dropout, "
        "else sdpa)",
    )


_SDPA_DEFAULTS = SDPAttentionConfig()


class SDPAttention(nn.Module):
    def __init__(self, dropout: float = 0.0, config: SDPAttentionConfig = _SDPA_DEFAULTS):
        super().__init__()
        self.dropout = dropout
        self.document_kernel = config.document_kernel
        if self.document_kernel == DocumentKernel.FLEX and dropout:
            raise ConfigError(
                f"model.config.attention.config.document_kernel: flex has no attention dropout, but model.config."
                f"dropout is {dropout}; set document_kernel: sdpa, or dropout: 0"
            )

    def document_mask(self, document_ids: torch.Tensor) -> torch.Tensor | BlockMask:
        flex = self.document_kernel == DocumentKernel.FLEX or (
            self.document_kernel == DocumentKernel.AUTO
            and not self.dropout
            and flex_attention_works(document_ids.device)
        )
        if not flex:
            return document_causal_mask(document_ids)
        if document_ids.device.type == "cpu" and torch.is_grad_enabled():
            raise ConfigError(
                "model.config.attention.config.document_kernel: flex cannot train on CPU, where torch's FlexAttention "
                "has no backward; use sdpa (auto picks it on CPU)"
            )
        return document_block_mask(document_ids)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        document_mask: torch.Tensor | BlockMask | None = None,
    ) -> torch.Tensor:
        grouped = key.shape[1] != query.shape[1]
        if isinstance(document_mask, BlockMask):
            attend = _flex_attention_on(query.device)
            return attend(query, key, value, block_mask=document_mask, enable_gqa=grouped)
        query_length, key_length = query.shape[2], key.shape[2]
        # is_causal aligns its mask top-left, which is right only when queries and keys are the same positions.
        # One query (a generation step) sees every key; a chunk after cached positions needs an explicit mask.
        mask = document_mask
        if mask is None and query_length != key_length and query_length > 1:
            mask = causal_mask(query_length, key_length, query.device)
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and query_length == key_length,
            enable_gqa=grouped,
        )


class ReferenceAttention(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.attention_dropout = nn.Dropout(dropout)

    def document_mask(self, document_ids: torch.Tensor) -> torch.Tensor:
        return document_causal_mask(document_ids)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, document_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        group_size = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(group_size, dim=1)
        value = value.repeat_interleave(group_size, dim=1)
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        allowed = causal_mask(query.shape[2], key.shape[2], query.device) if document_mask is None else document_mask
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = self.attention_dropout(scores.softmax(dim=-1))
        return weights @ value


ATTENTION_KERNELS = {
    "SDPAttention": (SDPAttention, SDPAttentionConfig),
    "ReferenceAttention": (ReferenceAttention, AttentionKernelConfig),
}


class CausalSelfAttention(nn.Module):
    """Query/key/value projections, optional rotary positions and KV cache, the kernel, the output projection.

    With ``n_head_kv < n_head`` groups of ``n_head / n_head_kv`` query heads share one key/value head (GQA).
    ``query_norm`` and ``key_norm`` (QK-norm) normalise each head over its ``head_dim``, before rotary, so
    the attention logits stay bounded however large the projections grow.

    With a ``sequence_exchange`` (context parallelism, see the model contract's ``SequenceExchange``) the input
    is this rank's chunk of the sequence: the projected heads are traded for the whole sequence of a share of
    the heads before QK-norm, rotary and the kernel (so positions and the causal mask are the usual ones), and
    back before the output projection.
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
        self.sequence_exchange: SequenceExchange | None = None

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        """``[B, T, H·D]`` to ``[B, H, T, D]``, the whole sequence's under context parallelism."""
        # As many heads as the projection holds: under tensor parallelism, this rank's share of them.
        batch, time, _ = projected.shape
        heads = projected.view(batch, time, -1, self.head_dim)
        if self.sequence_exchange is not None:
            heads = self.sequence_exchange.to_heads(heads)
        return heads.transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        start: int = 0,
        kv_cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
        document_mask: object | None = None,
    ) -> torch.Tensor:
        """``positions [B, T]`` replace ``start, start + 1, ...`` for rotary; ``document_mask`` is the kernel's own."""
        query = self._heads(self.query(hidden))
        key = self._heads(self.key(hidden))
        value = self._heads(self.value(hidden))
        if self.query_norm is not None:
            query, key = self.query_norm(query), self.key_norm(key)
        if self.rotary is not None:
            query, key = self.rotary(query, key, start, positions)
        if kv_cache is not None:
            key, value = kv_cache.update(key, value, start)
        attended = (
            self.kernel(query, key, value) if document_mask is None else self.kernel(query, key, value, document_mask)
        )
        attended = attended.transpose(1, 2)
        if self.sequence_exchange is not None:
            attended = self.sequence_exchange.to_sequence(attended)
        batch, time, _, _ = attended.shape
        return self.output(attended.reshape(batch, time, -1))
