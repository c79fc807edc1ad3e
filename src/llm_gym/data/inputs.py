"""What ``--input`` names, in one fixed order, and the part of it one shard of a tokenize job reads.

Inputs are files, directories (searched recursively) and Hugging Face ``datasets`` directories written by
``save_to_disk``. The order is the order given; a directory contributes its files sorted by path (compared
directory by directory), a ``save_to_disk`` directory its Arrow files in the order its ``state.json`` lists.

Shards: the inputs, back to back, are a line of bytes (each file as long as it is on disk). Shard ``i`` of
``N`` reads from byte ``i·T/N`` to byte ``(i+1)·T/N``, each boundary moved forward to the next place a file
can be split: anywhere in a plain JSON Lines file (a line belongs to the shard its first byte falls in), at
row groups of parquet files and record batches of Arrow files, and only between files for compressed and
``.txt`` files. Shards are contiguous and in order, so shard 0, 1, ... N-1 back to back are the whole input
in its order: merged, they are byte for byte what one tokenize run writes.
"""

import bisect
import fnmatch
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_gym.data import columnar
from llm_gym.data.documents import Block, ColumnBlock, located, parse_block, read_blocks, read_line_range
from llm_gym.errors import UserError

# Longest suffix first, so ".jsonl.gz" is not taken for ".gz" of something else.
FORMATS = {
    ".jsonl.zst": "jsonl.zst",
    ".json.zst": "jsonl.zst",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "txt",
}
INPUT_SUFFIXES = tuple(FORMATS)
HF_STATE_FILE = "state.json"
HF_DATASET_DICT_FILE = "dataset_dict.json"


def input_format(path: Path) -> str | None:
    return next((kind for suffix, kind in FORMATS.items() if path.name.endswith(suffix)), None)


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str
    size: int


@dataclass(frozen=True)
class Piece:
    """The part of one input a shard reads: the units whose split points lie in ``[start, end)``."""

    file: InputFile
    start: int = 0
    end: float = float("inf")

    @property
    def is_whole_file(self) -> bool:
        return self.start == 0 and self.end == float("inf")


def find_input_files(inputs: Sequence[str | Path], pattern: str | None = None) -> list[InputFile]:
    """Every input file, in order; ``pattern`` (a glob, ``*`` crossing ``/``) filters the files of directories."""
    if not inputs:
        raise UserError("no input files given")
    paths = [Path(given) for given in inputs]
    if pattern is not None and not any(path.is_dir() for path in paths):
        raise UserError(f"--pattern {pattern!r} selects files in directories, but no --input is a directory")
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            in_directory = _files_in_directory(path, pattern)
            if not in_directory:
                wanted = f"matching --pattern {pattern!r}" if pattern else f"ending in {', '.join(INPUT_SUFFIXES)}"
                raise UserError(f"{path}: no input files in this directory {wanted}")
            found.extend(in_directory)
        elif input_format(path) is None:
            raise UserError(f"{path}: unsupported input (expected a directory or one of {', '.join(INPUT_SUFFIXES)})")
        elif not path.is_file():
            raise UserError(f"{path}: no such file")
        else:
            found.append(path)
    seen: dict[Path, Path] = {}
    for path in found:
        first = seen.setdefault(path.resolve(), path)
        if first is not path:
            raise UserError(f"{path}: given twice (also as {first}); each input is read once")
    return [InputFile(path, input_format(path) or "", path.stat().st_size) for path in found]


def _files_in_directory(root: Path, pattern: str | None) -> list[Path]:
    """A directory's input files, sorted by path; hidden files and directories (``.cache``, ``.git``) are skipped."""
    groups: list[tuple[tuple[str, ...], list[Path]]] = []
    for directory, subdirectories, names in os.walk(root):
        here = Path(directory)
        if (here / HF_DATASET_DICT_FILE).is_file():
            raise UserError(
                f"{here}: a Hugging Face DatasetDict (splits in subdirectories): give one split's directory as "
                f"--input, e.g. {here / _first_split(here / HF_DATASET_DICT_FILE)}"
            )
        relative = here.relative_to(root).parts
        if (here / HF_STATE_FILE).is_file():
            subdirectories.clear()
            groups.append((relative, _hf_dataset_files(here)))
            continue
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in names:
            if not name.startswith(".") and input_format(Path(name)) is not None:
                groups.append(((*relative, name), [here / name]))
    groups.sort(key=lambda group: group[0])
    files = [path for _, paths in groups for path in paths]
    if pattern is not None:
        files = [path for path in files if fnmatch.fnmatchcase(path.relative_to(root).as_posix(), pattern)]
    return files


