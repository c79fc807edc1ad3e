"""Documents in blocks, with precise errors: JSON Lines (plain, gzip, zstandard) and ``.txt`` files read here,
columns of parquet and Arrow files read by :mod:`llm_gym.data.columnar`.

Files are read in blocks of whole lines (or rows), so the process that reads does little work and the
processes that tokenize also parse; a block knows where it starts, so every problem names its line or row.
"""

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llm_gym.data.extras import import_data_extra
from llm_gym.errors import UserError

BLOCK_BYTES = 1 << 18


def _ignore(count: int) -> None:
    pass


@dataclass(frozen=True)
class Block:
    """Whole lines of a JSON Lines file, or a whole ``.txt`` file (``first_line`` 0).

    ``first_line`` counts from 1; None when the block starts inside a file whose earlier lines were not read
    (a shard's byte range), where ``offset``, the byte of the file the block starts at, places it instead.
    """

    path: str
    data: bytes
    first_line: int | None
    offset: int = 0

    @property
    def is_whole_file(self) -> bool:
        return self.first_line == 0


@dataclass(frozen=True)
class ColumnBlock:
    """Rows of the text column of a parquet or Arrow file; row ``i`` is ``data[offsets[i]:offsets[i+1]]``, UTF-8.

    ``rejected`` (a reason and its detail) rejects every row: the file has no such column, or not a text one.
    """

    path: str
    first_row: int
    num_rows: int
    offsets: np.ndarray
    data: bytes
    nulls: np.ndarray | None = None
    rejected: tuple[str, str] | None = None


@dataclass(frozen=True)
class Problem:
    """Why a document was rejected: ``reason`` names the kind (for counts), ``detail`` the specifics.

    Where: ``row`` (from 1) in a parquet or Arrow file, else ``line`` (from 1) in a JSON Lines file, else
    the whole ``.txt`` file. A line whose number is not known yet has ``line`` 0 and its byte ``offset``.
    """

    path: str
    line: int
    reason: str
    detail: str = ""
    row: int = 0
    offset: int | None = None

    def __str__(self) -> str:
        where = self.path
        if self.row:
            where = f"{self.path}: row {self.row}"
        elif self.line:
            where = f"{self.path}:{self.line}"
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def located(problem: Problem) -> Problem:
    """``problem`` with its line number, counted now for a line found by its byte offset (only on the way to an
    error message: a shard starting mid-file does not read the lines before it otherwise)."""
    if problem.offset is None or problem.line:
        return problem
    newlines = 0
    with open(problem.path, "rb") as file:
        remaining = problem.offset
        while remaining > 0:
            chunk = file.read(min(remaining, BLOCK_BYTES))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
    return Problem(problem.path, newlines + 1, problem.reason, problem.detail)


def read_blocks(path: Path, on_bytes_read: Callable[[int], None] = _ignore) -> Iterator[Block]:
    """Every block of one ``.txt`` or JSON Lines file (plain, ``.gz`` or ``.zst``), from its start.

    ``on_bytes_read`` hears how many bytes of the file (compressed) were read.
    """
    if path.name.endswith(".txt"):
        data = path.read_bytes()
        on_bytes_read(len(data))
        yield Block(str(path), data, 0)
        return
    with open(path, "rb") as raw:
        yield from _line_blocks(path, _decompressed_chunks(path, raw, on_bytes_read), 1, 0, math.inf)


def read_line_range(
    path: Path, start: int, end: int, on_bytes_read: Callable[[int], None] = _ignore
) -> Iterator[Block]:
    """The lines of a plain JSON Lines file that start at a byte in ``[start, end)``, in blocks.

    Byte ranges that tile a file give every line exactly once. ``on_bytes_read`` hears the bytes of the lines.
    """
    with open(path, "rb") as raw:
        first_line: int | None = 1
        if start > 0:  # the line holding byte start - 1 belongs to the range before this one
            raw.seek(start - 1)
            start, first_line = _after_next_newline(raw), None
        if start >= end:
            return
        raw.seek(start)
        for block in _line_blocks(path, iter(lambda: raw.read(BLOCK_BYTES), b""), first_line, start, end):
            on_bytes_read(len(block.data))
            yield block


