"""Generation: the KV cache changes nothing but speed, sampling filters do what they say, bad arguments
are user errors."""

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens

from llm_gym.errors import UserError
from llm_gym.inference.generation import generate, sample_next_token, stream_tokens
from llm_gym.models.attention import ReferenceAttention, SDPAttention

STYLES = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE}


@pytest.mark.parametrize("new_tokens", [5, 30], ids=["within_context", "beyond_context"])
@pytest.mark.parametrize("style", STYLES)
def test_greedy_generation_with_cache_equals_without(style, new_tokens):
    model = build(STYLES[style])
    prompt = random_tokens(model, batch=3, length=6)
    cached = generate(model, prompt, new_tokens, temperature=0)
    uncached = generate(model, prompt, new_tokens, temperature=0, use_cache=False)
    assert cached.shape == (3, 6 + new_tokens)
    assert torch.equal(cached[:, :6], prompt)
    assert torch.equal(cached, uncached)


def test_cached_logits_equal_full_forward_logits():
    model = build(LLAMA_STYLE).eval()
    tokens = random_tokens(model, length=12)
    cache = model.new_kv_cache()
    with torch.no_grad():
        expected = model(tokens)
        chunks = [model(tokens[:, :5], kv_cache=cache)] + [model(tokens[:, i : i + 1], kv_cache=cache) for i in (5, 6)]
        chunks.append(model(tokens[:, 7:], kv_cache=cache))
    torch.testing.assert_close(torch.cat(chunks, dim=1), expected, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize("n_head_kv", [4, 2, 1])
def test_sdpa_equals_reference_for_queries_after_cached_keys(n_head_kv):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 3, 8, generator=generator)
    key, value = (torch.randn(2, n_head_kv, 7, 8, generator=generator) for _ in range(2))
    for query_length in (1, 3):
        torch.testing.assert_close(
            SDPAttention()(query[:, :, :query_length], key, value),
            ReferenceAttention()(query[:, :, :query_length], key, value),
            atol=1e-6,
            rtol=1e-5,
        )


def test_sampling_is_reproducible_with_a_generator_and_restores_training_mode():
    model = build(GPT2_STYLE)
    prompt = random_tokens(model, length=4)
    first = generate(model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(5))
    second = generate(model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    assert model.training
    assert torch.is_grad_enabled()


def test_top_k_and_top_p_keep_only_the_most_likely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)

    def draws(**kwargs) -> set[int]:
        return {int(sample_next_token(logits, generator=generator, **kwargs)) for _ in range(200)}

    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.5) == {0}
    assert draws(top_p=0.79) == {0, 1}
    assert draws(top_p=0.81) == {0, 1, 2}
    assert draws(top_k=1, temperature=5.0) == {0}
    assert draws() == {0, 1, 2, 3}
    assert int(sample_next_token(logits, temperature=0)) == 0


def test_generation_stops_when_every_row_has_produced_eos():
    model = build(GPT2_STYLE)
    prompt = random_tokens(model, length=3)
    greedy = generate(model, prompt, 6, temperature=0)
    eos = int(greedy[0, 4])  # row 0 produces it as its second new token
    stopped = generate(model, prompt, 6, temperature=0, eos_id=eos)
    ends = [3 + int((row[3:] == eos).nonzero()[0]) + 1 if (row[3:] == eos).any() else None for row in greedy]
    assert stopped.shape[1] == (max(ends) if None not in ends else greedy.shape[1])
    for row, end in enumerate(ends):
        end = end or greedy.shape[1]
        assert torch.equal(stopped[row, :end], greedy[row, :end])
        assert torch.all(stopped[row, end:] == eos)


def test_stream_yields_one_token_per_row_at_a_time():
    model = build(LLAMA_STYLE)
    prompt = random_tokens(model, batch=2, length=4)
    streamed = list(stream_tokens(model, prompt, 5, temperature=0))
    assert [token.shape for token in streamed] == [torch.Size([2])] * 5
    assert torch.equal(torch.stack(streamed, dim=1), generate(model, prompt, 5, temperature=0)[:, 4:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be at least 0"),
        ({"temperature": -0.5}, "temperature must be at least 0"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_p": 1.5}, "top_p must be in \\(0, 1\\]"),
        ({"top_p": 0.0}, "top_p must be in \\(0, 1\\]"),
    ],
)
def test_bad_sampling_arguments_are_user_errors(kwargs, message):
    model = build(GPT2_STYLE)
    arguments = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(UserError, match=message):
        generate(model, random_tokens(model, length=2), **arguments)


def test_empty_prompt_is_a_user_error():
    model = build(GPT2_STYLE)
    with pytest.raises(UserError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_cache_under_autocast_holds_the_lower_precision_keys():
    model = build(LLAMA_STYLE).eval()
    tokens = random_tokens(model, length=6)
    cache = model.new_kv_cache()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(tokens)
        model(tokens[:, :5], kv_cache=cache)
        last = model(tokens[:, 5:], kv_cache=cache)
    assert cache.layers[0].keys.dtype == torch.bfloat16
    torch.testing.assert_close(last[:, -1].float(), full[:, -1].float(), atol=0.05, rtol=0.05)
