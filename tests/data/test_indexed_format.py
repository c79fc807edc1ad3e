"""The .bin/.idx files byte for byte against docs/contract.md, and the rejection of damaged or foreign pairs."""

import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus_helpers import write_corpus

from llm_gym.cli import main
from llm_gym.data import indexed
from llm_gym.data.datasets import PackedDataset, PackedDatasetConfig
from llm_gym.data.indexed import DTYPE_CODES, IndexedDataset, IndexedDatasetWriter, token_dtype
from llm_gym.errors import UserError

DOCUMENTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_round_trip_and_header_bytes(tmp_path: Path, code: int):
    dtype = np.dtype(DTYPE_CODES[code])
    prefix = write_corpus(tmp_path / "corpus", DOCUMENTS, dtype)

    idx = (tmp_path / "corpus.idx").read_bytes()
    sizes = [len(document) for document in DOCUMENTS]
    n = len(DOCUMENTS)
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", idx, 9) == (1,)
    assert idx[17] == code
    assert struct.unpack_from("<QQ", idx, 18) == (n, n + 1)
    offset = 34
    assert list(np.frombuffer(idx, np.int32, n, offset)) == sizes
    offset += 4 * n
    assert list(np.frombuffer(idx, np.int64, n, offset)) == list(np.cumsum([0, *sizes[:-1]]) * dtype.itemsize)
    offset += 8 * n
    assert list(np.frombuffer(idx, np.int64, n + 1, offset)) == list(range(n + 1))
    assert len(idx) == offset + 8 * (n + 1)
    flat = [token for document in DOCUMENTS for token in document]
    assert (tmp_path / "corpus.bin").read_bytes() == np.array(flat, dtype).tobytes()

    if not np.issubdtype(dtype, np.integer):
        with pytest.raises(UserError, match=f"corpus.idx: token dtype {dtype} is not an integer type"):
            IndexedDataset(prefix)
        return
    corpus = IndexedDataset(prefix)
    assert corpus.dtype == dtype and len(corpus) == n and corpus.num_tokens == len(flat)
    assert [corpus.document(i).tolist() for i in range(n)] == DOCUMENTS
    assert corpus.tokens.tolist() == flat


def test_dtype_follows_vocabulary_size():
    assert token_dtype(257) == np.uint16
    assert token_dtype(65_499) == np.uint16
    assert token_dtype(65_500) == np.int32
    assert token_dtype(128_256) == np.int32


def test_reads_megatron_files_with_several_sequences_per_document(tmp_path: Path):
    sizes, document_indices = np.array([2, 3, 1], np.int32), np.array([0, 2, 3], np.int64)
    pointers = np.array([0, 4, 10], np.int64)
    header = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(sizes), len(document_indices))
    (tmp_path / "m.idx").write_bytes(header + sizes.tobytes() + pointers.tobytes() + document_indices.tobytes())
    (tmp_path / "m.bin").write_bytes(np.arange(6, dtype=np.uint16).tobytes())
    corpus = IndexedDataset(tmp_path / "m")
    assert corpus.document(1).tolist() == [2, 3, 4]
    assert corpus.document_indices.tolist() == [0, 2, 3]


def test_discarded_writer_leaves_nothing(tmp_path: Path):
    writer = IndexedDatasetWriter(tmp_path / "corpus", np.dtype(np.uint16))
    writer.add_documents(np.arange(5), np.array([5]))
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def _damage(tmp_path: Path, how: str) -> Path:
    prefix = write_corpus(tmp_path / "corpus", DOCUMENTS)
    idx, bin_ = tmp_path / "corpus.idx", tmp_path / "corpus.bin"
    data = bytearray(idx.read_bytes())
    if how == "magic":
        data[:7] = b"NOTMMID"
    elif how == "version":
        data[9:17] = struct.pack("<Q", 2)
    elif how == "dtype":
        data[17] = 9
    elif how == "truncated_idx":
        data = data[:-5]
    elif how == "truncated_header":
        data = data[:20]
    elif how == "truncated_bin":
        bin_.write_bytes(bin_.read_bytes()[:-2])
    elif how == "foreign_bin":
        bin_.write_bytes(bin_.read_bytes() * 2)
    elif how == "pointers":
        struct.pack_into("<q", data, 34 + 4 * len(DOCUMENTS) + 8, 2)
    elif how == "no_bin":
        bin_.unlink()
    elif how.startswith("document_indices"):
        n = len(DOCUMENTS)
        damaged = {
            "document_indices_start": [1, 1, 2, 3, 4],
            "document_indices_end": [0, 1, 2, 3, 3],
            "document_indices_order": [0, 2, 1, 3, 4],
        }[how]
        struct.pack_into(f"<{n + 1}q", data, 34 + 12 * n, *damaged)
    idx.write_bytes(bytes(data))
    return prefix


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("magic", "bad magic"),
        ("version", "unsupported index version 2"),
        ("dtype", "unknown dtype code 9"),
        ("truncated_idx", "does not match its header"),
        ("truncated_header", "truncated header"),
        ("truncated_bin", "truncated or does not belong together"),
        ("foreign_bin", "truncated or does not belong together"),
        ("pointers", "pointers do not match"),
        ("no_bin", "corpus.bin: no such file"),
        ("document_indices_start", "damaged index"),
        ("document_indices_end", "damaged index"),
        ("document_indices_order", "damaged index"),
    ],
)
def test_damaged_or_foreign_pairs_are_rejected_on_open(tmp_path: Path, how: str, message: str):
    prefix = _damage(tmp_path, how)
    with pytest.raises(UserError, match=message):
        IndexedDataset(prefix)


