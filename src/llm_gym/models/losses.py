"""Next-token losses: the cross-entropy and the z-loss penalty, summed over the targets that count.

``loss_sums`` takes a model's logits. ``chunked_loss_sums`` takes what the output projection would turn into
logits, and never holds more than ``chunk_tokens`` tokens' logits: in float32 the whole logits of a step are
its largest tensor (8k tokens × a 128k vocabulary is 4 GiB, with as much again for their softmax and their
gradient), and a chunk of them is enough to sum the loss. Each chunk's logits are recomputed in the
backward (activation checkpointing of the projection and the loss), so a step costs one more projection
matmul per chunk.
"""

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint


def loss_sums(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, z_loss_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and z-loss penalty (weight × log² Z) of ``logits [..., V]`` for ``targets [...]``, computed in
    float32 and summed over the targets other than ``ignore_index``."""
    targets = targets.flatten()
    logits = logits.flatten(0, -2).float()
    cross_entropy = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if isinstance(cross_entropy, DTensor):
        # Logits split by vocabulary (tensor parallelism, under loss_parallel): the loss is the same on every
        # rank of the group.
        cross_entropy = cross_entropy.full_tensor()
    if not z_loss_weight:
        return cross_entropy, torch.zeros((), device=logits.device)
    log_normaliser = logits.logsumexp(dim=-1)
    return cross_entropy, z_loss_weight * (log_normaliser.square() * (targets != ignore_index)).sum()


def chunked_loss_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    z_loss_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss_sums`` of the logits ``hidden [..., D] @ weight [V, D]ᵀ``, ``chunk_tokens`` tokens at a time."""
    # Summed in float64: the chunks' float32 sums add no rounding of their own.
    cross_entropy = penalty = torch.zeros((), dtype=torch.float64, device=hidden.device)
    # split, not slices: the backward of a split puts the chunks' gradients together once.
    chunks = zip(hidden.flatten(0, -2).split(chunk_tokens), targets.flatten().split(chunk_tokens), strict=True)
    for hidden_chunk, target_chunk in chunks:
        chunk_cross_entropy, chunk_penalty = checkpoint(
            _projected_loss_sums, hidden_chunk, weight, target_chunk, ignore_index, z_loss_weight, use_reentrant=False
        )
        cross_entropy, penalty = cross_entropy + chunk_cross_entropy, penalty + chunk_penalty
    return cross_entropy, penalty


def _projected_loss_sums(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, z_loss_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_sums(F.linear(hidden, weight), targets, ignore_index, z_loss_weight)
