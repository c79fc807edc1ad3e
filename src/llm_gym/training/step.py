"""One optimizer step and one evaluation pass, with the loss normalised per target token of the global batch.

Each micro batch contributes ``sum of token losses / global target tokens``, scaled by the ranks holding
different target tokens (data-parallel ranks × context-parallel chunks) because FSDP2 and DDP average
gradients over them. Gradient accumulation therefore gives the same
update as one big batch, on any number of ranks.
"""

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llm_gym.data.collators import IGNORE_INDEX, Batch
from llm_gym.models.contract import DOCUMENT_IDS, OUTPUT_LOSS
from llm_gym.models.losses import chunked_loss_sums, loss_sums
from llm_gym.parallel.strategies import ParallelismStrategy


@dataclass(frozen=True)
class StepResult:
    """What a step gave, read on the host (``StepOutcome.read``)."""

    loss: float
    """Mean cross-entropy per target token of the global batch."""
    grad_norm: float
    tokens: int
    finite: bool
    loss_sum: float
    """The cross-entropy summed over the global batch's target tokens (``loss`` is this / ``tokens``)."""
    z_loss_sum: float
    """The z-loss penalty (weight × log² Z) summed over the same tokens; 0 without z-loss."""


@dataclass(frozen=True)
class StepOutcome:
    """What a step gave, still on the device: the step queues its work and returns without waiting for it.

    Reading it (``read``, ``read_all``) waits for the device; the loop does that on log steps, evaluations and
    saves only (and on every step with ``on_nonfinite: skip``, which decides on the host whether to update).
    """

    sums: torch.Tensor
    """float64 ``[cross-entropy sum, z-loss penalty sum, global target tokens, gradient norm]``."""

    def read(self) -> StepResult:
        return StepOutcome.read_all([self])[0]

    @staticmethod
    def read_all(outcomes: Sequence["StepOutcome"]) -> list[StepResult]:
        """Every outcome read in one transfer from the device."""
        if not outcomes:
            return []
        results = []
        for loss_sum, z_loss_sum, tokens, grad_norm in torch.stack([o.sums for o in outcomes]).tolist():
            loss = loss_sum / max(tokens, 1)
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            results.append(StepResult(loss, grad_norm, round(tokens), finite, loss_sum, z_loss_sum))
        return results


def _all_reduce_sum(values: torch.Tensor, parallelism: ParallelismStrategy) -> torch.Tensor:
    """Summed over the ranks holding different target tokens (data-parallel ranks and context-parallel chunks):
    the ranks of one tensor-parallel group hold the same tokens."""
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=parallelism.token_group)
    return values


def _context_chunk(batch: Batch, parallelism: ParallelismStrategy) -> Batch:
    """This rank's chunk of the batch's inputs and targets along the sequence (context parallelism; the batch
    itself without). Its ``document_ids`` stay the whole sample's: attention sees the whole sequence."""
    inputs, targets = parallelism.context_chunk(batch.inputs), parallelism.context_chunk(batch.targets)
    return dataclasses.replace(batch, inputs=inputs, targets=targets)


