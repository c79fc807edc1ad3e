"""Megatron-LM's indexed dataset format (``MMIDIDX`` version 1): ``PREFIX.bin`` tokens, ``PREFIX.idx`` index.

``.idx`` layout, little-endian: magic ``b"MMIDIDX\\x00\\x00"``, ``<Q`` version, ``<B`` dtype code, ``<Q``
sequence count, ``<Q`` document count, then int32 sequence lengths, int64 byte pointers into ``.bin`` and
int64 document indices. Files written here have one sequence per document, so document indices are
``0..sequence count``. Both files are written under temporary names and renamed when complete: an existing
``.idx`` is removed first and the new ``.idx`` renamed last, so a valid ``.idx`` name always describes the
``.bin`` beside it.

Token ids are integers: a corpus whose dtype code is a float type (a foreign file) is refused when opened.

:func:`merge_corpora` concatenates corpora as Megatron-LM's ``tools/merge_datasets.py`` does, streaming: each
``.bin`` is copied in turn and each index section written a chunk at a time, so memory holds neither the tokens
nor the index.
"""

import contextlib
import os
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


def checked_prefix(prefix: str | os.PathLike) -> str:
    """``prefix`` as text, refused when it ends in a directory (``out/``, ``.``): the names made from it would be
    ``out/.bin`` (or, once a path type drops the slash, ``out.bin`` beside the directory)."""
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        suggestion = os.path.join(text, "corpus") if text else "corpus"
        raise UserError(
            f"prefix '{text}' is refused: it names a directory, and a prefix is the start of two file names, "
            f"PREFIX.bin and PREFIX.idx; add a name, e.g. {suggestion} for {suggestion}.bin and {suggestion}.idx"
        )
    return text


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{checked_prefix(prefix)}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{checked_prefix(prefix)}.idx")


def _incomplete(path: Path) -> Path:
    return path.with_name(path.name + INCOMPLETE_SUFFIX)


def existing_outputs(prefix: str | os.PathLike) -> list[Path]:
    return [path for path in (bin_path(prefix), idx_path(prefix)) if path.exists()]


