"""Loading: find the checkpoint to resume from, check it thoroughly, then restore state in place.

Every problem with the files on disk becomes a ``UserError`` naming the directory and what is wrong,
raised identically on every rank, before DCP is asked to read anything.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.stateful import Stateful

from llm_gym.checkpointing.integrity import fingerprint_problems
from llm_gym.checkpointing.manager import FORMAT_VERSION, LATEST_FILE, META_FILE, first_failure
from llm_gym.checkpointing.state import OPTIONAL_STATES, ModelState, OptimizerState, RNGState
from llm_gym.checkpointing.storage import (
    DCP_METADATA_FILE,
    SafeFileSystemReader,
    WeightsOnlyLoadPlanner,
    read_dcp_metadata,
)
from llm_gym.errors import UserError
from llm_gym.parallel import collectives

logger = logging.getLogger(__name__)

_LISTED = 5


def resolve_resume(resume: str, checkpoint_root: Path) -> Path | None:
    """``none`` → None; ``auto`` → the checkpoint ``latest`` names, or None when there is none yet;
    anything else → that checkpoint directory. The directory returned is checked to be complete."""
    if resume == "none":
        return None
    if resume == "auto":
        latest = Path(checkpoint_root) / LATEST_FILE
        if not latest.is_file():
            if collectives.rank() == 0:
                logger.warning("--resume auto: no checkpoint in %s yet; starting from scratch", checkpoint_root)
            return None
        try:
            name = latest.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        if not name or "/" in name or name.startswith("."):
            found = "bytes that are not UTF-8 text" if name is None else repr(name)
            raise UserError(f"{latest} is corrupted: it should name a checkpoint directory, found {found}")
        checkpoint_dir = latest.parent / name
    else:
        checkpoint_dir = Path(resume)
    read_checkpoint_meta(checkpoint_dir)
    return checkpoint_dir


def find_checkpoint(path: Path) -> Path:
    """The checkpoint directory ``path`` means: itself (a ``step_<N>`` directory), or the checkpoint that
    ``latest`` names when ``path`` is a ``checkpoints/`` directory or an experiment directory holding one."""
    path = Path(path)
    for checkpoint_root in (path, path / "checkpoints"):
        if (checkpoint_root / LATEST_FILE).is_file():
            return resolve_resume("auto", checkpoint_root)
    return path


def read_checkpoint_meta(checkpoint_dir: Path) -> dict[str, Any]:
    """llm_gym's metadata of a checkpoint, after checking the directory is a complete checkpoint."""
    if not checkpoint_dir.exists():
        raise UserError(f"checkpoint directory {checkpoint_dir} does not exist")
    if not checkpoint_dir.is_dir():
        raise UserError(f"checkpoint path {checkpoint_dir} is not a directory")
    if not (checkpoint_dir / DCP_METADATA_FILE).is_file():
        raise UserError(
            f"{checkpoint_dir} is not a complete checkpoint: it has no DCP {DCP_METADATA_FILE} file "
            "(a save that did not finish, or not a checkpoint directory)"
        )
    meta_path = checkpoint_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{checkpoint_dir} is not a complete llm_gym checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{meta_path} is corrupted: not valid JSON ({error})") from None
    required = ("format_version", "step", "files")
    if not isinstance(meta, dict) or any(key not in meta for key in required):
        raise UserError(f"{meta_path} is corrupted: it must be a JSON object with {', '.join(required)}")
    if not _is_fingerprint_table(meta["files"]):
        raise UserError(f"{meta_path} is corrupted: 'files' must map each file name to its bytes and crc32")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"{checkpoint_dir} has checkpoint format {meta['format_version']}; "
            f"this llm_gym reads format {FORMAT_VERSION}"
        )
    return meta


def _is_fingerprint_table(files: Any) -> bool:
    return isinstance(files, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("crc32"), int)
        for entry in files.values()
    )


def _read_dcp_metadata(checkpoint_dir: Path, fingerprinted: set[str]) -> Metadata:
    path = checkpoint_dir / DCP_METADATA_FILE
    try:
        metadata = read_dcp_metadata(checkpoint_dir)
    except Exception as error:  # whatever unpickling damaged or foreign bytes raises
        raise UserError(f"{path} is corrupted: {error}") from None
    if unlisted := sorted({info.relative_path for info in metadata.storage_data.values()} - fingerprinted):
        raise UserError(f"{path} is corrupted: it refers to files {META_FILE} does not list: {_listed(unlisted)}")
    return metadata


