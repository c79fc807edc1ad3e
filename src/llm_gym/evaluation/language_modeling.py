"""Loss, perplexity and bits per byte of a model on a corpus, summed over every rank's batches.

``loss`` is the mean cross-entropy per target token in nats (what training logs as an evaluation split's loss),
``perplexity`` its exponential. ``bits_per_byte`` is the same prediction measured per byte of text, so models
with different tokenizers compare: the nats of every target token that stands for text, divided by ``ln 2`` and
by the bytes those tokens stand for (``text_bytes``). Targets that are special tokens (the end of a document)
count in ``loss`` but not in ``bits_per_byte``, whose byte count has no place for them.
"""

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llm_gym.data.collators import IGNORE_INDEX, Batch
from llm_gym.models.contract import DOCUMENT_IDS


@dataclass(frozen=True)
class LanguageModelingTotals:
    """Sums over the evaluated targets of every rank; the metrics derive from them."""

    nats: float
    tokens: int
    text_nats: float
    """Nats of the targets that stand for text (byte length > 0)."""
    bytes: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.text_nats / (math.log(2) * self.bytes) if self.bytes else math.nan

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


@torch.no_grad()
def language_modeling_totals(
    model: nn.Module,
    batches: Iterable[Batch],
    token_bytes: torch.Tensor,
    device: torch.device,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> LanguageModelingTotals:
    """Sum the loss of the batches (targets ``IGNORE_INDEX`` where nothing is predicted),
    then over ranks when there is a process group. ``token_bytes`` is ``text_bytes.token_byte_lengths``."""
    token_bytes = token_bytes.to(device)
    # nats, tokens, text nats, bytes: float64 holds integer counts exactly up to 2^53.
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            documents = {} if batch.document_ids is None else {DOCUMENT_IDS: batch.document_ids.to(device)}
            with forward_context():
                logits = model(inputs, **documents)
            token_nats = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            )
            predicted = targets.flatten() != IGNORE_INDEX
            target_bytes = torch.where(predicted, token_bytes[targets.flatten().clamp(min=0)], 0)
            totals[0] += token_nats.sum(dtype=torch.float64)
            totals[1] += predicted.sum()
            totals[2] += token_nats.masked_fill(target_bytes == 0, 0).sum(dtype=torch.float64)
            totals[3] += target_bytes.sum()
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    nats, tokens, text_nats, byte_count = totals.tolist()
    return LanguageModelingTotals(nats, int(tokens), text_nats, int(byte_count))