def _write_megatron_idx(path: Path, dtype_code: int, sizes: list[int], document_indices: list[int]) -> None:
    sizes_array = np.array(sizes, np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes_array[:-1], dtype=np.int64)]).astype(np.int64)
    pointers *= np.dtype(DTYPE_CODES[dtype_code]).itemsize
    header = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, dtype_code, len(sizes), len(document_indices))
    path.write_bytes(
        header + sizes_array.tobytes() + pointers.tobytes() + np.array(document_indices, np.int64).tobytes()
    )


def test_empty_documents_keep_document_indices_valid(tmp_path: Path):
    # Megatron's builder may end a document with no new sequence: equal neighbours are valid.
    _write_megatron_idx(tmp_path / "m.idx", 8, [2, 3], [0, 1, 1, 2])
    (tmp_path / "m.bin").write_bytes(np.arange(5, dtype=np.uint16).tobytes())
    assert IndexedDataset(tmp_path / "m").document_indices.tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("code", [6, 7])
def test_float_corpus_is_refused_for_training(tmp_path: Path, code: int):
    dtype = np.dtype(DTYPE_CODES[code])
    prefix = write_corpus(tmp_path / "corpus", [list(range(50))], dtype)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'corpus.idx'}: token dtype {dtype} is not an integer")):
        PackedDataset(PackedDatasetConfig(path_prefix=prefix, sequence_length=8))


def inspect(prefix: Path):
    return CliRunner().invoke(main, ["data", "inspect", "--prefix", str(prefix)])


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("magic", "bad magic"),
        ("version", "unsupported index version 2"),
        ("dtype", "unknown dtype code 9"),
        ("document_indices_end", "damaged index"),
    ],
)
def test_inspect_exits_2_on_a_damaged_index(tmp_path: Path, how: str, message: str):
    result = inspect(_damage(tmp_path, how))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("code", [6, 7])
def test_inspect_exits_2_naming_a_float_dtype(tmp_path: Path, code: int):
    dtype = np.dtype(DTYPE_CODES[code])
    result = inspect(write_corpus(tmp_path / "corpus", DOCUMENTS, dtype))
    assert result.exit_code == 2, result.output
    assert f"token dtype {dtype} is not an integer type" in result.stderr


def test_inspect_shows_an_empty_first_sequence(tmp_path: Path):
    _write_megatron_idx(tmp_path / "m.idx", 8, [0, 3], [0, 1, 2])
    (tmp_path / "m.bin").write_bytes(np.array([104, 105, 256], np.uint16).tobytes())
    result = inspect(tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "document 0, first 0 of 0 tokens:" in result.output and "(an empty sequence)" in result.output
    result = CliRunner().invoke(main, ["data", "inspect", "--prefix", str(tmp_path / "m"), "--document", "1"])
    assert result.exit_code == 0, result.output
    assert "| hi" in result.output


def test_inspect_shows_negative_ids_rather_than_decoding_them(tmp_path: Path):
    result = inspect(write_corpus(tmp_path / "corpus", [[-3, 5, 7]], np.int8))
    assert result.exit_code == 0, result.output
    assert "ids: [-3, 5, 7]" in result.output


def test_crash_between_renames_never_pairs_a_new_bin_with_an_old_idx(tmp_path: Path, monkeypatch):
    prefix = write_corpus(tmp_path / "corpus", DOCUMENTS)
    writer = IndexedDatasetWriter(prefix, np.dtype(np.uint16))
    writer.add_documents(np.arange(7), np.array([7]))
    real_replace, calls = os.replace, []

    def replace_then_crash(source, destination):
        calls.append(destination)
        if len(calls) > 1:
            raise OSError("crash after the first rename")
        real_replace(source, destination)

    monkeypatch.setattr(indexed.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="crash after the first rename"):
        writer.finalize()
    assert calls == [tmp_path / "corpus.bin", tmp_path / "corpus.idx"]
    assert not (tmp_path / "corpus.idx").exists()
    with pytest.raises(UserError, match=re.escape("corpus.idx: no such file")):
        IndexedDataset(prefix)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_index_checks_in_chunks_miss_nothing_at_chunk_boundaries(tmp_path: Path, monkeypatch, chunk: int):
    monkeypatch.setattr(indexed, "CHECK_CHUNK", chunk)
    prefix = write_corpus(tmp_path / "corpus", DOCUMENTS)
    assert [IndexedDataset(prefix).document(i).tolist() for i in range(len(DOCUMENTS))] == DOCUMENTS
    idx, pristine = tmp_path / "corpus.idx", (tmp_path / "corpus.idx").read_bytes()
    n = len(DOCUMENTS)
    for position in range(1, n):  # every pointer after the first, moved by one token
        data = bytearray(pristine)
        offset = 34 + 4 * n + 8 * position
        struct.pack_into("<q", data, offset, struct.unpack_from("<q", data, offset)[0] + 1)
        idx.write_bytes(bytes(data))
        with pytest.raises(UserError, match="pointers do not match"):
            IndexedDataset(prefix)
    for position in range(1, n):  # every inner document index made to go backwards
        data = bytearray(pristine)
        struct.pack_into("<q", data, 34 + 12 * n + 8 * position, n if position < n - 1 else 0)
        idx.write_bytes(bytes(data))
        with pytest.raises(UserError, match="damaged index"):
            IndexedDataset(prefix)