def _saved_keys(dcp_metadata: Metadata, name: str) -> dict[str, Any]:
    """The checkpoint's entries under the top-level state ``name``, without the ``name.`` prefix."""
    prefix = f"{name}."
    return {
        key[len(prefix) :]: value for key, value in dcp_metadata.state_dict_metadata.items() if key.startswith(prefix)
    }


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def tensor_shapes(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items() if hasattr(value, "shape")}


def shapes_on_every_rank(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``tensor_shapes`` of the model all ranks hold together: under pipeline parallelism each holds only its
    stages' parameters."""
    shapes: dict[str, tuple[int, ...]] = {}
    for rank_shapes in collectives.all_gather_objects(tensor_shapes(state_dict)):
        shapes.update(rank_shapes)
    return shapes


def model_differences(current: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]]) -> list[str]:
    """Parameter names and shapes that differ between a model and saved weights, readable and abridged."""
    differences = []
    if missing := sorted(current.keys() - saved.keys()):
        differences.append(f"not in the checkpoint: {_listed(missing)}")
    if unexpected := sorted(saved.keys() - current.keys()):
        differences.append(f"not in this model: {_listed(unexpected)}")
    reshaped = sorted(key for key in current.keys() & saved.keys() if current[key] != saved[key])
    if reshaped:
        differences.append(
            "different shapes: "
            + _listed([f"{key} (checkpoint {list(saved[key])}, model {list(current[key])})" for key in reshaped])
        )
    return differences


def _check_compatible(checkpoint_dir: Path, state: dict[str, Stateful], dcp_metadata: Metadata) -> None:
    for name, value in state.items():
        saved = _saved_keys(dcp_metadata, name)
        if not saved and name not in dcp_metadata.state_dict_metadata:
            raise UserError(f"checkpoint {checkpoint_dir} has no '{name}' state")
        saved_shapes = {key: tuple(entry.size) for key, entry in saved.items() if hasattr(entry, "size")}
        if isinstance(value, ModelState) and (
            differences := model_differences(shapes_on_every_rank(value.state_dict()), saved_shapes)
        ):
            raise UserError(
                f"checkpoint {checkpoint_dir} was written by an incompatible model: " + "; ".join(differences)
            )
        if isinstance(value, OptimizerState) and (missing := value.missing_state(set(saved))):
            raise UserError(
                f"checkpoint {checkpoint_dir} holds the state of another optimizer than the configured one (its "
                f"type, or a setting that shapes its state such as SGD's momentum, changed): the checkpoint has no "
                f"{_listed(missing)}; resume with the checkpoint's optimizer, or start a new run from its weights "
                "with checkpointing.warm_start_from"
            )
        if isinstance(value, RNGState) and (note := value.choose_source(set(saved))):
            logger.warning(note)


def load_checkpoint(checkpoint_dir: Path, state: dict[str, Stateful]) -> dict[str, Any]:
    """Restore ``state`` (a subset of what was saved, e.g. only ``{"model": ModelState(model)}`` for a warm
    start) from ``checkpoint_dir`` in place, on every rank. Returns the checkpoint's llm_gym metadata."""
    checkpoint_dir = Path(checkpoint_dir)
    meta = read_checkpoint_meta(checkpoint_dir)
    if problems := fingerprint_problems(checkpoint_dir, meta["files"]):
        raise UserError(f"checkpoint {checkpoint_dir} is corrupted: {_listed(problems)}")
    dcp_metadata = _read_dcp_metadata(checkpoint_dir, set(meta["files"]))
    state = {
        name: value for name, value in state.items() if name not in OPTIONAL_STATES or _saved_keys(dcp_metadata, name)
    }
    _check_compatible(checkpoint_dir, state, dcp_metadata)
    try:
        with collectives.single_process_quietly():
            dcp.load(state, storage_reader=SafeFileSystemReader(checkpoint_dir), planner=WeightsOnlyLoadPlanner())
    except (Exception, CheckpointException) as error:
        raise UserError(f"checkpoint {checkpoint_dir} could not be loaded: {_root_cause(error)}") from None
    return meta


def _root_cause(error: BaseException) -> str:
    """One line from the first failing rank's original exception, without DCP's traceback."""
    _, error = first_failure(error)
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
