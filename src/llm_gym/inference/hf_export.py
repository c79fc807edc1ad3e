"""A checkpoint as a Hugging Face ``transformers`` model directory: ``config.json`` and ``model.safetensors``,
plus the tokenizer files when the run used a ``tokenizer.json``.

The directory is written under a temporary name and renamed when complete, so a failed export leaves
nothing that looks like a model.
"""

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_gym.checkpointing.loading import find_checkpoint
from llm_gym.data.tokenizers import HuggingFaceTokenizer
from llm_gym.errors import UserError
from llm_gym.inference.hf_conversion import to_hf
from llm_gym.inference.trained_model import load_trained_model
from llm_gym.outputs import overlap

_PARTIAL_PREFIX = ".tmp_"


@dataclass
class HFExport:
    output_dir: Path
    architecture: str
    checkpoint_dir: Path
    tokenizer_saved: bool
    """False for the byte tokenizer, which transformers has no class for."""


def check_output_dir(output_dir: Path, force: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output directory {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise UserError(f"output directory {output_dir} exists and is not empty; pass --force to replace it")


def refuse_overlap(output_dir: Path, kept: Path, what: str) -> None:
    """The export replaces ``output_dir`` whole (--force) or writes into it: neither may touch what it reads from
    nor the run's experiment directory."""
    if overlap(output_dir, kept):
        raise UserError(
            f"output directory {output_dir} is, contains or lies inside {what} {kept}: "
            "choose an --output_dir outside it"
        )


def _check_not_over_the_experiment(output_dir: Path, checkpoint_path: Path, checkpoint_dir: Path) -> None:
    refuse_overlap(output_dir, checkpoint_dir, "the checkpoint")
    refuse_overlap(output_dir, Path(checkpoint_path), "the checkpoint path")
    checkpoint_root = checkpoint_dir.resolve().parent
    if checkpoint_root.name == "checkpoints":  # the layout of `llm_gym run`: <experiment>/checkpoints/step_<N>
        refuse_overlap(output_dir, checkpoint_root.parent, "the checkpoint's experiment directory")


def _save_tokenizer(transformers: Any, tokenizer: HuggingFaceTokenizer, model_max_length: int, directory: Path) -> None:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer.path), model_max_length=model_max_length)
    # Like GPT-2: the end-of-text token also begins a text, as the exported config says.
    end_of_text = fast.convert_ids_to_tokens(tokenizer.eos_id)
    fast.eos_token = fast.bos_token = end_of_text
    fast.save_pretrained(directory)


def temporary_dir(beside: Path, role: str) -> Path:
    # A fresh name: a fixed one could be a directory of the user's, which clearing it would delete.
    return Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{role}{beside.name}.", dir=beside.parent))


def publish_directory(partial: Path, output_dir: Path) -> None:
    """Move the finished export into place; an existing ``output_dir`` (already cleared to go) is replaced."""
    if not output_dir.exists():
        os.replace(partial, output_dir)
        return
    replaced = temporary_dir(output_dir, "replaced_")  # empty: rename(2) may move a directory over it
    os.replace(output_dir, replaced)
    os.replace(partial, output_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def export_to_hf(
    checkpoint_path: Path, output_dir: Path, force: bool = False, user_modules: Sequence[str] = ()
) -> HFExport:
    """Write the model of a checkpoint (a ``step_<N>``, ``checkpoints/`` or experiment directory) to ``output_dir``,
    loadable with ``transformers.AutoModelForCausalLM.from_pretrained``. Refuses a non-empty ``output_dir``
    unless ``force``, and models that transformers cannot express. ``user_modules``: see ``load_trained_model``."""
    output_dir = Path(output_dir)
    checkpoint_dir = find_checkpoint(checkpoint_path)
    _check_not_over_the_experiment(output_dir, checkpoint_path, checkpoint_dir)
    check_output_dir(output_dir, force)
    trained = load_trained_model(checkpoint_dir, device="cpu", user_modules=user_modules)
    tokenizer = trained.load_tokenizer()
    if isinstance(tokenizer, HuggingFaceTokenizer):
        refuse_overlap(output_dir, tokenizer.path, "the run's tokenizer")
    hf_config, state_dict = to_hf(trained.model, eos_token_id=tokenizer.eos_id)
    import transformers  # to_hf has checked that it is installed

    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
    hf_model.load_state_dict(state_dict, strict=True)
    target = output_dir.resolve()  # has a name even when given as "."
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_dir(target, "")
    try:
        hf_model.save_pretrained(partial, safe_serialization=True)
        is_hf_tokenizer = isinstance(tokenizer, HuggingFaceTokenizer)
        if is_hf_tokenizer:
            _save_tokenizer(transformers, tokenizer, trained.model.sequence_length, partial)
        publish_directory(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return HFExport(output_dir, type(hf_model).__name__, trained.checkpoint_dir, is_hf_tokenizer)
