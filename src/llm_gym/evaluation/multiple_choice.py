"""Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness and OLMo score them.

An example is a context, its choices and the index of the right one. Each choice is scored by the sum of the
log-probabilities of its tokens after the context; ``accuracy`` counts examples whose right choice scores
highest, ``accuracy_norm`` the same with each score divided by its choice's length in characters (what
lm-evaluation-harness calls ``acc_norm``), which removes the advantage of short choices. Examples are dealt to
ranks round-robin and counted over all of them, so the figures do not depend on the number of ranks.
"""

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llm_gym.data.tokenizers import Tokenizer


@dataclass(frozen=True)
class MultipleChoiceExample:
    context: str
    choices: tuple[str, ...]
    gold: int
    """Index of the right choice."""


@dataclass(frozen=True)
class MultipleChoiceResult:
    examples: int
    correct: int
    correct_norm: int
    chance: float
    """The accuracy of a uniform guess: the mean of 1 / number of choices."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else math.nan

    @property
    def accuracy_norm(self) -> float:
        return self.correct_norm / self.examples if self.examples else math.nan

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm}


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, cut where the whole text's tokens say.

    Whitespace that ends the context moves to the continuation (a tokenizer merges a space or newline with the
    word after it), and the pair is encoded as one text, so the continuation's tokens are those the model
    would see in running text. An empty context becomes the end-of-document token: a new document begins.
    """
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not stripped:
        return [tokenizer.eos_id], tokenizer.encode(continuation)
    context_ids = tokenizer.encode(stripped)
    whole = tokenizer.encode(stripped + continuation)
    if whole[: len(context_ids)] != context_ids or len(whole) == len(context_ids):
        # A merge across the boundary: keep the two encodings apart rather than score a changed context.
        return context_ids, tokenizer.encode(continuation)
    return context_ids, whole[len(context_ids) :]


@dataclass(frozen=True)
class _Window:
    inputs: list[int]
    targets: list[int]
    """The continuation's tokens: the last ``len(targets)`` positions' next tokens."""


def _window(context_ids: list[int], continuation_ids: list[int], max_length: int) -> _Window:
    """The last ``max_length`` input positions of context + continuation (an overlong context loses its start)."""
    tokens = (context_ids + continuation_ids)[-(max_length + 1) :]
    scored = min(len(continuation_ids), len(tokens) - 1)
    return _Window(tokens[:-1], tokens[len(tokens) - scored :])


@torch.no_grad()
def continuation_log_likelihoods(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    batch_size: int,
    device: torch.device,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    min_forward_passes: int = 0,
) -> list[tuple[float, bool]]:
    """For each ``(context ids, continuation ids)``: the continuation's summed log-probability, and whether
    every one of its tokens is the model's most likely next token (greedy).

    Requests are batched longest first (padding wastes least) and answered in the order given. At least
    ``min_forward_passes`` forward passes run, the extra ones on one token: ranks of a sharded model must
    all take part in each forward.
    """
    windows = [_window(context, continuation, max_length) for context, continuation in requests]
    order = sorted(range(len(windows)), key=lambda index: -len(windows[index].inputs))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(windows)
    was_training = model.training
    model.eval()
    try:
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for batch in batches:
            width = len(windows[batch[0]].inputs)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            for row, index in enumerate(batch):
                inputs[row, : len(windows[index].inputs)] = torch.tensor(windows[index].inputs)
            with forward_context():
                log_probs = model(inputs.to(device)).float().log_softmax(dim=-1).cpu()
            for row, index in enumerate(batch):
                window = windows[index]
                if not window.targets:
                    continue
                end = len(window.inputs)
                positions = log_probs[row, end - len(window.targets) : end]
                targets = torch.tensor(window.targets)
                log_likelihood = float(positions.gather(-1, targets[:, None]).sum(dtype=torch.float64))
                results[index] = (log_likelihood, bool((positions.argmax(dim=-1) == targets).all()))
        for _ in range(min_forward_passes - len(batches)):
            with forward_context():
                model(torch.zeros(1, 1, dtype=torch.long, device=device))
    finally:
        model.train(was_training)
    return results


def _forward_passes_on_every_rank(local: int, device: torch.device) -> int:
    """The most forward passes any rank needs, so each rank runs as many."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    value = torch.tensor([local], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def score_multiple_choice(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[MultipleChoiceExample],
    max_length: int,
    batch_size: int,
    device: torch.device,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
) -> MultipleChoiceResult:
    """Accuracy over ``examples``; rank ``r`` of ``world_size`` scores examples ``r, r + world_size, ...``."""
    own = examples[rank::world_size]
    requests = [encode_pair(tokenizer, example.context, choice) for example in own for choice in example.choices]
    passes = _forward_passes_on_every_rank(math.ceil(len(requests) / batch_size), device)
    scores = continuation_log_likelihoods(
        model, requests, max_length, batch_size, device, forward_context, min_forward_passes=passes
    )
    # examples, correct, correct under length normalisation, chance: summed over ranks.
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    start = 0
    for example in own:
        log_likelihoods = [score for score, _ in scores[start : start + len(example.choices)]]
        start += len(example.choices)
        normalised = [
            score / max(len(choice), 1) for score, choice in zip(log_likelihoods, example.choices, strict=True)
        ]
        totals += torch.tensor(
            [
                1.0,
                float(_first_argmax(log_likelihoods) == example.gold),
                float(_first_argmax(normalised) == example.gold),
                1.0 / len(example.choices),
            ],
            dtype=torch.float64,
            device=device,
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    count, correct, correct_norm, chance = totals.tolist()
    return MultipleChoiceResult(int(count), int(correct), int(correct_norm), chance / count if count else math.nan)


def _first_argmax(values: Sequence[float]) -> int:
    """The index of the largest value; a tie goes to the first, as ``numpy.argmax`` does."""
    return max(range(len(values)), key=lambda index: (values[index], -index))
