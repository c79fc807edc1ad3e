"""Weights and config of a ``DecoderLM`` in Hugging Face ``transformers`` form: GPT-2 or Llama.

``GPT2LMHeadModel`` takes learned positions, LayerNorm and the GELU MLP with one head per key/value head.
Biases it always has: a model without them exports zeros, which computes the same. ``LlamaForCausalLM``
takes RoPE, RMSNorm and the SwiGLU MLP, with or without biases and with grouped-query attention. Anything
else raises ``UserError``. ``transformers`` is an optional dependency (``pip install llm_gym[hf]``).
"""

from typing import Any

import torch

from llm_gym.errors import UserError
from llm_gym.models.attention import ReferenceAttention, SDPAttention
from llm_gym.models.decoder import DecoderLM
from llm_gym.models.mlp import GELUMLP, SwiGLUMLP
from llm_gym.models.norms import LayerNorm, RMSNorm
from llm_gym.models.positional import Llama3RopeScaling


def to_hf(model: DecoderLM, eos_token_id: int | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(transformers config, state_dict)`` for ``GPT2LMHeadModel`` or ``LlamaForCausalLM``, whichever fits.

    ``eos_token_id`` (the tokenizer's end of text) becomes the config's bos and eos token.
    """
    try:
        import transformers
    except ImportError as error:
        raise UserError("exporting to Hugging Face needs transformers: pip install 'llm_gym[hf]'") from error
    parts = _describe(model)
    if parts == ("learned", LayerNorm, GELUMLP) and model.n_head_kv == model.n_head:
        return _gpt2_config(transformers, model, eos_token_id), _gpt2_state_dict(model)
    if parts == ("rope", RMSNorm, SwiGLUMLP):
        return _llama_config(transformers, model, eos_token_id), _llama_state_dict(model)
    positional, norm, mlp = parts
    raise UserError(
        "this model cannot be expressed in transformers: GPT2LMHeadModel needs positional: learned, LayerNorm, "
        "GELUMLP and n_head_kv = n_head; LlamaForCausalLM needs positional: rope, RMSNorm and SwiGLUMLP; "
        f"the model has positional: {positional}, {norm.__name__}, {mlp.__name__}, "
        f"n_head {model.n_head}, n_head_kv {model.n_head_kv}"
    )


def _describe(model: DecoderLM) -> tuple[str, type, type]:
    if not isinstance(model, DecoderLM):
        raise UserError(f"only DecoderLM models export to transformers, not {type(model).__name__}")
    block = model.blocks[0]
    kernel = block.attention.kernel
    if not isinstance(kernel, SDPAttention | ReferenceAttention):
        raise UserError(f"attention kernel {type(kernel).__name__} has no transformers equivalent")
    positional = "learned" if model.position_embedding is not None else "rope"
    return positional, type(block.attention_norm), type(block.mlp)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, also from an FSDP2 shard."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _bias_or_zeros(linear: torch.nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return _full(linear.bias)
    return torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)


def _output_weight(model: DecoderLM) -> torch.Tensor:
    return _full(model.token_embedding.weight if model.output is None else model.output.weight)


def _gpt2_config(transformers: Any, model: DecoderLM, eos_token_id: int | None) -> Any:
    mlp, dropout = model.blocks[0].mlp, model.embedding_dropout.p
    return transformers.GPT2Config(
        vocab_size=model.vocab_size,
        n_positions=model.sequence_length,
        n_embd=model.dim,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_inner=mlp.input.out_features,
        activation_function="gelu_new" if mlp.approximate == "tanh" else "gelu",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=model.final_norm.eps,
        tie_word_embeddings=model.tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        architectures=["GPT2LMHeadModel"],
    )


def _layer_norm(prefix: str, norm: LayerNorm) -> dict[str, torch.Tensor]:
    bias = _full(norm.bias) if norm.bias is not None else torch.zeros_like(_full(norm.weight))
    return {f"{prefix}.weight": _full(norm.weight), f"{prefix}.bias": bias}


def _gpt2_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    # GPT-2's Conv1D stores weights as [in, out]: the transpose of nn.Linear's.
    state = {
        "transformer.wte.weight": _full(model.token_embedding.weight),
        "transformer.wpe.weight": _full(model.position_embedding.weight),
        **_layer_norm("transformer.ln_f", model.final_norm),
        "lm_head.weight": _output_weight(model),
    }
    for index, block in enumerate(model.blocks):
        prefix, attention, mlp = f"transformer.h.{index}", block.attention, block.mlp
        projections = (attention.query, attention.key, attention.value)
        state.update(
            {
                **_layer_norm(f"{prefix}.ln_1", block.attention_norm),
                **_layer_norm(f"{prefix}.ln_2", block.mlp_norm),
                f"{prefix}.attn.c_attn.weight": torch.cat([_full(p.weight) for p in projections]).T.contiguous(),
                f"{prefix}.attn.c_attn.bias": torch.cat([_bias_or_zeros(p) for p in projections]),
                f"{prefix}.attn.c_proj.weight": _full(attention.output.weight).T.contiguous(),
                f"{prefix}.attn.c_proj.bias": _bias_or_zeros(attention.output),
                f"{prefix}.mlp.c_fc.weight": _full(mlp.input.weight).T.contiguous(),
                f"{prefix}.mlp.c_fc.bias": _bias_or_zeros(mlp.input),
                f"{prefix}.mlp.c_proj.weight": _full(mlp.output.weight).T.contiguous(),
                f"{prefix}.mlp.c_proj.bias": _bias_or_zeros(mlp.output),
            }
        )
    return state


def _llama_config(transformers: Any, model: DecoderLM, eos_token_id: int | None) -> Any:
    block = model.blocks[0]
    has_bias = block.attention.query.bias is not None
    return transformers.LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.dim,
        intermediate_size=block.mlp.input.out_features,
        num_hidden_layers=model.n_layer,
        num_attention_heads=model.n_head,
        num_key_value_heads=model.n_head_kv,
        head_dim=model.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.sequence_length,
        rms_norm_eps=model.final_norm.eps,
        rope_theta=block.attention.rotary.theta,
        rope_scaling=_rope_scaling(block.attention.rotary.scaling),
        attention_bias=has_bias,
        mlp_bias=has_bias,
        # Llama has no embedding or residual dropout; only attention dropout carries over.
        attention_dropout=model.embedding_dropout.p,
        tie_word_embeddings=model.tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        architectures=["LlamaForCausalLM"],
    )


def _rope_scaling(scaling: Llama3RopeScaling | None) -> dict[str, Any] | None:
    return None if scaling is None else {"rope_type": "llama3", **scaling.model_dump()}


def _linear(prefix: str, linear: torch.nn.Linear) -> dict[str, torch.Tensor]:
    state = {f"{prefix}.weight": _full(linear.weight)}
    if linear.bias is not None:
        state[f"{prefix}.bias"] = _full(linear.bias)
    return state


def _llama_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    state = {
        "model.embed_tokens.weight": _full(model.token_embedding.weight),
        "model.norm.weight": _full(model.final_norm.weight),
        "lm_head.weight": _output_weight(model),
    }
    for index, block in enumerate(model.blocks):
        prefix, attention, mlp = f"model.layers.{index}", block.attention, block.mlp
        state.update(
            {
                f"{prefix}.input_layernorm.weight": _full(block.attention_norm.weight),
                f"{prefix}.post_attention_layernorm.weight": _full(block.mlp_norm.weight),
                **_linear(f"{prefix}.self_attn.q_proj", attention.query),
                **_linear(f"{prefix}.self_attn.k_proj", attention.key),
                **_linear(f"{prefix}.self_attn.v_proj", attention.value),
                **_linear(f"{prefix}.self_attn.o_proj", attention.output),
                **_linear(f"{prefix}.mlp.gate_proj", mlp.gate),
                **_linear(f"{prefix}.mlp.up_proj", mlp.input),
                **_linear(f"{prefix}.mlp.down_proj", mlp.output),
            }
        )
    return state
