"""Per-block transformations applied before sharding: activation checkpointing, then ``torch.compile``.

Both act on ``model.blocks`` one block at a time (as torchtitan does), so FSDP2 units, recomputation
regions and compiled graphs all line up with transformer blocks.
"""

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
    """Compile each block in place (``nn.Module.compile``), keeping parameter names unchanged."""
    for block in model.blocks:
        block.compile()
