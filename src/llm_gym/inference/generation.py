"""Sampling text from a model, with a KV cache: each new token costs one position, not the whole context.

Once the context outgrows the model's ``sequence_length``, each step sees only the last ``sequence_length``
tokens, recomputed without the cache (as nanoGPT does); up to then cached and uncached generation give the
same tokens.
"""

import math
from collections.abc import Iterator

import torch

from llm_gym.errors import UserError
from llm_gym.models.contract import LanguageModel

MAX_SEED = 2**64 - 1


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits [B, V]``: argmax at temperature 0, else a draw from the filtered softmax.

    ``top_k`` keeps the k most likely tokens; ``top_p`` keeps the fewest most likely tokens whose probabilities
    add up to at least p (nucleus sampling). Both may be combined.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # A token goes when the more likely tokens before it already reach top_p; the most likely always stays.
        outside_nucleus = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_logits = sorted_logits.masked_fill(outside_nucleus, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling_settings(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None = None
) -> None:
    """``UserError`` for a setting no sampling can use; the comparisons are written so that nan fails them."""
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    if not 0 <= temperature < math.inf:
        raise UserError(f"temperature must be at least 0 (0 = greedy) and finite, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"the seed must be between 0 and 2^64 - 1 (what a torch.Generator takes), got {seed}")


def _check_sampling_arguments(
    input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise UserError(f"the prompt must be a non-empty [batch, tokens] tensor, got shape {tuple(input_ids.shape)}")
    check_sampling_settings(max_new_tokens, temperature, top_k, top_p)


# As a decorator on a generator, no_grad applies to each resumption only, not to the caller between yields.
@torch.no_grad()
def stream_tokens(
    model: LanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield each new token ``[B]`` as it is sampled; stops early once every row has produced ``eos_id``.

    Rows that finished keep receiving ``eos_id``. The model runs in eval mode and is restored afterwards.
    ``generator`` must live on the model's device.
    """
    _check_sampling_arguments(input_ids, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        tokens = input_ids
        cache = model.new_kv_cache() if use_cache else None
        new_positions = tokens
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + new_positions.shape[1] <= model.sequence_length:
                logits = model(new_positions, kv_cache=cache)
            else:
                cache = None
                logits = model(tokens[:, -model.sequence_length :])
            next_token = sample_next_token(logits[:, -1], temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)
                finished |= next_token == eos_id
            tokens = torch.cat((tokens, next_token[:, None]), dim=1)
            new_positions = next_token[:, None]
            yield next_token
            if eos_id is not None and bool(finished.all()):
                return
    finally:
        model.train(was_training)


def generate(
    model: LanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """The prompt followed by up to ``max_new_tokens`` sampled tokens, ``[B, prompt + new]``."""
    new_tokens = list(
        stream_tokens(model, input_ids, max_new_tokens, temperature, top_k, top_p, generator, eos_id, use_cache)
    )
    return torch.cat((input_ids, *(token[:, None] for token in new_tokens)), dim=1)
