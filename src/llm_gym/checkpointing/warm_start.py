"""Warm start: take a model's weights, and nothing else, from a checkpoint or a consolidated weights file.

The optimizer, schedule, data position and counters start fresh: fine-tuning and continued pretraining.
A consolidated file is a ``.safetensors`` file or a ``torch.save`` of a flat ``{name: tensor}`` dict, with
llm_gym's parameter names; every rank reads it and keeps its own shard.
"""

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from llm_gym.checkpointing.loading import (
    find_checkpoint,
    load_checkpoint,
    model_differences,
    shapes_on_every_rank,
    tensor_shapes,
)
from llm_gym.checkpointing.state import ModelState
from llm_gym.errors import UserError

TORCH_SAVE_SUFFIXES = (".pt", ".pth", ".bin")
IMPORTED_WEIGHTS_FILE = "model.safetensors"
"""A directory holding this file (what ``llm_gym import_hf`` writes) warm-starts from it."""


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise UserError(f"{path} is not a readable safetensors file: {error}") from None
    if path.suffix not in TORCH_SAVE_SUFFIXES:
        raise UserError(
            f"{path}: warm start reads a checkpoint directory, a .safetensors file, "
            f"or a torch.save file ({', '.join(TORCH_SAVE_SUFFIXES)})"
        )
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path} could not be read as weights: {reason}") from None
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise UserError(f"{path} must hold a flat dict of parameter name → tensor")
    return weights


def load_model_weights(model: nn.Module, source: Path) -> None:
    """Load ``model``'s weights (plain, DDP or FSDP2) from ``source``: a checkpoint directory, a ``checkpoints/``
    or experiment directory (the checkpoint ``latest`` names), an ``import_hf`` output directory, or a weights file."""
    source = Path(source)
    if source.is_dir() and (source / IMPORTED_WEIGHTS_FILE).is_file():
        source = source / IMPORTED_WEIGHTS_FILE
    elif source.is_dir():
        load_checkpoint(find_checkpoint(source), {"model": ModelState(model)})
        return
    if not source.is_file():
        raise UserError(f"warm start source {source} does not exist")
    weights = _read_weights_file(source)
    local = ModelState(model).state_dict()
    if differences := model_differences(shapes_on_every_rank(local), tensor_shapes(weights)):
        hint = (
            " (a Hugging Face model directory: convert it with llm_gym import_hf)"
            if (source.parent / "config.json").is_file()
            else ""
        )
        raise UserError(f"{source} holds the weights of an incompatible model{hint}: " + "; ".join(differences))
    # A pipeline rank's model holds only its stages' weights.
    local_weights = {name: tensor for name, tensor in weights.items() if name in local}
    set_model_state_dict(model, local_weights, options=StateDictOptions(full_state_dict=True))