def same_files(prefix: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Whether two prefixes name the same ``.bin`` or ``.idx`` file (through links and relative paths too)."""
    for mine, theirs in ((bin_path(prefix), bin_path(other)), (idx_path(prefix), idx_path(other))):
        if mine.resolve() == theirs.resolve() or (mine.exists() and theirs.exists() and mine.samefile(theirs)):
            return True
    return False


def _header(dtype: np.dtype, num_sequences: int, num_document_indices: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, _CODE_OF_DTYPE[np.dtype(dtype)], num_sequences, num_document_indices)


def _publish(prefix: str | os.PathLike) -> None:
    """Rename the complete ``.incomplete`` pair of ``prefix`` to its names.

    The old .idx goes first: a crash between the renames then leaves a .bin without an .idx (refused as
    missing), never a new .bin under an old .idx that describes other tokens.
    """
    idx_path(prefix).unlink(missing_ok=True)
    os.replace(_incomplete(bin_path(prefix)), bin_path(prefix))
    os.replace(_incomplete(idx_path(prefix)), idx_path(prefix))


def read_header(path: Path) -> tuple[np.dtype, int, int]:
    """An ``.idx`` file's dtype, sequence count and document-index count, checked against the file's size."""
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
    return np.dtype(DTYPE_CODES[dtype_code]), num_sequences, num_documents


# Index entries checked per pass: every rank and loader worker opens the corpus, and a whole-index pass over
# 100M documents would allocate gigabytes of temporaries.
CHECK_CHUNK = 1 << 22


def chunk_slices(length: int) -> Iterator[slice]:
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
        self._prefix, self._bin, self._idx = prefix, bin_path(prefix), idx_path(prefix)
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
                problem = (
                    "is a directory, not a file"
                    if path.is_dir()
                    else "is not a regular file"
                    if path.exists()
                    else None
                )
                if problem is None:
                    raise MissingInputError(
                        f"{path}: no such file (expected a tokenized corpus PREFIX.bin + PREFIX.idx)"
                    )
                raise UserError(f"{path}: {problem} (expected a tokenized corpus PREFIX.bin + PREFIX.idx)")
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
        dtype, num_sequences, _ = read_header(path)
        index = np.memmap(path, dtype=np.uint8, mode="r")
        offset = HEADER_SIZE
        sizes = index[offset : offset + 4 * num_sequences].view(np.int32)
        offset += 4 * num_sequences
        pointers = index[offset : offset + 8 * num_sequences].view(np.int64)
        offset += 8 * num_sequences
        document_indices = index[offset:].view(np.int64)
        return dtype, sizes, pointers, document_indices

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
        for part in chunk_slices(len(self.sizes)):
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
            or any((np.diff(indices[part.start : part.stop + 1]) < 0).any() for part in chunk_slices(len(indices)))
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


@dataclass
class MergeSummary:
    output_prefix: str
    corpora: int
    dtype: str
    documents: int = 0
    tokens: int = 0
    seconds: float = 0.0


_COPY_BUFFER_BYTES = 16 << 20


def merge_corpora(
    prefixes: Sequence[str | os.PathLike], output_prefix: str | os.PathLike, force: bool = False
) -> MergeSummary:
    """Concatenate the corpora at ``prefixes``, in order, into ``output_prefix.bin/.idx``.

    All must hold tokens of one dtype (one tokenizer). The output is written under temporary names and renamed
    when complete; it may not be one of the inputs, and an existing one is replaced only with ``force``.
    """
    start = time.perf_counter()
    if not prefixes:
        raise UserError("no corpora to merge")
    for prefix in prefixes:
        if same_files(prefix, output_prefix):
            raise UserError(f"the output {output_prefix} is also an input ({prefix}): choose another --output_prefix")
    headers = [read_header(idx_path(prefix)) for prefix in prefixes]
    dtype = headers[0][0]
    for prefix, (other, _, _) in zip(prefixes, headers, strict=True):
        if other != dtype:
            raise UserError(
                f"{prefix} holds {other} tokens but {prefixes[0]} holds {dtype}: corpora of different tokenizers "
                "cannot be merged"
            )
    summary = MergeSummary(os.fspath(output_prefix), len(prefixes), dtype.name)
    existing = existing_outputs(output_prefix)
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to overwrite it")
    num_sequences = sum(count for _, count, _ in headers)
    num_document_indices = 1 + sum(count - 1 for _, _, count in headers)
    pointers_at = HEADER_SIZE + 4 * num_sequences
    document_indices_at = pointers_at + 8 * num_sequences
    out_bin, out_idx = _incomplete(bin_path(output_prefix)), _incomplete(idx_path(output_prefix))
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out_bin, "wb") as bin_file, open(out_idx, "wb") as idx_file:
            idx_file.write(_header(dtype, num_sequences, num_document_indices))
            idx_file.seek(document_indices_at)
            idx_file.write(np.zeros(1, np.int64).tobytes())
            sequences_before, document_indices_before, bytes_before = 0, 0, 0
            for prefix, (_, num_sequences_read, _) in zip(prefixes, headers, strict=True):
                corpus = IndexedDataset(prefix)
                if len(corpus) != num_sequences_read:
                    raise UserError(f"{corpus.idx_path} changed while it was being merged")
                for part in chunk_slices(len(corpus)):
                    idx_file.seek(HEADER_SIZE + 4 * (sequences_before + part.start))
                    idx_file.write(corpus.sizes[part].tobytes())
                    idx_file.seek(pointers_at + 8 * (sequences_before + part.start))
                    idx_file.write((corpus.pointers[part] + bytes_before).tobytes())
                later_indices = corpus.document_indices[1:]
                for part in chunk_slices(len(later_indices)):
                    idx_file.seek(document_indices_at + 8 * (1 + document_indices_before + part.start))
                    idx_file.write((later_indices[part] + sequences_before).tobytes())
                with open(corpus.bin_path, "rb") as tokens:
                    shutil.copyfileobj(tokens, bin_file, _COPY_BUFFER_BYTES)
                sequences_before += len(corpus)
                document_indices_before += len(later_indices)
                bytes_before += corpus.bin_path.stat().st_size
                summary.documents += len(corpus.document_indices) - 1
                summary.tokens += corpus.num_tokens
                del (
                    corpus,
                    later_indices,
                )  # unmap before the next one: thousands of shards stay within the open-files limit
        _publish(output_prefix)
    except BaseException as error:
        for path in (out_bin, out_idx):
            path.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a full disk names no file
            raise OSError(error.errno, error.strerror, str(bin_path(output_prefix))) from error
        raise
    summary.seconds = time.perf_counter() - start
    return summary
