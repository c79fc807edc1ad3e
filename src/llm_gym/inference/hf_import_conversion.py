"""A Hugging Face ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` as a ``DecoderLM``: its model config and weights.

The inverse of ``hf_conversion.to_hf``. Works on plain data (``config.json`` as a dict, tensors by name), so
nothing from the model directory runs code and ``transformers`` is not needed. Every field of the config that
changes what the model computes is either mapped or, when llm_gym's model cannot express it, refused with
``UserError`` naming it; fields that only concern other uses of the file (generation defaults, token ids,
``torch_dtype``) are ignored.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llm_gym.errors import UserError

ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM")


@dataclass(frozen=True)
class ImportedModel:
    architecture: str
    model_config: dict[str, Any]
    """The ``config`` of a ``DecoderLM`` model node."""

    def convert_weights(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hugging Face tensors by name → llm_gym's parameters by name, float32; every tensor must find its place."""
        weights = _Weights(tensors, "transformer." if self.architecture == "GPT2LMHeadModel" else "model.")
        convert = _gpt2_weights if self.architecture == "GPT2LMHeadModel" else _llama_weights
        state = convert(weights, self.model_config["n_layer"])
        _output(weights, state, self.model_config["tie_embeddings"])
        weights.check_all_taken()
        return {name: tensor.contiguous() for name, tensor in state.items()}