def _token_losses(
    model: nn.Module, batch: Batch, device: torch.device, z_loss_weight: float = 0.0, loss_chunk_tokens: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and z-loss penalty, each summed over the batch's target tokens: from the whole logits, or
    with ``loss_chunk_tokens`` inside the model's forward, a chunk of them at a time."""
    batch = batch.to(device, non_blocking=True)
    documents = {} if batch.document_ids is None else {DOCUMENT_IDS: batch.document_ids}
    if not loss_chunk_tokens:
        return loss_sums(model(batch.inputs, **documents), batch.targets, IGNORE_INDEX, z_loss_weight)
    chunked = functools.partial(
        chunked_loss_sums,
        targets=batch.targets,
        ignore_index=IGNORE_INDEX,
        chunk_tokens=loss_chunk_tokens,
        z_loss_weight=z_loss_weight,
    )
    return model(batch.inputs, **documents, **{OUTPUT_LOSS: chunked})


def train_step(
    model: nn.Module,
    parallelism: ParallelismStrategy,
    micro_batches: Sequence[Batch],
    max_grad_norm: float | None,
    z_loss_weight: float = 0.0,
    loss_chunk_tokens: int = 0,
) -> StepOutcome:
    """Forward and backward over the micro batches of one step, then clip. The optimizer is not stepped.

    Nothing here waits for the device: the token count that normalises the loss stays a device tensor."""
    device = parallelism.env.device
    micro_batches = [_context_chunk(batch, parallelism).to(device, non_blocking=True) for batch in micro_batches]
    local_tokens = sum((batch.targets != IGNORE_INDEX).sum(dtype=torch.float64) for batch in micro_batches)
    global_tokens = _all_reduce_sum(local_tokens.reshape(1), parallelism)
    # float32, as the losses it scales: a float64 factor would promote them and their backward.
    scale = (parallelism.token_parallel_size / global_tokens.clamp(min=1)).to(torch.float32).reshape(())
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # cross-entropy, z-loss penalty
    if parallelism.pipeline is not None:
        _pipeline_forward_backward(parallelism, micro_batches, scale, z_loss_weight, sums)
    else:
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with parallelism.gradient_sync(model, enabled=last), parallelism.loss_context():
                with parallelism.forward_context():
                    cross_entropy, penalty = _token_losses(model, batch, device, z_loss_weight, loss_chunk_tokens)
                ((cross_entropy + penalty) * scale).backward()
            sums += torch.stack([cross_entropy.detach(), penalty.detach()])
    sums = parallelism.sum_over_stages(_all_reduce_sum(sums, parallelism))
    grad_norm = parallelism.clip_grad_norm_(model, max_grad_norm).reshape(1).to(torch.float64)
    return StepOutcome(torch.cat([sums, global_tokens, grad_norm]))


def _pipeline_forward_backward(
    parallelism: ParallelismStrategy,
    micro_batches: Sequence[Batch],
    scale: torch.Tensor,
    z_loss_weight: float,
    sums: torch.Tensor,
) -> None:
    """The micro batches through the pipeline's schedule as its microbatches; on the last stage, their losses
    are added to ``sums`` (cross-entropy, z-loss penalty)."""
    device = parallelism.env.device
    inputs = torch.cat([batch.inputs for batch in micro_batches]).to(device)
    targets = torch.cat([batch.targets for batch in micro_batches]).to(device)
    # Each value the loss gave, with its terms: the schedule reports which of them were the microbatches'.
    terms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def scaled_loss(logits: torch.Tensor, microbatch_targets: torch.Tensor) -> torch.Tensor:
        cross_entropy, penalty = loss_sums(logits, microbatch_targets, IGNORE_INDEX, z_loss_weight)
        loss = (cross_entropy + penalty) * scale
        terms[id(loss)] = (loss, torch.stack([cross_entropy.detach(), penalty.detach()]))
        return loss

    with parallelism.loss_context(), parallelism.forward_context():
        losses = parallelism.pipeline.step(inputs, targets, len(micro_batches), scaled_loss)
    for loss in losses:
        sums += terms[id(loss)][1]


@torch.no_grad()
def evaluate(model: nn.Module, parallelism: ParallelismStrategy, batches: Iterable[Batch]) -> float:
    """Mean loss per target token over every rank's batches."""
    device = parallelism.env.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    pipeline = parallelism.pipeline
    for batch in (_context_chunk(whole, parallelism) for whole in batches):
        with parallelism.forward_context(), parallelism.loss_context():
            if pipeline is None:
                totals[0] += _token_losses(model, batch, device)[0]
            elif (logits := pipeline.forward(batch.inputs.to(device))) is not None:
                totals[0] += loss_sums(logits, batch.targets.to(device), IGNORE_INDEX)[0]
        totals[1] += batch.target_tokens()
    model.train(was_training)
    loss_sum, tokens = _all_reduce_sum(totals, parallelism).tolist()
    # Only the last stage holds the losses; every stage counted the tokens.
    loss_sum = parallelism.sum_over_stages(torch.tensor([loss_sum], dtype=torch.float64, device=device)).item()
    return loss_sum / tokens if tokens else float("nan")
