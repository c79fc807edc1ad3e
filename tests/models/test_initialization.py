"""Initialisation: meta-device build + init equals eager init, every parameter is reached, the schemes draw
the documented distributions, and tied embeddings survive ``to_empty`` and FSDP2 sharding."""

import math

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens
from torch import nn

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from llm_gym.parallel.distributed import init_distributed
from llm_gym.parallel.strategies import FSDP2, FSDP2Config

STYLES = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE}
LARGER = {"vocab_size": 257, "dim": 128, "n_layer": 4}


def meta_then_materialised(style: dict, seed: int, **overrides) -> nn.Module:
    model = build(style, device="meta", **overrides)
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_weights()
    return model


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("style", STYLES)
def test_meta_build_then_init_equals_eager_build_then_init(style, tie):
    eager = build(STYLES[style], seed=123, tie_embeddings=tie)
    torch.manual_seed(7)
    with torch.no_grad():
        eager.init_weights()
    materialised = meta_then_materialised(STYLES[style], seed=7, tie_embeddings=tie)
    expected = eager.state_dict()
    assert materialised.state_dict().keys() == expected.keys()
    for name, value in materialised.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=0, rtol=0, msg=name)
    tokens = random_tokens(eager)
    torch.testing.assert_close(materialised(tokens), eager(tokens), atol=0, rtol=0)


@pytest.mark.parametrize("style", STYLES)
def test_init_weights_reaches_every_parameter(style):
    model = build(STYLES[style])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
        model.init_weights()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        if "norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(parameter == expected), name
        elif name.endswith("bias"):
            assert torch.all(parameter == 0), name


def test_tied_embeddings_stay_one_matrix_after_to_empty():
    model = meta_then_materialised(LLAMA_STYLE, seed=0, tie_embeddings=True)
    vocab_matrices = [name for name, p in model.named_parameters() if p.shape[0] == model.vocab_size]
    assert vocab_matrices == ["token_embedding.weight"]
    tokens = random_tokens(model)
    model(tokens).sum().backward()
    before = model(tokens).detach()
    with torch.no_grad():
        model.token_embedding.weight[:, 0] += 1.0  # not a token of the input: only the output projection sees it
    changed = model(tokens).detach()
    assert not torch.allclose(before, changed)


def test_scaled_normal_draws_gpt2_distributions():
    model = build(GPT2_STYLE, **LARGER)
    std = 0.02
    assert model.token_embedding.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.position_embedding.weight.std().item() == pytest.approx(std, rel=0.1)
    residual = torch.cat([p.flatten() for b in model.blocks for p in (b.attention.output.weight, b.mlp.output.weight)])
    assert residual.std().item() == pytest.approx(std / math.sqrt(2 * LARGER["n_layer"]), rel=0.05)
    assert torch.cat([b.attention.query.weight.flatten() for b in model.blocks]).std().item() == pytest.approx(
        std, rel=0.05
    )
    assert abs(model.token_embedding.weight.mean().item()) < 1e-3


def test_truncated_normal_cuts_off_and_scales_by_depth():
    cutoff = 2.0
    style = {**LLAMA_STYLE, "init": {"type_hint": "TruncatedNormal", "config": {"std": 0.05, "cutoff": cutoff}}}
    model = build(style, **LARGER)
    shrink = truncation_shrink(cutoff)
    for index, block in enumerate(model.blocks):
        std = 0.05 / math.sqrt(2 * (index + 1))
        weight = torch.cat([block.attention.output.weight.flatten(), block.mlp.output.weight.flatten()])
        assert weight.abs().max().item() <= cutoff * std
        assert weight.std().item() == pytest.approx(std * shrink, rel=0.05)
    assert model.token_embedding.weight.abs().max().item() <= cutoff * 0.05


def truncation_shrink(cutoff: float) -> float:
    """The std of a normal truncated at ± c·σ, over σ: sqrt(1 - 2c·φ(c) / (2Φ(c) - 1))."""
    density = math.exp(-(cutoff**2) / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cutoff / math.sqrt(2))
    return math.sqrt(1 - 2 * cutoff * density / mass)


@pytest.mark.parametrize("residual_scaling", ["n_layer", "depth", "none"])
@pytest.mark.parametrize("scheme", ["ScaledNormal", "TruncatedNormal"])
def test_every_scheme_scales_residual_projections_as_configured(scheme, residual_scaling):
    std, n_layer = 0.05, LARGER["n_layer"]
    init = {"type_hint": scheme, "config": {"std": std, "residual_scaling": residual_scaling}}
    model = build({**GPT2_STYLE, "init": init}, **LARGER)
    shrink = truncation_shrink(3.0) if scheme == "TruncatedNormal" else 1.0
    for index, block in enumerate(model.blocks):
        expected = {"n_layer": std / math.sqrt(2 * n_layer), "depth": std / math.sqrt(2 * (index + 1)), "none": std}
        weight = torch.cat([block.attention.output.weight.flatten(), block.mlp.output.weight.flatten()])
        assert weight.std().item() == pytest.approx(expected[residual_scaling] * shrink, rel=0.05), index
        assert block.attention.query.weight.std().item() == pytest.approx(std * shrink, rel=0.05), index


def _fsdp2_meta_init(style_name: str) -> dict:
    env = init_distributed("cpu")
    model = build(STYLES[style_name], device="meta", tie_embeddings=True, **LARGER)
    model = FSDP2(FSDP2Config(), env).parallelize(model)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights()
    initial = {name: parameter.full_tensor().detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(random_tokens(model)).float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    return {
        "initial": initial,
        "loss": loss.item(),
        "vocab_matrices": [name for name, p in model.named_parameters() if p.shape[0] == model.vocab_size],
        "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
    }


@pytest.mark.slow
@pytest.mark.cross_version
@pytest.mark.parametrize("style", STYLES)
def test_fsdp2_meta_init_equals_eager_init(style):
    """Stronger than matching the distribution: a sharded init gives the unsharded model's very weights."""
    skip_unless_gloo_sharding_works()
    eager = build(STYLES[style], tie_embeddings=True, **LARGER)
    torch.manual_seed(0)
    with torch.no_grad():
        eager.init_weights()
    for result in run_on_ranks(_fsdp2_meta_init, 2, style):
        assert result["sharded"]
        assert result["vocab_matrices"] == ["token_embedding.weight"]
        assert math.isfinite(result["loss"])
        assert result["initial"].keys() == dict(eager.named_parameters()).keys()
        for name, parameter in eager.named_parameters():
            torch.testing.assert_close(result["initial"][name], parameter.detach(), atol=0, rtol=0, msg=name)
