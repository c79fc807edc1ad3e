"""Transformations applied before sharding: ``torch.compile`` and activation checkpointing.

Both act on ``model.blocks`` one block at a time (as torchtitan does), so FSDP2 units, recomputation regions
and compiled graphs all line up with transformer blocks. A block is compiled first and checkpointed around its
compiled forward: the other order makes torch.compile trace the recomputation itself, which fails for
tensor-parallel blocks (torch 2.13). ``compile_model`` instead compiles the whole forward, checkpointing included.
"""

import functools

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from llm_gym.models.contract import LanguageModel


def apply_activation_checkpointing(model: LanguageModel, mode: str, every_k: int = 1) -> int:
    """Recompute activations of every block (``full``) or every k-th block (``every_k``) in backward.

    Returns the number of wrapped blocks. The wrapper hides its prefix from ``state_dict``, so checkpoints
    do not depend on this setting.
    """
    if mode == "none":
        return 0
    step = 1 if mode == "full" else every_k
    wrapped = 0
    for index, block in enumerate(model.blocks):
        if index % step == 0:
            model.blocks[index] = checkpoint_wrapper(block, preserve_rng_state=True)
            wrapped += 1
    return wrapped


def compile_blocks(model: LanguageModel) -> None:
    """Compile each block's ``forward`` in place, keeping parameter names unchanged; the hooks sharding adds
    later (FSDP2's gathers) run around the compiled graph, not in it."""
    for block in model.blocks:
        block.forward = _taking_own_input(torch.compile(block.forward))


def compile_model(model: LanguageModel) -> None:
    """Compile the model's ``forward`` in place, keeping parameter names unchanged: the embedding, every block,
    the final norm and the head in one ``torch.compile``, fused across their boundaries where nothing breaks the
    graph. The hooks sharding adds to the model itself run around it."""
    model.forward = torch.compile(model.forward)


def _taking_own_input(compiled_forward):
    @functools.wraps(compiled_forward)
    def forward(hidden: torch.Tensor, *args, **kwargs):
        # A view entering a compiled graph is replayed from its base. Where that base is a DTensor's local
        # tensor (the residual stream ``to_local`` hands the first tensor-parallel block), the gradient then
        # bypasses the DTensor's backward and fails in it (torch 2.13). A copy has no base.
        if hidden._is_view():
            hidden = hidden.clone()
        return compiled_forward(hidden, *args, **kwargs)

    return forward
