"""``tokenize`` on corpora as they are published: every input format, directories, patterns, Hugging Face
datasets, and each format's bad inputs (exit 2 naming file and line or row, or skipped and counted)."""

import gzip
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from input_files import (
    jsonl_bytes,
    write_arrow,
    write_gzip,
    write_hf_dataset,
    write_jsonl_file,
    write_parquet,
    write_zstd,
)

from llm_gym.cli import main
from llm_gym.data import columnar, documents
from llm_gym.data.indexed import IndexedDataset
from llm_gym.data.inputs import find_input_files, iter_texts, plan_shard, read_pieces
from llm_gym.data.tokenization import tokenize_files

TEXTS = [f"document {index}: " + "héllo wörld ✓ " * (index % 5) for index in range(40)]


def tokenize(inputs: list[Path], output_prefix: Path, *options: str):
    input_args = [arg for path in inputs for arg in ("--input", str(path))]
    command = ["data", "tokenize", *input_args, "--output_prefix", str(output_prefix), "--tokenizer", "byte"]
    return CliRunner().invoke(main, [*command, "--num_workers", "0", *options])


def texts_of(prefix: Path) -> list[str]:
    corpus = IndexedDataset(prefix)
    return [bytes(corpus.document(index)[:-1].tolist()).decode() for index in range(len(corpus))]


def _txt_directory(directory: Path, texts: list[str]) -> Path:
    directory.mkdir()
    for index, text in enumerate(texts):
        (directory / f"{index:03d}.txt").write_text(text, encoding="utf-8")
    return directory