def _first_split(dataset_dict: Path) -> str:
    try:
        splits = json.loads(dataset_dict.read_text(encoding="utf-8")).get("splits")
        return str(splits[0])
    except (ValueError, AttributeError, TypeError, IndexError, KeyError):
        return "train"


def _hf_dataset_files(directory: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory, as its ``state.json`` lists them (plain JSON, read as data)."""
    state_path = directory / HF_STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{state_path}: not a Hugging Face dataset state file ({error})") from error
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{state_path}: no '_data_files' list; is {directory} a directory written by save_to_disk?")
    files = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise UserError(f"{state_path}: data file {name!r} is not the name of a file in {directory}")
        if not name.endswith(".arrow"):
            raise UserError(f"{state_path}: data file {name!r} is not an .arrow file")
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path}: no such file (listed in {state_path})")
        files.append(path)
    return files


def plan_shard(files: Sequence[InputFile], num_shards: int = 1, shard_index: int = 0) -> list[Piece]:
    """The pieces of ``files`` that shard ``shard_index`` of ``num_shards`` reads, in order (see the module doc)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard_index {shard_index} is out of range for --num_shards {num_shards}")
    starts, total = [], 0
    for file in files:
        starts.append(total)
        total += file.size
    begin = _boundary(files, starts, shard_index * total // num_shards)
    # The last shard also takes what starts at the very end (empty files there).
    end = (
        total + 1
        if shard_index == num_shards - 1
        else _boundary(files, starts, (shard_index + 1) * total // num_shards)
    )
    pieces = []
    for file, file_start in zip(files, starts, strict=True):
        if not max(begin, file_start) < min(end, file_start + max(file.size, 1)):
            continue
        # Every split point lies before the file's end: a piece reaching it reads the file to its end.
        local_start, local_end = max(begin - file_start, 0), end - file_start
        pieces.append(Piece(file, local_start, float("inf") if local_end >= file.size else local_end))
    return pieces


def _boundary(files: Sequence[InputFile], starts: list[int], position: int) -> int:
    """``position`` moved forward to the next split point of the file it falls in."""
    index = bisect.bisect_right(starts, position) - 1
    if index < 0 or position == starts[index]:
        return position
    file, offset = files[index], position - starts[index]
    if offset >= file.size:
        return position
    if file.format == "jsonl":
        return position
    later = [point for point in _split_points(file) if point >= offset]
    return starts[index] + (later[0] if later else file.size)


def _split_points(file: InputFile) -> list[int]:
    if file.format == "parquet":
        return columnar.parquet_split_points(file.path, file.size)
    if file.format == "arrow":
        return columnar.arrow_split_points(file.path)
    return [0]


def read_pieces(
    pieces: Sequence[Piece], text_key: str, on_bytes_read: Callable[[int], None] = lambda count: None
) -> Iterator[Block | ColumnBlock]:
    """The blocks of ``pieces``, in order."""
    for piece in pieces:
        path, kind = piece.file.path, piece.file.format
        if kind == "parquet":
            yield from columnar.read_parquet(path, text_key, piece.start, piece.end, on_bytes_read)
        elif kind == "arrow":
            yield from columnar.read_arrow(path, text_key, piece.start, piece.end, on_bytes_read)
        elif piece.is_whole_file:
            yield from read_blocks(path, on_bytes_read)
        else:  # only plain JSON Lines files are split by bytes
            yield from read_line_range(path, piece.start, int(min(piece.end, piece.file.size)), on_bytes_read)


def iter_texts(inputs: Sequence[str | Path], text_key: str, pattern: str | None = None) -> Iterator[str]:
    """Every document's text, in order; the first problem stops with a :class:`UserError`."""
    for block in read_pieces(plan_shard(find_input_files(inputs, pattern)), text_key):
        texts, problems = parse_block(block, text_key)
        if problems:
            raise UserError(str(located(problems[0])))
        yield from texts
