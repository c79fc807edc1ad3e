"""DCP's file reader and load planner, made safe: nothing a checkpoint contains can run code on load.

DCP unpickles ``.metadata`` with plain ``pickle`` and non-tensor values with ``torch.load(weights_only=False)``;
here the first builds only DCP's own metadata classes (``_MetadataUnpickler``) and the second uses
``weights_only=True``. Tensor data DCP itself reads with ``torch.load(weights_only=True)``.

torch's own weights-only unpickler (``torch.serialization.safe_globals``) cannot read ``.metadata``: DCP writes it
with pickle protocol 4 (frames, ``STACK_GLOBAL``, memo opcodes), which that unpickler does not implement in any
torch release this package supports (2.6 to 2.13).
"""

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem

DCP_METADATA_FILE = ".metadata"

# The DCP classes a .metadata fills in field by field (BUILD), and every object it may refer to by name, as
# torch 2.6 to 2.13 write it: under the object's own module and name, never a dotted path through another
# module's attributes (``os.system`` is an attribute of DCP's metadata module too).
_DCP_CLASSES = (
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    TensorProperties,
    _StorageInfo,
)
_NAMED_OBJECTS = (
    *_DCP_CLASSES,
    _MEM_FORMAT_ENCODING,
    torch.Size,
    torch.serialization._get_layout,
    pathlib.PosixPath,
)
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(named.__module__, named.__qualname__): named for named in _NAMED_OBJECTS},
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


class _MetadataUnpickler(pickle._Unpickler):
    """Builds nothing but plain data and the allowed objects above.

    ``find_class`` is the only way a pickle reaches an object by name, and it hands out only those, so a call
    can only construct one of them. ``BUILD`` sets the attributes of the object beneath it: it may fill in an
    instance of a DCP class, and nothing else, or a crafted file could rewrite a class (``PosixPath``) or a
    shared object (an enum member) for the rest of the process. This is Python's own unpickler, not the C
    one, because the C one's ``BUILD`` cannot be checked.
    """

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it refers to {_quoted(f'{module}.{name}')}, which is not part of DCP metadata "
                "(refused; nothing was run)"
            )
        return found

    def load_build(self) -> None:
        target = self.stack[-2]
        if type(target) not in _DCP_CLASSES:
            what = f"the class {target.__qualname__}" if isinstance(target, type) else f"a {type(target).__name__}"
            raise pickle.UnpicklingError(f"it sets the attributes of {what}, not of DCP metadata (refused)")
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}


def read_dcp_metadata(checkpoint_dir: Path) -> Metadata:
    with (checkpoint_dir / DCP_METADATA_FILE).open("rb") as file:
        metadata = _MetadataUnpickler(file).load()
    if problem := _metadata_problem(metadata):
        raise pickle.UnpicklingError(problem)
    return metadata


def _metadata_problem(metadata: Any) -> str | None:
    """What makes ``metadata`` something other than DCP metadata, in the parts llm_gym reads before DCP does."""
    if not isinstance(metadata, Metadata):
        return f"it holds a {type(metadata).__name__}, not DCP metadata"
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict) or not all(
        isinstance(key, str) and (isinstance(entry, BytesStorageMetadata) or _is_tensor_entry(entry))
        for key, entry in entries.items()
    ):
        return "its state_dict_metadata is not a table of state-dict entries"
    storage = metadata.storage_data
    if not isinstance(storage, dict) or not all(
        isinstance(index, MetadataIndex) and isinstance(info, _StorageInfo) and isinstance(info.relative_path, str)
        for index, info in storage.items()
    ):
        return "its storage_data is not a table of storage locations"
    return None


def _is_tensor_entry(entry: Any) -> bool:
    return isinstance(entry, TensorStorageMetadata) and isinstance(entry.size, torch.Size)


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(pathlib.Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
