"""A trained model on one process, for sampling and export: rebuilt from the checkpoint's own config.

Whatever world size wrote the checkpoint, DCP reassembles whole tensors here; no process group is needed.
The saved config is data: the ``user_modules`` it lists are never imported, only those the caller names.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.checkpointing.loading import find_checkpoint, read_checkpoint_meta
from llm_gym.checkpointing.manager import META_FILE
from llm_gym.checkpointing.warm_start import load_model_weights
from llm_gym.config.loading import USER_MODULES_KEY, format_validation_error, import_modules
from llm_gym.data.tokenizers import BYTE_TOKENIZER, Tokenizer, load_tokenizer, tokenizer_exists
from llm_gym.errors import UserError
from llm_gym.inference.generation import check_sampling_settings, stream_tokens
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


class ModelSection(BaseModel):
    """A config's model section alone, validated without the rest of a run's config."""

    model: Component("model")


def _model_config(
    meta: dict[str, Any], checkpoint_dir: Path, user_modules: Sequence[str], registry: ResolverRegistry
) -> tuple[dict[str, Any], ComponentNode]:
    """The run's resolved config and its validated model node."""
    meta_path = checkpoint_dir / META_FILE
    resolved = meta.get("resolved_config")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("model"), dict):
        raise UserError(
            f"{meta_path} has no model config (resolved_config.model): "
            "only checkpoints written by `llm_gym run` can be loaded without a config"
        )
    section = {"model": resolved["model"]}
    try:
        return resolved, registry.validate(ModelSection, section).model
    except ValidationError as error:
        problem = format_validation_error(error, ModelSection, section, registry)
        if any(detail["type"] == "unknown_type_hint" for detail in error.errors()):
            raise UserError(
                f"the model saved in {meta_path} needs a component that is not registered: "
                f"{_user_modules_hint(resolved, user_modules)}\n{problem}"
            ) from None
        raise UserError(
            f"the run config saved in {meta_path} is not valid for this llm_gym (written by another version?): "
            f"{problem}"
        ) from None


def _user_modules_hint(resolved: dict[str, Any], given: Sequence[str]) -> str:
    """Which ``--user_modules`` to pass: the modules the run's config lists, shown by name and never imported."""
    recorded = resolved.get(USER_MODULES_KEY)
    names = [
        name
        for name in (recorded if isinstance(recorded, list) else [])
        if isinstance(name, str) and all(part.isidentifier() for part in name.split(".")) and name not in given
    ]
    if not names:
        return "pass the module that registers it with --user_modules MODULE"
    return (
        f"the run that wrote it imported {', '.join(names)}, and a checkpoint's modules are never imported "
        f"for you; if you trust that code, pass {' '.join(f'--user_modules {name}' for name in names)}"
    )


def load_trained_model(
    checkpoint_path: Path, device: torch.device | str = "cpu", user_modules: Sequence[str] = ()
) -> TrainedModel:
    """The model of a checkpoint (see ``find_checkpoint`` for the paths that name one), weights loaded.
    ``user_modules`` (imported from the current directory or ``sys.path``) register the components a model of
    the user's own needs. Raises ``UserError`` naming the problem for a missing, partial, corrupted or
    incompatible checkpoint, or one whose model needs a component no module registered."""
    checkpoint_dir = find_checkpoint(checkpoint_path)
    meta = read_checkpoint_meta(checkpoint_dir)
    registry = make_registry()
    import_modules(user_modules, Path.cwd(), "--user_modules", registry)
    resolved, node = _model_config(meta, checkpoint_dir, user_modules, registry)
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
    Bad settings and a prompt that is not text raise ``UserError`` here, before the first piece is asked for.
    """
    check_sampling_settings(max_new_tokens, temperature, top_k, top_p, seed)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # bytes a shell passed that are not UTF-8 arrive as lone surrogates
        raise UserError(f"the prompt is not valid UTF-8 text (at character {error.start})") from None
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
    return _text_pieces(tokenizer, prompt_ids, tokens)


def _text_pieces(tokenizer: Tokenizer, prompt_ids: list[int], tokens: Iterator[torch.Tensor]) -> Iterator[str]:
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
