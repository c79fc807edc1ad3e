"""Model size and compute: parameter count, training FLOPs per token, and GPU peaks to measure MFU against."""

import re

import torch
from torch import nn

from llm_gym.models.contract import LanguageModel
from llm_gym.models.positional import LearnedPositionEmbedding


def num_parameters(model: nn.Module, exclude_position_embeddings: bool = False) -> int:
    """Every parameter counted once (tied embeddings once). Parameters of an FSDP2 shard count at full size.

    A model built on the meta device counts too: shapes without memory."""
    total = sum(parameter.numel() for parameter in model.parameters())
    if exclude_position_embeddings:
        total -= sum(
            parameter.numel()
            for module in model.modules()
            if isinstance(module, LearnedPositionEmbedding)
            for parameter in module.parameters()
        )
    return total


def flops_per_token(model: LanguageModel, sequence_length: int) -> int:
    """Training FLOPs (forward + backward) per token: 6·N + 12·L·H·Q·T (PaLM, appendix B).

    N is ``num_parameters(model, exclude_position_embeddings=True)``: every parameter once, tied embeddings
    once, learned position embeddings not at all (they are a lookup, no matmul), as nanoGPT counts. An untied
    input embedding is a lookup too but stays in N, as the pinned formula has it. L layers, H query heads,
    Q head dimension, T the sequence length (full, not causal-halved, attention).
    """
    n = num_parameters(model, exclude_position_embeddings=True)
    return 6 * n + 12 * model.n_layer * model.n_head * model.head_dim * sequence_length


def describe_model(model: LanguageModel, sequence_length: int) -> list[str]:
    """What ``llm_gym validate`` prints about the model."""
    total, without_positions = num_parameters(model), num_parameters(model, exclude_position_embeddings=True)
    lines = [f"model parameters: {total:,}"]
    if without_positions != total:
        lines[0] += f" ({without_positions:,} without position embeddings)"
    lines.append(f"training FLOPs per token: {flops_per_token(model, sequence_length):,} (6N + 12·L·H·Q·T)")
    return lines


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, matched against
# torch.cuda.get_device_name() without its "NVIDIA " prefix. A GPU not listed gets None, never a guess:
# an MFU against a wrong peak is worse than none. A MIG slice ("A100-SXM4-40GB MIG 1g.5gb") has a fraction
# of its GPU's compute that its name does not state, so it gets None too.
_DENSE_16BIT_PEAKS: tuple[tuple[str, float], ...] = (
    (r"A100\b.*", 312e12),  # SXM4 and PCIe
    (r"H100 PCIe.*", 756e12),
    (r"H100 NVL.*", 835e12),
    (r"H100 (80GB HBM3|SXM).*", 989e12),
    (r"H200 NVL.*", 835e12),
    (r"H200( \d+GB.*| SXM.*)?", 989e12),
    (r"GH200\b.*", 989e12),
    (r"L4", 121e12),
    (r"L40S", 362e12),
    (r"L40", 181e12),
    (r"A10", 125e12),
    (r"(GeForce )?RTX 4090", 165.2e12),
    (r"(GeForce )?RTX 3090", 71e12),
    (r"AMD Instinct MI300X", 1307.4e12),
)


def peak_flops_per_second(device_name: str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of one GPU for bf16/fp16 matmuls, or None when the GPU or dtype is not in the table.

    ``dtype`` is the dtype the run computes in; float32 (TF32 or not) has no peak in the table.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = device_name.strip().removeprefix("NVIDIA ").strip()
    if re.search(r"\bMIG\b", name, flags=re.IGNORECASE):
        return None
    for pattern, peak in _DENSE_16BIT_PEAKS:
        if re.fullmatch(pattern, name, flags=re.IGNORECASE):
            return peak
    return None
