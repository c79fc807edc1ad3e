"""A Hugging Face ``transformers`` model directory as llm_gym files: ``llm_gym import_hf``.

Reads ``config.json`` and the safetensors weights (``model.safetensors``, or the shards that
``model.safetensors.index.json`` lists), never a pickle (``pytorch_model.bin`` can run code when loaded), and
writes into the output directory:

- ``model.yaml``: the model section (``model: {type_hint: DecoderLM, config: ...}``), to compose into a config;
- ``model.safetensors``: the weights under llm_gym's parameter names, float32; the directory itself works as
  ``checkpointing.warm_start_from``;
- ``tokenizer.json``, when the model directory has one (``data.tokenizer``).

Everything is checked before anything is written, and the directory appears only when complete.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llm_gym.assembly import make_registry
from llm_gym.checkpointing.loading import model_differences, tensor_shapes
from llm_gym.checkpointing.warm_start import IMPORTED_WEIGHTS_FILE
from llm_gym.config.loading import format_validation_error
from llm_gym.data.tokenizers import load_tokenizer
from llm_gym.errors import UserError
from llm_gym.inference.hf_export import check_output_dir, publish_directory, refuse_overlap, temporary_dir
from llm_gym.inference.hf_import_conversion import from_hf_config
from llm_gym.inference.trained_model import ModelSection

MODEL_SECTION_FILE = "model.yaml"
TOKENIZER_FILE = "tokenizer.json"
_WEIGHTS_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")


@dataclass
class HFImport:
    output_dir: Path
    architecture: str
    parameters: int
    tokenizer_copied: bool


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path} is not a readable safetensors file: {error}") from None


def _shard_files(model_dir: Path) -> dict[str, list[str]]:
    """Shard file → the tensor names the index places in it, after checking every file name is a plain name here."""
    index_path = model_dir / _INDEX_FILE
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and isinstance(file, str) for name, file in weight_map.items()
    ):
        raise UserError(f"{index_path}: expected {{'weight_map': {{tensor name: shard file}}}}")
    shards: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if Path(file).name != file or file in ("", ".", "..") or not file.endswith(".safetensors"):
            raise UserError(f"{index_path}: shard {file!r} must be a .safetensors file name in {model_dir}")
        shards.setdefault(file, []).append(name)
    return shards


def read_hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory's safetensors weights, by name."""
    if (model_dir / _INDEX_FILE).is_file():
        tensors: dict[str, torch.Tensor] = {}
        for file, names in _shard_files(model_dir).items():
            shard = _load_safetensors(model_dir / file)
            if missing := sorted(set(names) - set(shard)):
                raise UserError(f"{model_dir / file} lacks {missing[0]}, which {_INDEX_FILE} places in it")
            if unlisted := sorted(set(shard) - set(names)):
                raise UserError(f"{model_dir / file} holds {unlisted[0]}, which {_INDEX_FILE} does not place there")
            tensors.update(shard)
        return tensors
    if (model_dir / _WEIGHTS_FILE).is_file():
        return _load_safetensors(model_dir / _WEIGHTS_FILE)
    pickled = [name for name in _PICKLED_WEIGHTS if (model_dir / name).exists()]
    if pickled:
        raise UserError(
            f"{model_dir} has only {pickled[0]}, a pickle, which can run code when loaded: import_hf reads "
            "safetensors only; save the model with transformers' save_pretrained(safe_serialization=True) first"
        )
    raise UserError(f"{model_dir} has no {_WEIGHTS_FILE} or {_INDEX_FILE}")


def _model_section(model_config: dict[str, Any], model_dir: Path, architecture: str) -> str:
    header = (
        f"# {architecture} imported from {model_dir} by llm_gym import_hf. Compose it into a training config\n"
        f"# (defaults: [this file]) and warm-start from its weights: checkpointing.warm_start_from: <this directory>.\n"
        "# sequence_length is the longest input the model takes; a shorter training.sequence_length is fine.\n"
        + (
            "# With rope it sizes nothing but generate's KV cache: lowering it to the length you use is safe.\n"
            if architecture == "LlamaForCausalLM"
            else ""
        )
    )
    body = yaml.safe_dump({"model": {"type_hint": "DecoderLM", "config": model_config}}, sort_keys=False)
    return header + body


def import_from_hf(model_dir: Path, output_dir: Path, force: bool = False) -> HFImport:
    """Convert ``model_dir`` into ``output_dir`` (refused when non-empty, unless ``force``)."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not model_dir.is_dir():
        raise UserError(f"model directory {model_dir} does not exist")
    refuse_overlap(output_dir, model_dir, "the model directory")
    check_output_dir(output_dir, force)
    imported = from_hf_config(_read_json(model_dir / "config.json"), str(model_dir / "config.json"))
    registry = make_registry()
    section = {"model": {"type_hint": "DecoderLM", "config": imported.model_config}}
    try:
        node = registry.validate(ModelSection, section).model
    except ValidationError as error:
        raise UserError(
            f"{model_dir / 'config.json'} maps to an invalid model: "
            f"{format_validation_error(error, ModelSection, section, registry)}"
        ) from None
    with torch.device("meta"):
        model = registry.build_component_by_config(node)
    weights = imported.convert_weights(read_hf_weights(model_dir))
    if differences := model_differences(tensor_shapes(model.state_dict()), tensor_shapes(weights)):
        raise UserError(f"the weights in {model_dir} do not fit its config.json: " + "; ".join(differences))
    tokenizer_path = model_dir / TOKENIZER_FILE
    if tokenizer_path.is_file():
        load_tokenizer(tokenizer_path, imported.model_config["vocab_size"])  # refuses a file llm_gym cannot use
    target = output_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_dir(target, "")
    try:
        (partial / MODEL_SECTION_FILE).write_text(
            _model_section(imported.model_config, model_dir, imported.architecture)
        )
        save_file(
            weights, partial / IMPORTED_WEIGHTS_FILE, metadata={"format": "pt", "architecture": imported.architecture}
        )
        if tokenizer_path.is_file():
            shutil.copyfile(tokenizer_path, partial / TOKENIZER_FILE)
        publish_directory(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    parameters = sum(tensor.numel() for tensor in weights.values())
    return HFImport(output_dir, imported.architecture, parameters, tokenizer_path.is_file())
