"""Sharded checkpoints with torch.distributed.checkpoint: save, exact resume, warm start."""

from llm_gym.checkpointing.loading import load_checkpoint, read_checkpoint_meta, resolve_resume
from llm_gym.checkpointing.manager import LATEST_FILE, META_FILE, CheckpointManager
from llm_gym.checkpointing.state import (
    ModelState,
    NonFiniteWeightsError,
    OptimizerState,
    RNGState,
    SchedulerState,
    assert_finite,
    training_state,
)
from llm_gym.checkpointing.warm_start import load_model_weights

__all__ = [
    "LATEST_FILE",
    "META_FILE",
    "CheckpointManager",
    "ModelState",
    "NonFiniteWeightsError",
    "OptimizerState",
    "RNGState",
    "SchedulerState",
    "assert_finite",
    "load_checkpoint",
    "load_model_weights",
    "read_checkpoint_meta",
    "resolve_resume",
    "training_state",
]