class _Fields:
    """Typed reads of config.json, each failure a ``UserError`` naming the field."""

    def __init__(self, config: Mapping[str, Any], where: str):
        self.config, self.where = config, where

    def _get(self, key: str, default: Any) -> Any:
        return self.config.get(key, default) if self.config.get(key) is not None else default

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{self.where}: '{key}' must be a positive integer, got {value!r}")
        return value

    def number(self, key: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
        value = self._get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value < high:
            raise UserError(f"{self.where}: '{key}' must be a number in [{low}, {high}), got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise UserError(f"{self.where}: '{key}' must be true or false, got {value!r}")
        return value

    def require(self, key: str, allowed: tuple[Any, ...], default: Any, reason: str) -> Any:
        value = self._get(key, default)
        if value not in allowed:
            shown = " or ".join(repr(item) for item in allowed)
            raise UserError(f"{self.where}: '{key}' is {value!r}; llm_gym's DecoderLM takes {shown} ({reason})")
        return value


def architecture_of(config: Mapping[str, Any], where: str) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and len(architectures) == 1 and architectures[0] in ARCHITECTURES:
        return architectures[0]
    by_type = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
    if architectures is None and config.get("model_type") in by_type:
        return by_type[config["model_type"]]
    found = architectures if architectures is not None else config.get("model_type")
    raise UserError(f"{where}: llm_gym imports {' and '.join(ARCHITECTURES)}; this model is {found!r}")


def from_hf_config(config: Mapping[str, Any], where: str = "config.json") -> ImportedModel:
    """The ``DecoderLM`` config and weight conversion that compute what ``config`` describes."""
    if not isinstance(config, Mapping):
        raise UserError(f"{where}: expected a JSON object")
    architecture = architecture_of(config, where)
    fields = _Fields(config, where)
    if architecture == "GPT2LMHeadModel":
        return ImportedModel(architecture, _gpt2_model_config(fields))
    return ImportedModel(architecture, _llama_model_config(fields))


def _gpt2_model_config(fields: _Fields) -> dict[str, Any]:
    dim = fields.integer("n_embd")
    activation = fields.require(
        "activation_function", ("gelu_new", "gelu_pytorch_tanh", "gelu"), "gelu_new", "GELU, exact or tanh"
    )
    fields.require("scale_attn_weights", (True,), True, "attention scaled by 1/√head_dim")
    fields.require("scale_attn_by_inverse_layer_idx", (False,), False, "no per-layer attention scaling")
    fields.require("add_cross_attention", (False,), False, "a decoder only")
    n_layer = fields.integer("n_layer")
    return {
        "vocab_size": fields.integer("vocab_size"),
        "sequence_length": fields.integer("n_positions"),
        "n_layer": n_layer,
        "dim": dim,
        "n_head": _heads(fields, "n_head", dim),
        "positional": "learned",
        "bias": True,
        "dropout": fields.number("resid_pdrop", 0.1, high=1.0),
        "tie_embeddings": fields.flag("tie_word_embeddings", True),
        "norm": {"type_hint": "LayerNorm", "config": {"bias": True, "eps": fields.number("layer_norm_epsilon", 1e-5)}},
        "attention": {"type_hint": "SDPAttention"},
        "mlp": {
            "type_hint": "GELUMLP",
            "config": {
                "hidden_dim": fields.integer("n_inner", 4 * dim),
                "approximate": "none" if activation == "gelu" else "tanh",
            },
        },
        "init": {"type_hint": "ScaledNormal", "config": {"std": _init_std(fields), "residual_scaling": "n_layer"}},
    }


def _heads(fields: _Fields, key: str, dim: int) -> int:
    heads = fields.integer(key)
    if dim % heads:
        raise UserError(f"{fields.where}: the width {dim} is not divisible by '{key}' ({heads})")
    return heads


def _init_std(fields: _Fields) -> float:
    return fields.number("initializer_range", 0.02, low=1e-12)


def _rope(fields: _Fields) -> tuple[float, dict[str, Any] | None]:
    """``rope_theta`` and the ``rope_scaling`` of the model config: transformers 4 writes ``rope_theta`` and
    ``rope_scaling``, 5 writes both in ``rope_parameters``. Plain and ``llama3`` frequencies are supported."""
    parameters = fields.config.get("rope_parameters") or fields.config.get("rope_scaling") or {}
    if not isinstance(parameters, Mapping):
        raise UserError(f"{fields.where}: 'rope_parameters' must be an object, got {parameters!r}")
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(
            f"{fields.where}: RoPE scaling '{rope_type}' (rope_scaling / rope_parameters) is not supported: "
            "llm_gym's rotary embedding has plain frequencies or Llama 3.1's (llama3)"
        )
    theta = parameters.get("rope_theta", fields.config.get("rope_theta", 10_000.0))
    theta = _Fields({"rope_theta": theta}, fields.where).number("rope_theta", 10_000.0, low=1e-12)
    if rope_type == "default":
        return theta, None
    scaling = _Fields(parameters, f"{fields.where}: rope_scaling")
    return theta, {
        "factor": scaling.number("factor", 0.0, low=1e-12),
        "low_freq_factor": scaling.number("low_freq_factor", 1.0, low=1e-12),
        "high_freq_factor": scaling.number("high_freq_factor", 4.0, low=1e-12),
        "original_max_position_embeddings": scaling.integer("original_max_position_embeddings"),
    }


def _llama_model_config(fields: _Fields) -> dict[str, Any]:
    dim = fields.integer("hidden_size")
    n_head = _heads(fields, "num_attention_heads", dim)
    n_head_kv = fields.integer("num_key_value_heads", n_head)
    if n_head % n_head_kv:
        raise UserError(f"{fields.where}: num_attention_heads ({n_head}) is not a multiple of num_key_value_heads")
    fields.require("head_dim", (dim // n_head,), dim // n_head, "hidden_size / num_attention_heads")
    fields.require("hidden_act", ("silu",), "silu", "SwiGLU")
    attention_bias = fields.flag("attention_bias", False)
    fields.require("mlp_bias", (attention_bias,), False, "one bias setting for attention and MLP, here attention_bias")
    rope_theta, rope_scaling = _rope(fields)
    return {
        "vocab_size": fields.integer("vocab_size"),
        "sequence_length": fields.integer("max_position_embeddings"),
        "n_layer": fields.integer("num_hidden_layers"),
        "dim": dim,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "positional": "rope",
        "rope_theta": rope_theta,
        **({"rope_scaling": rope_scaling} if rope_scaling else {}),
        "bias": attention_bias,
        "dropout": fields.number("attention_dropout", 0.0, high=1.0),
        "tie_embeddings": fields.flag("tie_word_embeddings", False),
        "norm": {"type_hint": "RMSNorm", "config": {"eps": fields.number("rms_norm_eps", 1e-6, low=1e-30)}},
        "attention": {"type_hint": "SDPAttention"},
        "mlp": {"type_hint": "SwiGLUMLP", "config": {"hidden_dim": fields.integer("intermediate_size")}},
        "init": {"type_hint": "TruncatedNormal", "config": {"std": _init_std(fields)}},
    }


# Buffers some checkpoints carry: GPT-2's causal masks, older Llama's rotary frequencies. Both are recomputed.
_IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


class _Weights:
    """Takes tensors by Hugging Face name, with or without the model's prefix; what is left over is an error."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], prefix: str):
        kept = [name for name in tensors if not _IGNORED.search(name)]
        self.full_names = {name.removeprefix(prefix): name for name in kept}
        self.tensors = {name.removeprefix(prefix): tensors[name] for name in kept}
        self.prefix = prefix

    def take(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise UserError(f"the weights have no tensor {name} (nor {self.prefix}{name})")
        return self.tensors.pop(name).float()

    def optional(self, name: str) -> torch.Tensor | None:
        return self.take(name) if name in self.tensors else None

    def check_all_taken(self) -> None:
        if self.tensors:
            names = sorted(self.full_names[name] for name in self.tensors)
            raise UserError(
                f"the weights hold {len(names)} tensor(s) this architecture has no place for: "
                + ", ".join(names[:5])
                + (" ..." if len(names) > 5 else "")
            )


def _output(weights: _Weights, state: dict[str, torch.Tensor], tied: bool) -> None:
    head = weights.optional("lm_head.weight")
    if tied:
        if head is not None and not torch.equal(head, state["token_embedding.weight"]):
            raise UserError("tie_word_embeddings is true but lm_head.weight differs from the token embedding")
    elif head is None:
        raise UserError("tie_word_embeddings is false but the weights have no lm_head.weight")
    else:
        state["output.weight"] = head


def _gpt2_weights(weights: _Weights, n_layer: int) -> dict[str, torch.Tensor]:
    state = {
        "token_embedding.weight": weights.take("wte.weight"),
        "position_embedding.weight": weights.take("wpe.weight"),
        "final_norm.weight": weights.take("ln_f.weight"),
        "final_norm.bias": weights.take("ln_f.bias"),
    }
    for index in range(n_layer):
        hf, ours = f"h.{index}", f"blocks.{index}"
        # GPT-2's Conv1D stores [in, out]; the fused query/key/value projection splits in three.
        query, key, value = weights.take(f"{hf}.attn.c_attn.weight").T.chunk(3)
        query_bias, key_bias, value_bias = weights.take(f"{hf}.attn.c_attn.bias").chunk(3)
        state.update(
            {
                f"{ours}.attention_norm.weight": weights.take(f"{hf}.ln_1.weight"),
                f"{ours}.attention_norm.bias": weights.take(f"{hf}.ln_1.bias"),
                f"{ours}.mlp_norm.weight": weights.take(f"{hf}.ln_2.weight"),
                f"{ours}.mlp_norm.bias": weights.take(f"{hf}.ln_2.bias"),
                f"{ours}.attention.query.weight": query,
                f"{ours}.attention.key.weight": key,
                f"{ours}.attention.value.weight": value,
                f"{ours}.attention.query.bias": query_bias,
                f"{ours}.attention.key.bias": key_bias,
                f"{ours}.attention.value.bias": value_bias,
                f"{ours}.attention.output.weight": weights.take(f"{hf}.attn.c_proj.weight").T,
                f"{ours}.attention.output.bias": weights.take(f"{hf}.attn.c_proj.bias"),
                f"{ours}.mlp.input.weight": weights.take(f"{hf}.mlp.c_fc.weight").T,
                f"{ours}.mlp.input.bias": weights.take(f"{hf}.mlp.c_fc.bias"),
                f"{ours}.mlp.output.weight": weights.take(f"{hf}.mlp.c_proj.weight").T,
                f"{ours}.mlp.output.bias": weights.take(f"{hf}.mlp.c_proj.bias"),
            }
        )
    return state


def _llama_weights(weights: _Weights, n_layer: int) -> dict[str, torch.Tensor]:
    state = {
        "token_embedding.weight": weights.take("embed_tokens.weight"),
        "final_norm.weight": weights.take("norm.weight"),
    }
    projections = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}
    mlp = {"gate": "gate_proj", "input": "up_proj", "output": "down_proj"}
    for index in range(n_layer):
        hf, ours = f"layers.{index}", f"blocks.{index}"
        state[f"{ours}.attention_norm.weight"] = weights.take(f"{hf}.input_layernorm.weight")
        state[f"{ours}.mlp_norm.weight"] = weights.take(f"{hf}.post_attention_layernorm.weight")
        for group, names, hf_group in ((f"{ours}.attention", projections, "self_attn"), (f"{ours}.mlp", mlp, "mlp")):
            for name, hf_name in names.items():
                state[f"{group}.{name}.weight"] = weights.take(f"{hf}.{hf_group}.{hf_name}.weight")
                if (bias := weights.optional(f"{hf}.{hf_group}.{hf_name}.bias")) is not None:
                    state[f"{group}.{name}.bias"] = bias
    return state
