"""Reading documents from ``.jsonl``, ``.jsonl.gz`` and ``.txt`` files, streaming, with precise errors.

Files are read in blocks of whole lines, so the process that reads does little work and the processes
that tokenize also parse; a block knows the number of its first line, so every problem names its line.
"""

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llm_gym.errors import UserError

BLOCK_BYTES = 1 << 18
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt")


@dataclass(frozen=True)
class Block:
    """Whole lines of a JSONL file (``first_line`` counts from 1), or a whole ``.txt`` file (``first_line`` 0)."""

    path: str
    first_line: int
    data: bytes

    @property
    def is_whole_file(self) -> bool:
        return self.first_line == 0


@dataclass(frozen=True)
class Problem:
    """Why a document was rejected: ``reason`` names the kind (for counts), ``detail`` the specifics.

    ``line`` is 0 for a ``.txt`` file.
    """

    path: str
    line: int
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def check_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Every input must be an existing file with a supported suffix."""
    if not paths:
        raise UserError("no input files given")
    checked = []
    for path in map(Path, paths):
        if not path.name.endswith(INPUT_SUFFIXES):
            raise UserError(f"{path}: unsupported input (expected one of {', '.join(INPUT_SUFFIXES)})")
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        checked.append(path)
    return checked


def read_blocks(path: Path, on_bytes_read=lambda count: None) -> Iterator[Block]:
    """The blocks of one input; ``on_bytes_read`` hears how many bytes of the file (compressed) were read."""
    if path.name.endswith(".txt"):
        data = path.read_bytes()
        on_bytes_read(len(data))
        yield Block(str(path), 0, data)
        return
    with open(path, "rb") as raw:
        file: BinaryIO = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        line, position, unfinished = 1, 0, []  # unfinished: the pieces of a line not yet ended
        while True:
            try:
                chunk = file.read(BLOCK_BYTES)
            except (OSError, EOFError, zlib.error) as error:
                raise UserError(f"{path}: cannot decompress ({error})") from error
            on_bytes_read(raw.tell() - position)
            position = raw.tell()
            if not chunk:
                break
            end = chunk.rfind(b"\n") + 1
            if end == 0:  # inside a line longer than a block
                unfinished.append(chunk)
                continue
            data = b"".join([*unfinished, chunk[:end]])
            unfinished = [chunk[end:]]
            yield Block(str(path), line, data)
            line += data.count(b"\n")
        last = b"".join(unfinished)
        if last:
            yield Block(str(path), line, last)


def parse_block(block: Block, text_key: str) -> tuple[list[str], list[Problem]]:
    """The texts of a block and the problems of the lines that are not documents.

    Blank lines are not documents and not problems (files often end with one).
    """
    if block.is_whole_file:
        try:
            text = _decode(block.data)
            if not text:
                raise _Rejected("empty document")
        except _Rejected as rejected:
            return [], [Problem(block.path, 0, *rejected.args)]
        return [text], []
    texts, problems = [], []
    for number, raw_line in enumerate(block.data.split(b"\n"), start=block.first_line):
        if not raw_line.strip():
            continue
        try:
            texts.append(_text_of_json_line(_decode(raw_line), text_key))
        except _Rejected as rejected:
            problems.append(Problem(block.path, number, *rejected.args))
    return texts, problems


class _Rejected(Exception):
    """``args``: the reason, and optionally its detail."""


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Rejected("invalid UTF-8", f"at byte {error.start}") from None


def _text_of_json_line(line: str, text_key: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise _Rejected("malformed JSON", f"{error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise _Rejected("not a JSON object", f"got {type(record).__name__}")
    if text_key not in record:
        raise _Rejected(f"no key '{text_key}'", "set --text_key")
    text = record[text_key]
    if not isinstance(text, str):
        raise _Rejected(f"'{text_key}' is not a string", f"got {type(text).__name__}")
    if not text:
        raise _Rejected("empty document")
    # Only a \u escape can smuggle a lone surrogate into a string decoded from valid UTF-8.
    if "\\u" in line:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise _Rejected("invalid text", f"{error.reason} at character {error.start}") from None
    return text


def iter_texts(paths: Sequence[str | Path], text_key: str) -> Iterator[str]:
    """Every document's text, in order; the first problem stops with a :class:`UserError`."""
    for path in check_inputs(paths):
        for block in read_blocks(path):
            texts, problems = parse_block(block, text_key)
            if problems:
                raise UserError(str(problems[0]))
            yield from texts
