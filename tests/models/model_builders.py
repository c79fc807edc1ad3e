"""Tiny models for the model tests, built the way a config builds them: a validated node through the registry."""

from typing import Any

import torch

from llm_gym.assembly import make_registry
from llm_gym.models.decoder import DecoderLM
from llm_gym.registry.component import Component, ComponentNode

TINY = {"vocab_size": 61, "sequence_length": 16, "n_layer": 2, "dim": 32, "n_head": 4}

GPT2_STYLE = {
    "positional": "learned",
    "bias": True,
    "norm": {"type_hint": "LayerNorm"},
    "attention": {"type_hint": "SDPAttention"},
    "mlp": {"type_hint": "GELUMLP", "config": {"hidden_dim": 128}},
    "init": {"type_hint": "ScaledNormal"},
}

LLAMA_STYLE = {
    "positional": "rope",
    "rope_theta": 500_000.0,
    "n_head_kv": 2,
    "norm": {"type_hint": "RMSNorm"},
    "attention": {"type_hint": "SDPAttention"},
    "mlp": {"type_hint": "SwiGLUMLP", "config": {"hidden_dim": 96}},
    "init": {"type_hint": "TruncatedNormal"},
}


REGISTRY = make_registry()


def model_node(**config: Any) -> ComponentNode:
    return REGISTRY.validate(Component("model"), {"type_hint": "DecoderLM", "config": config})


def on_meta_device(node: ComponentNode) -> DecoderLM:
    """The model of ``node`` built on the meta device: its shapes without memory, for counting."""
    with torch.device("meta"):
        return REGISTRY.build_component_by_config(node)


def build(style: dict, device: str = "cpu", seed: int = 0, **overrides: Any) -> DecoderLM:
    node = model_node(**{**TINY, **style, **overrides})
    torch.manual_seed(seed)
    with torch.device(device):
        return REGISTRY.build_component_by_config(node)


def random_tokens(model: DecoderLM, batch: int = 2, length: int | None = None, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (batch, length or model.sequence_length), generator=generator)