def _after_next_newline(raw: BinaryIO) -> int:
    while chunk := raw.read(BLOCK_BYTES):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return raw.tell() - len(chunk) + newline + 1
    return raw.tell()


class _Undecodable(Exception):
    """The compressed input is damaged; ``args[0]`` says how."""


def _line_blocks(
    path: Path, chunks: Iterator[bytes], first_line: int | None, offset: int, end: float
) -> Iterator[Block]:
    """Blocks of whole lines from ``chunks``, which start at a line start, byte ``offset`` of the file; the last
    block ends with the line that holds byte ``end - 1``."""
    line, unfinished = first_line, []  # unfinished: the pieces of a line not yet ended
    try:
        for chunk in chunks:
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:  # inside a line longer than a block
                unfinished.append(chunk)
                continue
            data = b"".join([*unfinished, chunk[:cut]])
            unfinished = [chunk[cut:]]
            if offset + len(data) >= end:
                yield Block(str(path), data[: data.find(b"\n", max(int(end) - 1 - offset, 0)) + 1], line, offset)
                return
            yield Block(str(path), data, line, offset)
            offset += len(data)
            if line is not None:
                line += data.count(b"\n")
    except _Undecodable as error:
        where = f"{path}:{line}" if line is not None else str(path)
        raise UserError(f"{where}: cannot decompress ({error.args[0]})") from None
    last = b"".join(unfinished)
    if last:
        yield Block(str(path), last, line, offset)


def _decompressed_chunks(path: Path, raw: BinaryIO, on_bytes_read: Callable[[int], None]) -> Iterator[bytes]:
    frames = None
    if path.name.endswith(".gz"):
        file: BinaryIO = gzip.GzipFile(fileobj=raw)
        errors: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)
    elif path.name.endswith(".zst"):
        zstandard = import_data_extra("zstandard", path)
        frames = _ZstdFrames()
        file = zstandard.ZstdDecompressor().stream_reader(_Observed(raw, frames.feed), read_across_frames=True)
        errors = (zstandard.ZstdError, _Undecodable)
    else:
        file, errors = raw, ()
    position = 0
    while True:
        try:
            chunk = file.read(BLOCK_BYTES)
        except errors as error:
            raise _Undecodable(str(error.args[0] if isinstance(error, _Undecodable) else error)) from None
        on_bytes_read(raw.tell() - position)
        position = raw.tell()
        if not chunk:
            break
        yield chunk
    if frames is not None and not frames.at_frame_start:
        raise _Undecodable("the file ends inside a zstd frame: truncated")


class _Observed:
    """A binary file whose every read is also handed to ``observe``."""

    def __init__(self, file: BinaryIO, observe: Callable[[bytes], None]):
        self._file, self._observe = file, observe

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._observe(data)
        return data


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MAGICS = range(0x184D2A50, 0x184D2A60)


