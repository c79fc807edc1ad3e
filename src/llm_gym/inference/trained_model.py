"""A trained model on one process, for sampling and export: rebuilt from the checkpoint's own config.

Whatever world size wrote the checkpoint, DCP reassembles whole tensors here; no process group is needed.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.checkpointing.loading import find_checkpoint, read_checkpoint_meta
from llm_gym.checkpointing.manager import META_FILE
from llm_gym.checkpointing.warm_start import load_model_weights
from llm_gym.config.loading import format_validation_error, import_user_modules
from llm_gym.data.tokenizers import BYTE_TOKENIZER, Tokenizer, load_tokenizer, tokenizer_exists
from llm_gym.errors import UserError
from llm_gym.inference.generation import stream_tokens
from llm_gym.models.contract import LanguageModel, as_language_model
from llm_gym.registry import Component, ComponentNode, ResolverRegistry


@dataclass
class TrainedModel:
    model: LanguageModel
    """In eval mode, on the device it was loaded to."""
    checkpoint_dir: Path
    step: int
    resolved_config: dict[str, Any]
    """The full resolved config of the run that wrote the checkpoint."""

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer the run trained with (``data.tokenizer``), checked to fit the model."""
        spec = str(self.resolved_config.get("data", {}).get("tokenizer", BYTE_TOKENIZER))
        if not tokenizer_exists(spec):
            where = "" if Path(spec).is_absolute() else f" (relative to {Path.cwd()})"
            raise UserError(
                f"the tokenizer this model was trained with, {spec}{where}, no longer exists: run from the "
                f"directory the training ran in, or put the tokenizer.json back at that path "
                f"(it is data.tokenizer in {self.checkpoint_dir / META_FILE})"
            )
        return load_tokenizer(spec, self.model.vocab_size)


class _ModelSection(BaseModel):
    model: Component("model")


def _model_config(
    meta: dict[str, Any], checkpoint_dir: Path, registry: ResolverRegistry
) -> tuple[dict[str, Any], ComponentNode]:
    """The run's resolved config and its validated model node."""
    resolved = meta.get("resolved_config")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("model"), dict):
        raise UserError(
            f"{checkpoint_dir / META_FILE} has no model config (resolved_config.model): "
            "only checkpoints written by `llm_gym run` can be loaded without a config"
        )
    import_user_modules(resolved, Path.cwd(), registry)
    section = {"model": resolved["model"]}
    try:
        return resolved, registry.validate(_ModelSection, section).model
    except ValidationError as error:
        raise UserError(
            f"the run config saved in {checkpoint_dir / META_FILE} is not valid for this llm_gym "
            f"(written by another version?): {format_validation_error(error, _ModelSection, section, registry)}"
        ) from None


def load_trained_model(checkpoint_path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model of a checkpoint (see ``find_checkpoint`` for the paths that name one), weights loaded.
    Raises ``UserError`` naming the problem for a missing, partial, corrupted or incompatible checkpoint."""
    checkpoint_dir = find_checkpoint(checkpoint_path)
    meta = read_checkpoint_meta(checkpoint_dir)
    registry = make_registry()
    resolved, node = _model_config(meta, checkpoint_dir, registry)
    with torch.device(device):
        model = as_language_model(registry.build_component_by_config(node))
    load_model_weights(model, checkpoint_dir)
    return TrainedModel(model.eval(), checkpoint_dir, meta["step"], resolved)


def stream_text(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> Iterator[str]:
    """The text that follows ``prompt``, piece by piece as tokens are sampled; stops at end of text.

    An empty prompt starts a new document (the end-of-text token). A piece is yielded only once it decodes
    to whole characters, so a character split across tokens (bytes of UTF-8) comes out in one piece.
    """
    device = next(model.parameters()).device
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    generator = torch.Generator(device).manual_seed(seed)
    tokens = stream_tokens(
        model,
        torch.tensor([prompt_ids], device=device),
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        eos_id=tokenizer.eos_id,
    )
    # Decoding the prompt with the new ids keeps what depends on the context (a BPE's leading space) right.
    prompt_text = tokenizer.decode(prompt_ids)
    new_ids: list[int] = []
    emitted = 0
    for token in tokens:
        if int(token) == tokenizer.eos_id:
            break
        new_ids.append(int(token))
        text = tokenizer.decode(prompt_ids + new_ids)[len(prompt_text) :]
        # An incomplete character decodes to U+FFFD until its last byte arrives.
        if len(text) > emitted and not text.endswith("\ufffd"):
            yield text[emitted:]
            emitted = len(text)
    if new_ids and (rest := tokenizer.decode(prompt_ids + new_ids)[len(prompt_text) + emitted :]):
        yield rest
