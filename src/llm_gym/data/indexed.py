"""Megatron-LM's indexed dataset format (``MMIDIDX`` version 1): ``PREFIX.bin`` tokens, ``PREFIX.idx`` index.

``.idx`` layout, little-endian: magic ``b"MMIDIDX\\x00\\x00"``, ``<Q`` version, ``<B`` dtype code, ``<Q``
sequence count, ``<Q`` document count, then int32 sequence lengths, int64 byte pointers into ``.bin`` and
int64 document indices. Files written here have one sequence per document, so document indices are
``0..sequence count``. Both files are written under temporary names and renamed when complete: an existing
``.idx`` is removed first and the new ``.idx`` renamed last, so a valid ``.idx`` name always describes the
``.bin`` beside it.

Token ids are integers: a corpus whose dtype code is a float type (a foreign file) is refused when opened.
"""

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llm_gym.errors import MissingInputError, UserError
from llm_gym.outputs import writing

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")
HEADER_SIZE = _HEADER.size

DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}
INCOMPLETE_SUFFIX = ".incomplete"


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 while every id fits with room to spare, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65_500 else np.int32)


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def _incomplete(path: Path) -> Path:
    return path.with_name(path.name + INCOMPLETE_SUFFIX)


def existing_outputs(prefix: str | os.PathLike) -> list[Path]:
    return [path for path in (bin_path(prefix), idx_path(prefix)) if path.exists()]


# Index entries checked per pass: every rank and loader worker opens the corpus, and a whole-index pass over
# 100M documents would allocate gigabytes of temporaries.
CHECK_CHUNK = 1 << 22


def _chunks(length: int) -> Iterator[slice]:
    for start in range(0, length, CHECK_CHUNK):
        yield slice(start, min(start + CHECK_CHUNK, length))


class IndexedDatasetWriter:
    """Appends documents to ``PREFIX.bin`` and writes ``PREFIX.idx`` on :meth:`finalize`.

    Memory holds one length per document (4 bytes each), never the tokens.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no code in the indexed format")
        self._bin, self._idx = bin_path(prefix), idx_path(prefix)
        self._bin.parent.mkdir(parents=True, exist_ok=True)
        self._bin_file = open(_incomplete(self._bin), "wb")  # noqa: SIM115 (closed in finalize/discard)
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` documents whose tokens lie back to back in ``tokens``."""
        with writing(self._bin):
            self._bin_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.num_tokens += int(tokens.size)

    def finalize(self) -> None:
        with writing(self._bin):
            self._bin_file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        document_indices = np.arange(len(lengths) + 1, dtype=np.int64)
        incomplete_idx = _incomplete(self._idx)
        with writing(self._idx), open(incomplete_idx, "wb") as file:
            file.write(_HEADER.pack(MAGIC, VERSION, _CODE_OF_DTYPE[self.dtype], len(lengths), len(document_indices)))
            file.write(lengths.tobytes())
            file.write(pointers.tobytes())
            file.write(document_indices.tobytes())
        # The old .idx goes first: a crash between the renames then leaves a .bin without an .idx (refused
        # as missing), never a new .bin under an old .idx that describes other tokens.
        self._idx.unlink(missing_ok=True)
        os.replace(_incomplete(self._bin), self._bin)
        os.replace(incomplete_idx, self._idx)

    def discard(self) -> None:
        """Remove everything written so far; the output names stay untouched."""
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk; the file goes anyway
            self._bin_file.close()
        for path in (_incomplete(self._bin), _incomplete(self._idx)):
            path.unlink(missing_ok=True)