class _ZstdFrames:
    """Follows the frame structure of the compressed bytes it is fed (headers only; block contents are
    skipped by their sizes), so the end of the input can be checked to fall between frames.

    python-zstandard's streaming reader ends a truncated frame silently, and a shard must not pass a
    truncated download off as a complete one.
    """

    def __init__(self):
        self._wanted, self._field, self._skip = 4, b"", 0
        self._on_field: Callable[[bytes], None] = self._magic
        self._read = 0
        self._has_checksum = False

    @property
    def at_frame_start(self) -> bool:
        return self._on_field == self._magic and not self._field and not self._skip

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            if self._skip:
                step = min(self._skip, len(data) - position)
                self._skip -= step
                position += step
                continue
            take = min(self._wanted - len(self._field), len(data) - position)
            self._field += data[position : position + take]
            position += take
            if len(self._field) == self._wanted:
                field, self._field = self._field, b""
                self._on_field(field)
        self._read += len(data)

    def _expect(self, size: int, then: Callable[[bytes], None], skip: int = 0) -> None:
        self._skip, self._wanted, self._on_field = skip, size, then

    def _magic(self, field: bytes) -> None:
        magic = int.from_bytes(field, "little")
        if magic == _ZSTD_MAGIC:
            self._expect(1, self._frame_header_descriptor)
        elif magic in _SKIPPABLE_MAGICS:
            self._expect(4, lambda size: self._expect(4, self._magic, skip=int.from_bytes(size, "little")))
        else:
            raise _Undecodable(f"no zstd frame at byte {self._read}")

    def _frame_header_descriptor(self, field: bytes) -> None:
        descriptor = field[0]
        single_segment = bool(descriptor & 0x20)
        content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        dictionary_id_bytes = (0, 1, 2, 4)[descriptor & 0x3]
        self._has_checksum = bool(descriptor & 0x4)
        rest = (0 if single_segment else 1) + dictionary_id_bytes + content_size_bytes  # at least 1
        self._expect(rest, lambda _: self._expect(3, self._block_header))

    def _block_header(self, field: bytes) -> None:
        header = int.from_bytes(field, "little")
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise _Undecodable("a reserved zstd block type: damaged data")
        content = 1 if block_type == 1 else size  # an RLE block holds one byte
        if not last:
            self._expect(3, self._block_header, skip=content)
        elif self._has_checksum:
            self._expect(4, lambda _: self._expect(4, self._magic), skip=content)
        else:
            self._expect(4, self._magic, skip=content)


def parse_block(block: Block | ColumnBlock, text_key: str) -> tuple[list[str], list[Problem]]:
    """The texts of a block and the problems of the lines or rows that are not documents.

    Blank lines are not documents and not problems (files often end with one).
    """
    if isinstance(block, ColumnBlock):
        return _parse_rows(block, text_key)
    if block.is_whole_file:
        try:
            text = _decode(block.data)
            if not text:
                raise _Rejected("empty document")
        except _Rejected as rejected:
            return [], [Problem(block.path, 0, *rejected.args)]
        return [text], []
    texts, problems = [], []
    line_offset = block.offset  # kept only where the line numbers are not known
    for number, raw_line in enumerate(block.data.split(b"\n"), start=block.first_line or 0):
        if raw_line.strip():
            try:
                texts.append(_text_of_json_line(_decode(raw_line), text_key))
            except _Rejected as rejected:
                if block.first_line is None:
                    problems.append(Problem(block.path, 0, *rejected.args, offset=line_offset))
                else:
                    problems.append(Problem(block.path, number, *rejected.args))
        if block.first_line is None:
            line_offset += len(raw_line) + 1
    return texts, problems


def _parse_rows(block: ColumnBlock, text_key: str) -> tuple[list[str], list[Problem]]:
    if block.rejected is not None:
        rows = range(block.first_row, block.first_row + block.num_rows)
        return [], [Problem(block.path, 0, *block.rejected, row=row) for row in rows]
    texts, problems = [], []
    data, bounds = memoryview(block.data), block.offsets.tolist()
    for index in range(block.num_rows):
        try:
            if block.nulls is not None and block.nulls[index]:
                raise _Rejected(f"'{text_key}' is not a string", "got null")
            text = _decode(data[bounds[index] : bounds[index + 1]])
            if not text:
                raise _Rejected("empty document")
            texts.append(text)
        except _Rejected as rejected:
            problems.append(Problem(block.path, 0, *rejected.args, row=block.first_row + index))
    return texts, problems


class _Rejected(Exception):
    """``args``: the reason, and optionally its detail."""


def _decode(data: bytes | memoryview) -> str:
    try:
        return str(data, "utf-8")
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
