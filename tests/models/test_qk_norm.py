"""QK-norm: each query and key head normalised by the model's norm, before rotary, against a hand computation;
generation with it; and its export to transformers where an architecture has it (Qwen3), refused where not."""

import math

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens

from llm_gym.errors import UserError
from llm_gym.inference.generation import generate
from llm_gym.inference.hf_conversion import to_hf

QK_LLAMA = {**LLAMA_STYLE, "qk_norm": True, "attention": {"type_hint": "ReferenceAttention"}}


def rms_norm(heads: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return heads / torch.sqrt(heads.pow(2).mean(-1, keepdim=True) + eps) * gain


def rotate(heads: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE, half-split layout: dimension i pairs with i + head_dim / 2, angle position / theta^(2i / head_dim)."""
    head_dim, positions = heads.shape[-1], torch.arange(heads.shape[-2], dtype=torch.float64)
    angles = positions[:, None] / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    first, second = heads[..., : head_dim // 2], heads[..., head_dim // 2 :]
    return torch.cat([first * angles.cos() - second * angles.sin(), second * angles.cos() + first * angles.sin()], -1)


def test_queries_and_keys_are_normalised_per_head_before_rotary():
    model = build(QK_LLAMA).double().eval()
    attention = model.blocks[0].attention
    with torch.no_grad():  # gains other than the initial ones, different for queries and keys
        attention.query_norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
        attention.key_norm.weight.copy_(torch.linspace(1.5, -1.0, 8))
    hidden = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    eps, theta, heads, kv_heads, head_dim = 1e-5, 500_000.0, 4, 2, 8

    def split(projected: torch.Tensor, count: int) -> torch.Tensor:
        return projected.view(2, 5, count, head_dim).transpose(1, 2)

    query = rotate(rms_norm(split(hidden @ attention.query.weight.T, heads), attention.query_norm.weight, eps), theta)
    key = rotate(rms_norm(split(hidden @ attention.key.weight.T, kv_heads), attention.key_norm.weight, eps), theta)
    value = split(hidden @ attention.value.weight.T, kv_heads)
    key, value = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
    scores = (query @ key.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(
        torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")
    )
    expected = (scores.softmax(-1) @ value).transpose(1, 2).reshape(2, 5, 32) @ attention.output.weight.T

    with torch.no_grad():  # float64 throughout, but for the rotary angles, which llm_gym computes in float32
        torch.testing.assert_close(attention(hidden), expected, atol=1e-8, rtol=0)


def test_the_norms_are_one_gain_per_head_dimension_initialised_like_the_model_s_norms():
    model = build(QK_LLAMA)
    names = {name: tuple(parameter.shape) for name, parameter in model.named_parameters() if "_norm" in name}
    assert names["blocks.1.attention.query_norm.weight"] == names["blocks.1.attention.key_norm.weight"] == (8,)
    assert torch.equal(model.blocks[1].attention.key_norm.weight, torch.ones(8))
    assert not any("query_norm" in name for name, _ in build(LLAMA_STYLE).named_parameters())


def test_generation_with_the_cache_equals_generation_without():
    model = build({**QK_LLAMA, "attention": {"type_hint": "SDPAttention"}}).eval()
    prompt = random_tokens(model, batch=1, length=4)
    cached = generate(model, prompt, max_new_tokens=6, temperature=0.0)
    with torch.no_grad():
        tokens = prompt
        for _ in range(6):
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, tokens)


def test_a_llama_style_model_with_qk_norm_exports_as_qwen3_with_equal_logits():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3Config"):
        pytest.skip("Qwen3 arrived in transformers 4.51")
    model = build({**QK_LLAMA, "attention": {"type_hint": "SDPAttention"}}, n_layer=3, tie_embeddings=False).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attention.query_norm.weight.uniform_(0.5, 1.5)
            block.attention.key_norm.weight.uniform_(0.5, 1.5)
    config, state_dict = to_hf(model, eos_token_id=3)
    assert config.architectures == ["Qwen3ForCausalLM"] and config.head_dim == 8
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    hf.load_state_dict(state_dict, strict=True)
    tokens = random_tokens(model, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("style", "overrides", "has"),
    [
        (GPT2_STYLE, {"qk_norm": True}, "positional: learned, LayerNorm, GELUMLP, n_head 4, n_head_kv 4, qk_norm true"),
        (LLAMA_STYLE, {"qk_norm": True, "bias": True}, "qk_norm true, bias true"),
    ],
    ids=["gpt2", "llama_with_biases"],
)
def test_qk_norm_where_no_architecture_has_it_is_refused_with_what_each_needs(style, overrides, has):
    pytest.importorskip("transformers")
    with pytest.raises(UserError) as error:
        to_hf(build(style, **overrides))
    message = str(error.value)
    assert "GPT2LMHeadModel needs positional: learned, LayerNorm, GELUMLP, n_head_kv = n_head and no qk_norm" in message
    assert "Qwen3ForCausalLM is Llama with qk_norm and bias: false" in message and has in message
