"""One optimizer step and one evaluation pass, with the loss normalised per target token of the global batch.

Each micro batch contributes ``sum of token losses / global target tokens``, scaled by the data-parallel
size because FSDP2 and DDP average gradients over ranks. Gradient accumulation therefore gives the same
update as one big batch, on any number of ranks.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llm_gym.data.collators import IGNORE_INDEX, Batch
from llm_gym.models.contract import DOCUMENT_IDS
from llm_gym.parallel.strategies import ParallelismStrategy


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    finite: bool


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _token_loss_sum(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    batch = batch.to(device, non_blocking=True)
    documents = {} if batch.document_ids is None else {DOCUMENT_IDS: batch.document_ids}
    logits = model(batch.inputs, **documents)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def train_step(
    model: nn.Module,
    parallelism: ParallelismStrategy,
    micro_batches: Sequence[Batch],
    max_grad_norm: float | None,
) -> StepResult:
    """Forward and backward over the micro batches of one step, then clip. The optimizer is not stepped."""
    device = parallelism.env.device
    local_tokens = sum(batch.target_tokens() for batch in micro_batches)
    global_tokens = int(_all_reduce_sum(torch.tensor([local_tokens], dtype=torch.float64, device=device)).item())
    scale = parallelism.data_parallel_size / max(global_tokens, 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for index, batch in enumerate(micro_batches):
        with parallelism.gradient_sync(model, enabled=index == len(micro_batches) - 1):
            with parallelism.forward_context():
                token_loss_sum = _token_loss_sum(model, batch, device)
            (token_loss_sum * scale).backward()
        loss_sum += token_loss_sum.detach()
    loss = _all_reduce_sum(loss_sum).item() / max(global_tokens, 1)
    grad_norm = parallelism.clip_grad_norm_(model, max_grad_norm).item()
    return StepResult(loss, grad_norm, global_tokens, math.isfinite(loss) and math.isfinite(grad_norm))


@torch.no_grad()
def evaluate(model: nn.Module, parallelism: ParallelismStrategy, batches: Iterable[Batch]) -> float:
    """Mean loss per target token over every rank's batches."""
    device = parallelism.env.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for batch in batches:
        with parallelism.forward_context():
            totals[0] += _token_loss_sum(model, batch, device)
        totals[1] += batch.target_tokens()
    model.train(was_training)
    loss_sum, tokens = _all_reduce_sum(totals).tolist()
    return loss_sum / tokens if tokens else float("nan")
