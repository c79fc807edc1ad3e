"""Sharded tokenization (``--num_shards N --shard_index I``) and ``merge``: N shards merged are byte for byte the
corpus one run writes, whatever N; the merge streams, and refuses what it cannot join."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus_helpers import write_corpus
from input_files import write_arrow, write_gzip, write_hf_dataset, write_jsonl_file, write_parquet, write_zstd

from experiment_runs import ROOT, subprocess_env
from llm_gym.cli import main
from llm_gym.data import indexed
from llm_gym.data.indexed import IndexedDataset, merge_corpora
from llm_gym.data.inputs import find_input_files, plan_shard
from llm_gym.data.prefixes import resolve_prefixes, shard_prefix
from llm_gym.data.tokenization import tokenize_files

TEXTS = [f"doc {index} " + "abc " * (index % 11) for index in range(120)]


def mixed_corpus(directory: Path) -> Path:
    """Every kind of unit: plain lines split by bytes, uneven row groups, record batches (Arrow stream and file
    formats), whole compressed files, a .txt file, empty files."""
    directory.mkdir()
    write_jsonl_file(directory / "a.jsonl", TEXTS[:30])
    write_parquet(directory / "b.parquet", TEXTS[30:55], row_groups=[1, 13, 2, 9])
    write_arrow(directory / "c.arrow", TEXTS[55:63], batch_rows=3)
    write_arrow(directory / "c_file.arrow", TEXTS[63:70], batch_rows=2, file_format=True)
    write_zstd(directory / "d.jsonl.zst", TEXTS[70:85])
    (directory / "e.jsonl").write_bytes(b"")
    write_gzip(directory / "f.json.gz", TEXTS[85:95])
    write_hf_dataset(directory / "g", TEXTS[95:115], num_files=2, batch_rows=3)
    (directory / "h.txt").write_text(TEXTS[115])
    write_jsonl_file(directory / "i.jsonl", TEXTS[116:])
    (directory / "z.jsonl").write_bytes(b"")  # the very last file is empty
    return directory


def tokenize_in_shards(inputs: list[Path], prefix: Path, num_shards: int, **options) -> list[Path]:
    for index in range(num_shards):
        tokenize_files(inputs, "byte", prefix, num_workers=0, num_shards=num_shards, shard_index=index, **options)
    return [shard_prefix(prefix, index, num_shards) for index in range(num_shards)]


def assert_identical(prefix: Path, other: Path) -> None:
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{other}{suffix}").read_bytes(), suffix


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("mixed")
    corpus = mixed_corpus(directory / "corpus")
    tokenize_files([corpus], "byte", directory / "whole", num_workers=0)
    return corpus, directory / "whole"


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7, 40, 200])
def test_shards_merged_are_byte_identical_to_one_run(tmp_path: Path, mixed, num_shards: int):
    corpus, whole = mixed
    shards = tokenize_in_shards([corpus], tmp_path / "shard", num_shards)
    merge_corpora(shards, tmp_path / "merged")
    assert_identical(tmp_path / "merged", whole)
    documents = [len(IndexedDataset(shard)) for shard in shards]
    assert sum(documents) == len(TEXTS)
    if num_shards == 200:  # more shards than documents: most are empty, and still written
        assert documents.count(0) >= 200 - len(TEXTS)


def test_every_unit_is_read_by_exactly_one_shard_in_order(mixed):
    corpus, _ = mixed
    files = find_input_files([corpus])
    for num_shards in (2, 5, 13, 64):
        pieces = [piece for index in range(num_shards) for piece in plan_shard(files, num_shards, index)]
        by_file: dict[Path, list] = {}
        for piece in pieces:
            by_file.setdefault(piece.file.path, []).append((piece.start, piece.end))
        assert list(by_file) == [file.path for file in files]  # files in order, none left out
        for path, ranges in by_file.items():
            assert ranges[0][0] == 0 and ranges[-1][1] == float("inf"), path
            assert all(end == start for (_, end), (start, _) in itertools.pairwise(ranges)), path


def test_ten_files_split_sixty_four_ways(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(10):
        texts = [f"file {index} row {row} " * 8 for row in range(64)]
        write_parquet(corpus / f"{index:03d}.parquet", texts, row_groups=[8] * 8)
    files = find_input_files([corpus])
    shards = [plan_shard(files, 64, index) for index in range(64)]
    assert sum(bool(pieces) for pieces in shards) == 64  # every shard gets row groups of its own
    tokenize_files([corpus], "byte", tmp_path / "whole", num_workers=0)
    merge_corpora(tokenize_in_shards([corpus], tmp_path / "shard", 64), tmp_path / "merged")
    assert_identical(tmp_path / "merged", tmp_path / "whole")


def test_one_large_jsonl_file_is_split_by_byte_ranges(tmp_path: Path):
    path = write_jsonl_file(tmp_path / "in.jsonl", [f"line {index} " + "x" * (index % 97) for index in range(3000)])
    tokenize_files([path], "byte", tmp_path / "whole", num_workers=0)
    shards = tokenize_in_shards([path], tmp_path / "shard", 9)
    assert min(len(IndexedDataset(shard)) for shard in shards) > 250
    merge_corpora(shards, tmp_path / "merged")
    assert_identical(tmp_path / "merged", tmp_path / "whole")


def test_a_bad_line_in_a_later_shard_is_named_by_its_line_number(tmp_path: Path):
    lines = [json.dumps({"text": f"line {index}"}) for index in range(2000)]
    lines[1733] = '{"text": broken'
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = invoke("tokenize", "--input", str(path), "--tokenizer", "byte", "--output_prefix", str(tmp_path / "s"),
                    "--num_shards", "4", "--shard_index", "3", "--num_workers", "0")  # fmt: skip
    assert result.exit_code == 2
    assert f"{path}:1734: malformed JSON" in result.stderr


def invoke(*args: str):
    return CliRunner().invoke(main, ["data", *args])


def test_cli_shards_are_named_and_their_json_summaries_add_up(tmp_path: Path, mixed):
    corpus, whole = mixed
    records = []
    for index in range(3):
        result = invoke("tokenize", "--input", str(corpus), "--tokenizer", "byte", "--output_prefix",
                        str(tmp_path / "tok" / "train"), "--num_shards", "3", "--shard_index", str(index),
                        "--num_workers", "0")  # fmt: skip
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.output.strip().splitlines()[-1]))
    assert [record["output_prefix"] for record in records] == [
        str(tmp_path / "tok" / f"train-{index:05d}-of-00003") for index in range(3)
    ]
    assert sum(record["documents"] for record in records) == len(TEXTS)
    assert sum(record["tokens"] for record in records) == IndexedDataset(whole).num_tokens
    assert sum(record["input_bytes"] for record in records) == sum(file.size for file in find_input_files([corpus]))
    result = invoke("merge", "--input", str(tmp_path / "tok" / "train-*-of-00003"), "--output_prefix",
                    str(tmp_path / "merged"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 corpora merged, 120 documents" in result.output
    assert_identical(tmp_path / "merged", whole)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--num_shards", "4", "--shard_index", "4"), "--shard_index 4 is out of range for --num_shards 4"),
        (("--num_shards", "4", "--shard_index", "-1"), "--shard_index -1 is out of range"),
        (("--num_shards", "4"), "--num_shards and --shard_index go together"),
        (("--shard_index", "0"), "--num_shards and --shard_index go together"),
    ],
)
def test_bad_shard_options_are_refused(tmp_path: Path, options: tuple, message: str):
    path = write_jsonl_file(tmp_path / "in.jsonl", ["x"])
    result = invoke("tokenize", "--input", str(path), "--tokenizer", "byte", "--output_prefix", str(tmp_path / "out"),
                    *options)  # fmt: skip
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]


def test_merge_keeps_megatron_documents_of_several_sequences(tmp_path: Path):
    """Foreign files may group sequences into documents; merging offsets their document indices."""
    first = write_corpus(tmp_path / "first", [[1, 2], [3], [4, 5, 6]])
    second = write_corpus(tmp_path / "second", [[7], [8, 9]])
    index = bytearray(Path(f"{first}.idx").read_bytes())
    header = indexed.HEADER_SIZE
    index[header - 8 : header] = (3).to_bytes(8, "little")  # 2 documents: [0, 2), [2, 3)
    del index[-16:-8]
    Path(f"{first}.idx").write_bytes(bytes(index[: header + 3 * 12]) + np.array([0, 2, 3], np.int64).tobytes())
    summary = merge_corpora([first, second], tmp_path / "merged")
    merged = IndexedDataset(tmp_path / "merged")
    assert merged.document_indices.tolist() == [0, 2, 3, 4, 5]
    assert [merged.document(i).tolist() for i in range(len(merged))] == [[1, 2], [3], [4, 5, 6], [7], [8, 9]]
    assert summary.documents == 4 and summary.tokens == 9


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_merge_writes_the_index_in_chunks(tmp_path: Path, mixed, monkeypatch, chunk: int):
    corpus, whole = mixed
    shards = tokenize_in_shards([corpus], tmp_path / "shard", 3)
    monkeypatch.setattr(indexed, "CHECK_CHUNK", chunk)
    merge_corpora(shards, tmp_path / "merged")
    assert_identical(tmp_path / "merged", whole)


def test_merge_refusals(tmp_path: Path):
    small = write_corpus(tmp_path / "small", [[1, 2, 3]])
    wide = write_corpus(tmp_path / "wide", [[1, 2, 3]], dtype=np.int32)
    other = write_corpus(tmp_path / "other", [[4]])
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def merge(*args: str):
        return invoke("merge", *args)

    result = merge("--input", str(small), str(wide), "--output_prefix", str(tmp_path / "out"))
    assert (
        result.exit_code == 2 and "holds int32 tokens but" in result.stderr and "different tokenizers" in result.stderr
    )
    result = merge("--input", str(small), str(other), "--output_prefix", str(small), "--force")
    assert result.exit_code == 2 and f"the output {small} is also an input" in result.stderr
    result = merge("--input", str(small), str(tmp_path / "." / "other"), "--output_prefix", str(tmp_path / "other"))
    assert result.exit_code == 2 and "is also an input" in result.stderr
    result = merge("--input", str(small), str(other), "--output_prefix", str(wide))
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr
    result = merge("--input", str(tmp_path / "nothing-*"), "--output_prefix", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no tokenized corpus matches" in result.stderr
    result = merge("--input", str(small), str(small), "--output_prefix", str(tmp_path / "out"))
    assert result.exit_code == 2 and "named twice" in result.stderr
    Path(f"{other}.bin").write_bytes(b"\x00")  # damaged: found on open, before anything is renamed
    result = merge("--input", str(small), str(other), "--output_prefix", str(tmp_path / "out"))
    assert result.exit_code == 2 and "truncated or does not belong together" in result.stderr
    before[f"{other.name}.bin"] = b"\x00"
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_a_glob_missing_a_shard_is_refused(tmp_path: Path):
    for index in (0, 1, 3):
        write_corpus(shard_prefix(tmp_path / "train", index, 4), [[index]])
    with pytest.raises(Exception, match=r"matches 3 of the 4 shards of .*train: shard 2 missing"):
        resolve_prefixes([str(tmp_path / "train-*")])
    result = invoke("merge", "--input", str(tmp_path / "train-*"), "--output_prefix", str(tmp_path / "out"))
    assert result.exit_code == 2 and "shard 2 missing" in result.stderr
    # Named one by one, a subset is deliberate.
    named = [str(shard_prefix(tmp_path / "train", index, 4)) for index in (0, 1)]
    assert resolve_prefixes(named) == [Path(name) for name in named]


def test_prefixes_from_a_shell_glob_of_both_files(tmp_path: Path):
    prefixes = [write_corpus(shard_prefix(tmp_path / "t", index, 2), [[index]]) for index in range(2)]
    files = [f"{prefix}{suffix}" for prefix in prefixes for suffix in (".bin", ".idx")]
    assert resolve_prefixes(files) == prefixes
    result = invoke("inspect", "--prefix", *files)
    assert result.exit_code == 0, result.output
    assert "prefixes:  2" in result.output and "documents: 2" in result.output


def test_inspect_describes_a_sharded_corpus_as_one(tmp_path: Path, mixed):
    corpus, whole = mixed
    shards = tokenize_in_shards([corpus], tmp_path / "shard", 5)
    result = invoke("inspect", "--prefix", str(tmp_path / "shard-*-of-00005"), "--document", "119")
    assert result.exit_code == 0, result.output
    merged = invoke("inspect", "--prefix", str(whole), "--document", "119")
    assert f"documents: {len(TEXTS)}" in result.output and "prefixes:  5" in result.output
    histogram = [line for line in result.output.splitlines() if line.startswith("  ") and "#" in line]
    assert histogram == [line for line in merged.output.splitlines() if line.startswith("  ") and "#" in line]
    assert sum(int(line.split()[1].replace(",", "")) for line in histogram) == len(TEXTS)
    assert f"| {TEXTS[119]}" in result.output and str(shards[-1]) in result.output


@pytest.mark.slow
def test_the_slurm_array_script_tokenizes_one_shard_per_task(tmp_path: Path, mixed):
    """scripts/slurm_tokenize.sbatch run as SLURM runs each array task (bash, SLURM_ARRAY_TASK_ID set)."""
    corpus, whole = mixed
    for task in range(3):
        environment = {**subprocess_env(), "SLURM_ARRAY_TASK_ID": str(task), "PYTHON": sys.executable}
        result = subprocess.run(
            ["bash", "scripts/slurm_tokenize.sbatch", "3", str(tmp_path / "train"), "--input", str(corpus),
             "--tokenizer", "byte", "--num_workers", "1"],
            cwd=ROOT, env=environment, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1])["shard_index"] == task
    merge_corpora(resolve_prefixes([str(tmp_path / "train-*-of-00003")]), tmp_path / "merged")
    assert_identical(tmp_path / "merged", whole)
