"""Context parallelism, Ulysses-style: each rank of a ``cp`` group holds one chunk of every sequence, and around
attention an all-to-all trades the sequence for the heads, so that the kernel sees the whole sequence for its
share of the heads (any kernel, CPU SDPA included; causal masks and rotary positions are the usual ones).

``UlyssesExchange`` is what the strategy hands a model's ``apply_context_parallel`` (the ``SequenceExchange`` of
the model contract).
"""

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over dim 0 in equal splits, differentiable. It is its own adjoint: the gradient of
    the chunk a rank sent to rank ``j`` is the gradient of what rank ``j`` received from it."""

    @staticmethod
    def forward(ctx, chunks: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(chunks, group)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_to_all(gradient, ctx.group), None


def _all_to_all(chunks: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    # all_to_all_single reads its input as laid out in memory: a non-contiguous view would send the wrong values.
    chunks = chunks.contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received


@torch.compiler.disable
def all_to_all(chunks: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Chunk ``j`` of ``chunks [group size, ...]`` goes to rank ``j`` of ``group``; chunk ``j`` of the result is
    what rank ``j`` sent this rank. Gradients flow back the same way."""
    return _AllToAll.apply(chunks, group)


class UlyssesExchange:
    """Trades a sequence chunk of every head for the whole sequence of a share of the heads, and back, over the
    ``degree`` ranks of a context-parallel group; this rank holds chunk ``rank`` of each sequence.

    ``group`` is looked up at the first exchange, so that ``llm_gym validate`` can apply a model's hook (and have
    it refuse heads that do not divide) without a process group."""

    def __init__(self, degree: int, rank: int, tensor_parallel_degree: int, group: Callable[[], dist.ProcessGroup]):
        self.degree, self.rank, self.tensor_parallel_degree = degree, rank, tensor_parallel_degree
        self._group = group

    @functools.cached_property
    @torch.compiler.disable
    def group(self) -> dist.ProcessGroup:
        return self._group()

    def to_heads(self, chunk: torch.Tensor) -> torch.Tensor:
        """``[B, T / degree, H, D]`` (this rank's positions, every head) to ``[B, T, H / degree, D]`` (every
        position, this rank's heads: ``rank · H / degree`` onwards)."""
        batch, length, heads, head_dim = chunk.shape
        share = heads // self.degree
        # Heads split into [degree, share]; the degree dim leads, so that share j goes to rank j.
        outgoing = chunk.view(batch, length, self.degree, share, head_dim).permute(2, 0, 1, 3, 4)
        incoming = all_to_all(outgoing, self.group)  # [degree (whose chunk of positions), B, T / degree, share, D]
        return incoming.permute(1, 0, 2, 3, 4).reshape(batch, self.degree * length, share, head_dim)

    def to_sequence(self, heads: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_heads``: ``[B, T, H / degree, D]`` to ``[B, T / degree, H, D]``."""
        batch, length, share, head_dim = heads.shape
        chunk_length = length // self.degree
        outgoing = heads.view(batch, self.degree, chunk_length, share, head_dim).transpose(0, 1)
        incoming = all_to_all(outgoing, self.group)  # [degree (whose share of heads), B, T / degree, share, D]
        return incoming.permute(1, 2, 0, 3, 4).reshape(batch, chunk_length, self.degree * share, head_dim)
