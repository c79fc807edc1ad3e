"""Export to Hugging Face transformers: parity of logits (float32, random weights, offline), the config it
writes, a save/load round trip, and clear refusals."""

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens
from torch import nn

from llm_gym.errors import UserError
from llm_gym.inference.hf_conversion import to_hf

transformers = pytest.importorskip("transformers")


def hf_model(model: nn.Module, attn_implementation: str = "eager", **to_hf_kwargs) -> nn.Module:
    config, state_dict = to_hf(model, **to_hf_kwargs)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    hf.load_state_dict(state_dict, strict=True)
    return hf


@pytest.mark.parametrize("kernel", ["SDPAttention", "ReferenceAttention"])
@pytest.mark.parametrize(
    ("style", "architecture"),
    [(GPT2_STYLE, "GPT2LMHeadModel"), (LLAMA_STYLE, "LlamaForCausalLM")],
    ids=["gpt2", "llama"],
)
def test_logits_match_transformers_eager_attention(style, architecture, kernel):
    model = build({**style, "attention": {"type_hint": kernel}}, n_layer=3).eval()
    hf = hf_model(model)
    assert type(hf).__name__ == architecture
    tokens = random_tokens(model, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


def test_exact_gelu_logits_match_transformers_gelu():
    style = {**GPT2_STYLE, "mlp": {"type_hint": "GELUMLP", "config": {"hidden_dim": 80, "approximate": "none"}}}
    model = build(style).eval()
    with torch.no_grad():  # MLP inputs of order 1, where exact GELU and its tanh approximation part
        for block in model.blocks:
            block.mlp.input.weight.mul_(50)
    hf = hf_model(model)
    assert hf.config.activation_function == "gelu"
    tokens = random_tokens(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)
    # The tanh approximation differs measurably: the comparison above could not pass with the wrong GELU.
    for block in model.blocks:
        block.mlp.approximate = "tanh"
    with torch.no_grad():
        assert not torch.allclose(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


def test_gpt2_config_carries_the_model_options():
    style = {**GPT2_STYLE, "mlp": {"type_hint": "GELUMLP", "config": {"hidden_dim": 80, "approximate": "none"}}}
    model = build(style, dropout=0.1, tie_embeddings=False)
    config, _ = to_hf(model, eos_token_id=60)
    assert (config.n_inner, config.activation_function, config.n_positions) == (80, "gelu", 16)
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.1, 0.1, 0.1)
    assert (config.tie_word_embeddings, config.eos_token_id, config.bos_token_id) == (False, 60, 60)


def rope_theta(config) -> float:
    """transformers 4.x has ``config.rope_theta``; 5.x moved it into ``config.rope_parameters``."""
    theta = getattr(config, "rope_theta", None)
    return theta if theta is not None else config.rope_parameters["rope_theta"]


def test_llama_config_carries_the_model_options():
    model = build(LLAMA_STYLE, bias=True)
    config, _ = to_hf(model)
    assert config.num_key_value_heads == 2
    assert config.head_dim == 8
    assert config.attention_bias and config.mlp_bias
    assert config.intermediate_size == 96
    assert rope_theta(config) == 500_000.0
    assert config.tie_word_embeddings


def test_gpt2_without_biases_exports_zero_biases():
    model = build({**GPT2_STYLE, "norm": {"type_hint": "LayerNorm", "config": {"bias": False}}}, bias=False).eval()
    _, state_dict = to_hf(model)
    assert torch.all(state_dict["transformer.h.0.attn.c_attn.bias"] == 0)
    assert torch.all(state_dict["transformer.ln_f.bias"] == 0)
    tokens = random_tokens(model)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(model)(tokens).logits, model(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
def test_saved_export_loads_with_auto_model_offline(style, tmp_path):
    model = build(style).eval()
    hf = hf_model(model, attn_implementation="sdpa")
    hf.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    tokens = random_tokens(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens), atol=1e-5, rtol=0)


def test_inexpressible_model_names_what_each_architecture_needs():
    model = build({**LLAMA_STYLE, "norm": {"type_hint": "LayerNorm"}})
    with pytest.raises(UserError) as error:
        to_hf(model)
    message = str(error.value)
    assert "LlamaForCausalLM needs positional: rope, RMSNorm and SwiGLUMLP" in message
    assert "the model has positional: rope, LayerNorm, SwiGLUMLP, n_head 4, n_head_kv 2" in message


def test_gpt2_with_grouped_query_attention_is_refused():
    with pytest.raises(UserError, match="n_head_kv = n_head"):
        to_hf(build(GPT2_STYLE, n_head_kv=2))


def test_only_decoder_lm_exports():
    with pytest.raises(UserError, match="only DecoderLM models export to transformers, not Linear"):
        to_hf(nn.Linear(2, 2))