def _uneven_row_groups(num_rows: int) -> list[int]:
    first, second = max(num_rows // 13, 1), max(num_rows // 2, 1)
    return [size for size in (first, second, 1, num_rows - first - second - 1) if size > 0]


WRITERS = {
    "jsonl": lambda d, texts: write_jsonl_file(d / "in.jsonl", texts),
    "json": lambda d, texts: write_jsonl_file(d / "in.json", texts),
    "jsonl.gz": lambda d, texts: write_gzip(d / "in.jsonl.gz", texts),
    "json.gz": lambda d, texts: write_gzip(d / "in.json.gz", texts),
    "jsonl.zst": lambda d, texts: write_zstd(d / "in.jsonl.zst", texts, frames=3),
    "json.zst": lambda d, texts: write_zstd(d / "in.json.zst", texts, frames=1),
    "parquet": lambda d, texts: write_parquet(d / "in.parquet", texts, row_groups=_uneven_row_groups(len(texts))),
    "arrow stream": lambda d, texts: write_arrow(d / "in.arrow", texts, batch_rows=7),
    "arrow file": lambda d, texts: write_arrow(d / "in.arrow", texts, batch_rows=7, file_format=True),
    "save_to_disk": lambda d, texts: write_hf_dataset(d / "dataset", texts, num_files=3, batch_rows=6),
    "txt directory": lambda d, texts: _txt_directory(d / "texts", texts),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_format_gives_the_documents_in_order(tmp_path: Path, kind: str):
    source = WRITERS[kind](tmp_path, TEXTS)
    result = tokenize([source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "out") == TEXTS


@pytest.mark.parametrize("kind", ["jsonl.zst", "parquet", "arrow stream", "jsonl"])
def test_every_format_is_read_in_bounded_blocks(tmp_path: Path, monkeypatch, kind: str):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(columnar, "ROWS_PER_READ", 64)
    texts = [f"{index} " + "x" * 200 for index in range(3000)]
    files = find_input_files([WRITERS[kind](tmp_path, texts)])
    blocks = list(read_pieces(plan_shard(files), "text"))
    block_bytes = [len(block.data) for block in blocks]
    assert sum(block_bytes) > 600_000 and len(blocks) > 100
    assert max(block_bytes) <= 4096 + 300  # a block, plus at most the line or row that crosses its end


def test_fineweb_layout_directory_and_pattern(tmp_path: Path):
    """A local copy of a dataset repository: data/<dump>/<shard>.parquet, a README, huggingface_hub's .cache."""
    repo = tmp_path / "fineweb"
    for dump, shards in (("CC-MAIN-2024-10", 2), ("CC-MAIN-2013-20", 1)):
        (repo / "data" / dump).mkdir(parents=True)
        for shard in range(shards):
            texts = [f"{dump} {shard} {row}" for row in range(5)]
            write_parquet(repo / "data" / dump / f"000_{shard:05d}.parquet", texts, row_groups=[2, 3])
    (repo / "README.md").write_text("# FineWeb\n")
    (repo / ".cache" / "huggingface").mkdir(parents=True)
    write_jsonl_file(repo / ".cache" / "huggingface" / "stray.jsonl", ["not data"])
    result = tokenize([repo], tmp_path / "all")
    assert result.exit_code == 0, result.output
    dumps = [text.split()[:2] for text in texts_of(tmp_path / "all")[::5]]
    assert dumps == [["CC-MAIN-2013-20", "0"], ["CC-MAIN-2024-10", "0"], ["CC-MAIN-2024-10", "1"]]
    result = tokenize([repo], tmp_path / "one", "--pattern", "data/CC-MAIN-2024-10/*_00001.parquet")
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "one") == [f"CC-MAIN-2024-10 1 {row}" for row in range(5)]


def test_directories_are_sorted_by_path_and_mixed_with_files(tmp_path: Path):
    corpus = tmp_path / "corpus"
    (corpus / "b" / "inner").mkdir(parents=True)
    write_jsonl_file(corpus / "b" / "inner" / "z.jsonl", ["b/inner/z"])
    write_jsonl_file(corpus / "b" / "a.jsonl", ["b/a"])
    write_jsonl_file(corpus / "a.jsonl", ["a"])
    write_jsonl_file(corpus / "b-c.jsonl", ["b-c"])  # '-' sorts before '/' as a string, not as a path
    (corpus / "notes.md").write_text("ignored")
    extra = write_jsonl_file(tmp_path / "extra.jsonl", ["extra"])
    result = tokenize([extra, corpus], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "out") == ["extra", "a", "b/a", "b/inner/z", "b-c"]


def test_several_inputs_may_follow_one_option(tmp_path: Path):
    paths = [write_jsonl_file(tmp_path / f"{name}.jsonl", [name]) for name in ("a", "b", "c")]
    command = ["data", "tokenize", "--input", *map(str, paths), "--tokenizer", "byte", "--output_prefix"]
    result = CliRunner().invoke(main, [*command, str(tmp_path / "out"), "--num_workers", "0"])
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "out") == ["a", "b", "c"]


def test_hugging_face_dataset_inside_a_directory_reads_in_state_order(tmp_path: Path):
    dataset = write_hf_dataset(tmp_path / "corpus" / "hf", TEXTS, num_files=2)
    state = json.loads((dataset / "state.json").read_text())
    state["_data_files"].reverse()  # the state's order, not the names', is the dataset's
    (dataset / "state.json").write_text(json.dumps(state))
    result = tokenize([tmp_path / "corpus"], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "out") == TEXTS[20:] + TEXTS[:20]


def test_iter_texts_reads_every_format_for_tokenizer_training(tmp_path: Path):
    sources = [WRITERS[kind](tmp_path, TEXTS[:3]) for kind in ("parquet", "jsonl.zst", "save_to_disk")]
    assert list(iter_texts(sources, "text")) == TEXTS[:3] * 3


def _bad(tmp_path: Path, source: Path, *options: str):
    result = tokenize([source], tmp_path / "out", *options)
    assert "Traceback" not in result.output
    return result


def _assert_refused(result, message: str, directory: Path) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert not list(directory.glob("out.*")), "a refused run left output"


BAD_ROWS = {
    "missing column": (lambda d: write_parquet(d / "in.parquet", ["a", "b"], key="content"), "row 1: no column 'text'"),
    "non-string column": (lambda d: write_parquet(d / "in.parquet", [1, 2]), "row 1: 'text' is not a string"),
    "null value": (lambda d: write_parquet(d / "in.parquet", ["a", None, "c"]), "row 2: 'text' is not a string"),
    "empty value": (lambda d: write_parquet(d / "in.parquet", ["a", "b", ""]), "row 3: empty document"),
    "invalid UTF-8": (
        lambda d: write_parquet(d / "in.parquet", pa.array([b"ok", b"caf\xe9"]).cast(pa.string(), safe=False)),
        "row 2: invalid UTF-8",
    ),
    "arrow missing column": (lambda d: write_arrow(d / "in.arrow", ["a"], key="body"), "row 1: no column 'text'"),
    "arrow null value": (lambda d: write_arrow(d / "in.arrow", ["a", None], batch_rows=1), "row 2: 'text' is not"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_fail_naming_file_and_row_or_are_skipped_and_counted(tmp_path: Path, case: str):
    make, message = BAD_ROWS[case]
    source = make(tmp_path)
    _assert_refused(_bad(tmp_path, source), f"{source}: {message}", tmp_path)
    good = write_jsonl_file(tmp_path / "good.jsonl", ["good"])
    result = tokenize([good, source], tmp_path / "out", "--on_error", "skip")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and texts_of(tmp_path / "out")[0] == "good"


def test_skip_counts_every_row_of_a_file_without_the_column(tmp_path: Path):
    source = write_parquet(tmp_path / "in.parquet", ["a"] * 30, key="content", row_groups=[10, 20])
    good = write_jsonl_file(tmp_path / "good.jsonl", ["good"])
    result = tokenize([good, source], tmp_path / "out", "--on_error", "skip")
    assert result.exit_code == 0, result.output
    assert "skipped 30 documents: 30 no column 'text'" in result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["skipped"] == {"no column 'text'": 30} and summary["documents"] == 1


def _corrupt_row_group(directory: Path) -> Path:
    path = write_parquet(directory / "in.parquet", [f"text {i} " * 20 for i in range(40)], row_groups=[20, 20])
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data[start : start + 40] = b"\xff" * 40  # the page header of the second row group's text
    path.write_bytes(bytes(data))
    return path


def _truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _corrupt_zstd(directory: Path) -> Path:
    path = write_zstd(directory / "in.jsonl.zst", [f"line {i} " * 30 for i in range(200)], frames=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
    path.write_bytes(bytes(data))
    return path


BAD_FILES = {
    "corrupt parquet row group": (_corrupt_row_group, "in.parquet: row group 1 (rows 21-40): cannot read"),
    "truncated parquet": (
        lambda d: _truncated(write_parquet(d / "in.parquet", TEXTS)),
        "in.parquet: not a readable parquet file",
    ),
    "not parquet": (
        lambda d: (d / "in.parquet").write_bytes(b"PAR1 but not really") and d / "in.parquet",
        "not a readable parquet file",
    ),
    "truncated zstd": (
        lambda d: _truncated(write_zstd(d / "in.jsonl.zst", TEXTS, frames=1)),
        "cannot decompress (the file ends inside a zstd frame: truncated)",
    ),
    "truncated zstd at a block": (
        lambda d: _truncated(write_zstd(d / "in.jsonl.zst", TEXTS * 200, frames=1), 0.2),
        "ends inside a zstd frame",
    ),
    "corrupt zstd frame": (_corrupt_zstd, "in.jsonl.zst:"),
    "not zstd": (
        lambda d: (d / "in.jsonl.zst").write_bytes(jsonl_bytes(["plain"])) and d / "in.jsonl.zst",
        "in.jsonl.zst:1: cannot decompress (no zstd frame at byte 0)",
    ),
    "truncated gzip": (
        lambda d: _truncated(write_gzip(d / "in.jsonl.gz", TEXTS * 50), 0.6),
        "in.jsonl.gz:",
    ),
    "truncated arrow": (lambda d: _truncated(write_arrow(d / "in.arrow", TEXTS, batch_rows=5), 0.7), "in.arrow: "),
    "not arrow": (lambda d: (d / "in.arrow").write_bytes(b"\x00" * 64) and d / "in.arrow", "in.arrow: "),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_damaged_files_fail_naming_the_file_in_either_mode(tmp_path: Path, case: str, on_error: str):
    """Damage loses an unknown amount of text: it stops the run even under --on_error skip."""
    make, message = BAD_FILES[case]
    source = make(tmp_path)
    _assert_refused(_bad(tmp_path, source, "--on_error", on_error), message, tmp_path)


def test_a_decompression_error_names_the_line_it_reached(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 512)
    texts = [f"line {i} {i * 7919 % 10007}" for i in range(40_000)]  # several zstd blocks of 128 KiB
    source = _truncated(write_zstd(tmp_path / "in.jsonl.zst", texts, frames=1), 0.5)
    result = _bad(tmp_path, source)
    assert result.exit_code == 2
    line = int(result.stderr.split(f"{source}:")[1].split(":")[0])
    assert 1_000 < line < 40_000


STATE_FILES = {
    "escapes the directory": ({"_data_files": [{"filename": "../outside.arrow"}]}, "is not the name of a file in"),
    "absolute path": ({"_data_files": [{"filename": "/etc/passwd"}]}, "is not the name of a file in"),
    "not arrow": ({"_data_files": [{"filename": "state.json"}]}, "is not an .arrow file"),
    "missing file": ({"_data_files": [{"filename": "gone.arrow"}]}, "gone.arrow: no such file (listed in"),
    "no data files": ({"_fingerprint": "x"}, "no '_data_files' list"),
    "not an object": (["x"], "no '_data_files' list"),
}


@pytest.mark.parametrize("case", sorted(STATE_FILES))
def test_a_crafted_state_json_is_refused(tmp_path: Path, case: str):
    dataset = write_hf_dataset(tmp_path / "dataset", TEXTS, num_files=1)
    write_arrow(tmp_path / "outside.arrow", ["outside"])
    state, message = STATE_FILES[case]
    (dataset / "state.json").write_text(json.dumps(state))
    _assert_refused(_bad(tmp_path, dataset), message, tmp_path)


def test_a_state_json_that_is_not_json_is_refused(tmp_path: Path):
    dataset = write_hf_dataset(tmp_path / "dataset", TEXTS, num_files=1)
    (dataset / "state.json").write_bytes(b"\x80\x04K\x01.")  # a pickle
    _assert_refused(_bad(tmp_path, dataset), "state.json: not a Hugging Face dataset state file", tmp_path)


def test_a_dataset_dict_asks_for_one_split(tmp_path: Path):
    root = tmp_path / "dict"
    write_hf_dataset(root / "train", TEXTS)
    write_hf_dataset(root / "test", TEXTS[:2])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    _assert_refused(_bad(tmp_path, root), f"give one split's directory as --input, e.g. {root / 'train'}", tmp_path)
    result = tokenize([root / "train"], tmp_path / "out")
    assert result.exit_code == 0 and texts_of(tmp_path / "out") == TEXTS


class _WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickling_field(marker: Path) -> pa.Field:
    payload = pickle.dumps(_WritesMarker(marker))
    metadata = {b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": payload}
    return pa.field("text", pa.string(), metadata=metadata)


@pytest.mark.parametrize("kind", ["parquet", "arrow", "save_to_disk"])
def test_crafted_metadata_runs_no_code(tmp_path: Path, kind: str):
    """An extension type that older pyarrow unpickled, and a dataset_info.json holding a pickle: data only."""
    marker = tmp_path / "PWNED"
    table = pa.Table.from_arrays([pa.array(["safe", "text"])], schema=pa.schema([_pickling_field(marker)]))
    if kind == "parquet":
        source = tmp_path / "in.parquet"
        pq.write_table(table, source)
    else:
        source = tmp_path / "dataset"
        source.mkdir()
        with pa.OSFile(str(source / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        (source / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
        (source / "dataset_info.json").write_bytes(pickle.dumps(_WritesMarker(marker)))
        if kind == "arrow":
            source = source / "data.arrow"
    result = tokenize([source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert texts_of(tmp_path / "out") == ["safe", "text"]
    assert not marker.exists()


def test_unusable_inputs_and_patterns_fail_cleanly(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    _assert_refused(_bad(tmp_path, tmp_path / "empty"), "no input files in this directory ending in", tmp_path)
    write_jsonl_file(tmp_path / "empty" / "a.jsonl", ["x"])
    result = _bad(tmp_path, tmp_path / "empty", "--pattern", "*.parquet")
    _assert_refused(result, "no input files in this directory matching --pattern '*.parquet'", tmp_path)
    result = _bad(tmp_path, tmp_path / "empty" / "a.jsonl", "--pattern", "*.jsonl")
    _assert_refused(result, "no --input is a directory", tmp_path)
    result = tokenize([tmp_path / "empty", tmp_path / "empty" / "a.jsonl"], tmp_path / "out")
    _assert_refused(result, "a.jsonl: given twice", tmp_path)


def test_a_missing_data_extra_says_how_to_install_it(tmp_path: Path, monkeypatch):
    source = write_parquet(tmp_path / "in.parquet", TEXTS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    _assert_refused(_bad(tmp_path, source), "pip install 'llm_gym[data]'", tmp_path)


def test_rows_keep_their_numbers_across_row_groups_and_blocks(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(columnar, "ROWS_PER_READ", 4)
    texts = [f"row {index}" for index in range(1, 31)]
    texts[26] = ""
    source = write_parquet(tmp_path / "in.parquet", texts, row_groups=[5, 11, 14])
    _assert_refused(_bad(tmp_path, source), f"{source}: row 27: empty document", tmp_path)


def test_parquet_written_with_a_dictionary_and_large_strings(tmp_path: Path):
    table = pa.table({"text": pa.array(TEXTS).dictionary_encode(), "other": pa.array(TEXTS, pa.large_string())})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=9)
    for key in ("text", "other"):
        result = tokenize([tmp_path / "in.parquet"], tmp_path / key, "--text_key", key)
        assert result.exit_code == 0, result.output
        assert texts_of(tmp_path / key) == TEXTS


def test_gzip_json_lines_numbers_lines_as_plain_files_do(tmp_path: Path):
    path = tmp_path / "in.json.gz"
    with gzip.open(path, "wb") as file:
        file.write(jsonl_bytes(["a", "b"]) + b'{"text": 5}\n')
    _assert_refused(_bad(tmp_path, path), f"{path}:3: 'text' is not a string", tmp_path)


def test_the_tokens_of_each_format_are_identical(tmp_path: Path):
    digests = set()
    for kind in ("jsonl", "jsonl.zst", "parquet", "arrow stream", "save_to_disk"):
        directory = tmp_path / kind.replace(" ", "_")
        directory.mkdir()
        assert tokenize([WRITERS[kind](directory, TEXTS)], directory / "out").exit_code == 0
        digests.add((directory / "out.bin").read_bytes() + (directory / "out.idx").read_bytes())
    assert len(digests) == 1 and np.frombuffer(digests.pop()[:2], np.uint16)[0] == ord("d")


def test_worker_processes_write_what_one_process_writes_for_every_format(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(columnar, "ROWS_PER_READ", 16)  # many blocks, put back in order from two workers
    texts = [f"{index}: " + TEXTS[index % len(TEXTS)] * (1 + index % 3) for index in range(500)]
    sources = [WRITERS[kind](tmp_path, texts) for kind in ("parquet", "jsonl.zst", "arrow stream")]
    tokenize_files(sources, "byte", tmp_path / "serial", num_workers=0)
    tokenize_files(sources, "byte", tmp_path / "parallel", num_workers=2)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"serial{suffix}").read_bytes() == (tmp_path / f"parallel{suffix}").read_bytes()
    assert texts_of(tmp_path / "parallel") == texts * 3
