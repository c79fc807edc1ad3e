"""Every option combination a config can express builds, is causal, counts its parameters as by hand, and
exports to transformers with matching logits (or refuses with a UserError)."""

import itertools

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, TINY, build, model_node, random_tokens
from pydantic import ValidationError

from llm_gym.errors import UserError
from llm_gym.inference.hf_conversion import to_hf
from llm_gym.models.flops import num_parameters
from llm_gym.parallel.block_wrappers import apply_activation_checkpointing

transformers = pytest.importorskip("transformers")

NORMS = {
    "layernorm": {"type_hint": "LayerNorm"},
    "layernorm_nobias": {"type_hint": "LayerNorm", "config": {"bias": False}},
    "rmsnorm": {"type_hint": "RMSNorm"},
}
MLPS = {
    "gelu": {"type_hint": "GELUMLP", "config": {"hidden_dim": 48}},
    "swiglu": {"type_hint": "SwiGLUMLP", "config": {"hidden_dim": 40}},
}
COMBINATIONS = list(itertools.product(("learned", "rope"), NORMS, MLPS, (4, 2, 1), (True, False), (True, False)))


def combination_style(positional, norm, mlp, n_head_kv, bias, tie) -> dict:
    return {
        "positional": positional,
        "n_head_kv": n_head_kv,
        "bias": bias,
        "tie_embeddings": tie,
        "norm": NORMS[norm],
        "mlp": MLPS[mlp],
        "attention": {"type_hint": "SDPAttention"},
        "init": {"type_hint": "TruncatedNormal" if bias else "ScaledNormal"},
    }


def hand_count(positional, norm, mlp, n_head_kv, bias, tie) -> int:
    vocab, length, layers, dim, heads = TINY.values()
    head_dim = dim // heads
    norm_size = 2 * dim if norm == "layernorm" else dim
    kv = n_head_kv * head_dim
    attention = dim * dim * 2 + dim * kv * 2 + (2 * dim + 2 * kv if bias else 0)
    hidden = MLPS[mlp]["config"]["hidden_dim"]
    if mlp == "gelu":
        feed_forward = 2 * dim * hidden + (hidden + dim if bias else 0)
    else:
        feed_forward = 3 * dim * hidden + (2 * hidden + dim if bias else 0)
    total = vocab * dim + layers * (2 * norm_size + attention + feed_forward) + norm_size
    total += length * dim if positional == "learned" else 0
    total += 0 if tie else vocab * dim
    return total


def exportable(positional, norm, mlp, n_head_kv) -> bool:
    gpt2 = positional == "learned" and norm.startswith("layernorm") and mlp == "gelu" and n_head_kv == TINY["n_head"]
    llama = positional == "rope" and norm == "rmsnorm" and mlp == "swiglu"
    return gpt2 or llama


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_option_combination(combination):
    style = combination_style(*combination)
    model = build(style).eval()
    reference = build({**style, "attention": {"type_hint": "ReferenceAttention"}}).eval()
    tokens = random_tokens(model)
    with torch.no_grad():
        logits = model(tokens)
        torch.testing.assert_close(reference(tokens), logits, atol=1e-5, rtol=1e-5)
        changed_last = tokens.clone()
        changed_last[:, -1] = (changed_last[:, -1] + 1) % model.vocab_size
        torch.testing.assert_close(model(changed_last)[:, :-1], logits[:, :-1], atol=1e-6, rtol=0)
    assert logits.shape == (*tokens.shape, TINY["vocab_size"])
    assert num_parameters(model) == hand_count(*combination)

    if not exportable(*combination[:4]):
        with pytest.raises(UserError, match="cannot be expressed in transformers"):
            to_hf(model)
        return
    config, state_dict = to_hf(model)
    hf_model = getattr(transformers, config.architectures[0])(config).eval()
    hf_model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens).logits, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 30}, "dim \\(30\\) must be divisible by n_head \\(4\\)"),
        ({"n_head_kv": 3}, "n_head \\(4\\) must be divisible by n_head_kv \\(3\\)"),
        ({"dim": 36, "n_head": 12}, "rope needs an even head dimension"),
        ({"dropout": 1.0}, "dropout"),
        ({"positional": "alibi"}, "positional"),
        ({"norm": {"type_hint": "BatchNorm"}}, "unknown type_hint 'BatchNorm' for 'norm'"),
        ({"mlp": {"type_hint": "GELUMLP"}}, "mlp.config\\n  Field required"),
        ({"init": {"type_hint": "ScaledNormal", "config": {"std": -1}}}, "std"),
        ({"n_layers": 3}, "n_layers"),
        ({"positional": "learned"}, "rope_theta \\(500000.0\\) is only used with positional: rope"),
    ],
)
def test_invalid_model_config_is_rejected_with_its_field(overrides, message):
    with pytest.raises(ValidationError, match=message):
        model_node(**{**TINY, **LLAMA_STYLE, **overrides})


def test_rope_theta_at_its_default_is_accepted_with_learned_positions():
    node = model_node(**{**TINY, **GPT2_STYLE, "rope_theta": 10_000.0})
    assert node.config.positional.value == "learned"


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama_rope_gqa"])
def test_dropout_only_in_training(style):
    model = build(style, dropout=0.5)
    tokens = random_tokens(model)
    logits = model(tokens)
    assert not torch.equal(logits, model(tokens))
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens), atol=0, rtol=0)


def test_input_longer_than_sequence_length_is_refused():
    model = build(LLAMA_STYLE)
    with pytest.raises(ValueError, match="17 positions exceed the model's sequence_length 16"):
        model(random_tokens(model, length=17))


def test_blocks_can_be_wrapped_for_activation_checkpointing():
    model = build(LLAMA_STYLE)
    tokens = random_tokens(model)
    expected = model(tokens)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert apply_activation_checkpointing(model, "full") == TINY["n_layer"]
    logits = model(tokens)
    logits.sum().backward()
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    for grad, expected_grad in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-6)
    torch.manual_seed(3)
    model.init_weights()


@pytest.mark.slow
def test_blocks_compile_without_graph_breaks():
    model = build(LLAMA_STYLE)
    tokens = random_tokens(model)
    expected = model(tokens)
    for block in model.blocks:
        block.compile(fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(model(tokens), expected, atol=1e-6, rtol=1e-6)