class IndexedDataset:
    """A read-only, memory-mapped ``.bin/.idx`` pair, checked against the format when opened.

    ``tokens`` is the whole ``.bin`` as one flat array; ``document(i)`` one document's tokens.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.idx_path, self.bin_path = idx_path(prefix), bin_path(prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise MissingInputError(f"{path}: no such file (expected a tokenized corpus PREFIX.bin + PREFIX.idx)")
        self.dtype, self.sizes, self.pointers, self.document_indices = self._read_index()
        if not np.issubdtype(self.dtype, np.integer):
            raise UserError(
                f"{self.idx_path}: token dtype {self.dtype} is not an integer type; token ids must be integers"
            )
        self._check_against_bin()
        self._check_document_indices()
        self._tokens: np.ndarray | None = None

    def _read_index(self) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
        path = self.idx_path
        idx_size = path.stat().st_size
        with open(path, "rb") as file:
            header = file.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise UserError(f"{path}: not a Megatron indexed dataset index (bad magic or truncated header)")
        _, version, dtype_code, num_sequences, num_documents = _HEADER.unpack(header)
        if version != VERSION:
            raise UserError(f"{path}: unsupported index version {version} (expected {VERSION})")
        if dtype_code not in DTYPE_CODES:
            raise UserError(f"{path}: unknown dtype code {dtype_code}")
        expected = HEADER_SIZE + num_sequences * (4 + 8) + num_documents * 8
        if idx_size != expected:
            raise UserError(
                f"{path}: size {idx_size} bytes does not match its header ({num_sequences} sequences, "
                f"{num_documents} document indices need {expected} bytes); the file is truncated or foreign"
            )
        index = np.memmap(path, dtype=np.uint8, mode="r")
        offset = HEADER_SIZE
        sizes = index[offset : offset + 4 * num_sequences].view(np.int32)
        offset += 4 * num_sequences
        pointers = index[offset : offset + 8 * num_sequences].view(np.int64)
        offset += 8 * num_sequences
        document_indices = index[offset:].view(np.int64)
        return np.dtype(DTYPE_CODES[dtype_code]), sizes, pointers, document_indices

    def _check_against_bin(self) -> None:
        """Sequences must tile the ``.bin`` exactly, in order, as Megatron's writer lays them out."""
        itemsize, bin_size = self.dtype.itemsize, self.bin_path.stat().st_size
        expected = int(self.sizes.sum(dtype=np.int64)) * itemsize
        if bin_size != expected:
            raise UserError(
                f"{self.bin_path}: size {bin_size} bytes, but {self.idx_path} describes {expected} bytes of "
                f"{self.dtype} tokens; the pair is truncated or does not belong together"
            )
        if len(self.sizes) and self.pointers[0] != 0:
            raise UserError(f"{self.idx_path}: sequence pointers do not match the sequence lengths")
        for part in _chunks(len(self.sizes)):
            sizes = self.sizes[part]
            gaps = np.diff(self.pointers[part.start : part.stop + 1])  # the last chunk has one gap fewer
            if (sizes < 0).any() or (gaps != sizes[: len(gaps)].astype(np.int64) * itemsize).any():
                raise UserError(f"{self.idx_path}: sequence pointers do not match the sequence lengths")

    def _check_document_indices(self) -> None:
        """Megatron's convention: one more entry than documents, from 0 to the sequence count, never decreasing."""
        indices = self.document_indices
        if (
            len(indices) == 0
            or indices[0] != 0
            or indices[-1] != len(self.sizes)
            or any((np.diff(indices[part.start : part.stop + 1]) < 0).any() for part in _chunks(len(indices)))
        ):
            raise UserError(
                f"{self.idx_path}: damaged index: document indices must rise from 0 to the sequence count "
                f"({len(self.sizes)})"
            )

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            # np.memmap cannot map an empty file.
            if self.bin_path.stat().st_size == 0:
                self._tokens = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r")
        return self._tokens

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def __len__(self) -> int:
        return len(self.sizes)

    def document(self, index: int) -> np.ndarray:
        start = int(self.pointers[index]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[index])]

    def __getstate__(self) -> dict:
        # Worker processes re-open the maps; pickling must not copy the corpus.
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])
