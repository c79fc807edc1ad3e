"""``llm_gym data tokenize`` and ``inspect``: contents, every kind of bad input, and no half-written outputs."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus_helpers import write_jsonl

from llm_gym.cli import main
from llm_gym.data import documents, tokenization
from llm_gym.data.indexed import IndexedDataset
from llm_gym.data.tokenization import tokenize_files
from llm_gym.data.tokenizer_training import train_bpe_tokenizer
from llm_gym.data.tokenizers import load_tokenizer

TEXTS = ["def f(x):\n    return x\n", "héllo wörld ✓", "a", "class C:\n    pass\n" * 20]


def invoke(*args: str):
    return CliRunner().invoke(main, ["data", *args])


def tokenize(inputs: list[Path], output_prefix: Path, *options: str):
    input_args = [arg for path in inputs for arg in ("--input", str(path))]
    return invoke("tokenize", *input_args, "--output_prefix", str(output_prefix), *options)


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    path = directory / "tokenizer.json"
    train_bpe_tokenizer([write_jsonl(directory / "train.jsonl", TEXTS * 5)], 300, path)
    return path


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_documents_round_trip_with_eos(tmp_path: Path, tokenizer: str, bpe_tokenizer: Path):
    spec = "byte" if tokenizer == "byte" else str(bpe_tokenizer)
    result = tokenize([write_jsonl(tmp_path / "in.jsonl", TEXTS)], tmp_path / "out", "--tokenizer", spec)
    assert result.exit_code == 0, result.output
    assert f"{len(TEXTS)} documents" in result.output
    corpus, encoder = IndexedDataset(tmp_path / "out"), load_tokenizer(spec)
    assert [corpus.document(i).tolist() for i in range(len(corpus))] == [
        [*encoder.encode(text), encoder.eos_id] for text in TEXTS
    ]
    assert [encoder.decode(corpus.document(i)[:-1].tolist()) for i in range(len(corpus))] == TEXTS
    assert files_in(tmp_path) == ["in.jsonl", "out.bin", "out.idx"]


def test_gzip_and_txt_inputs_in_the_order_given(tmp_path: Path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as file:
        file.write(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}))  # blank line, no final \n
    (tmp_path / "b.txt").write_text("the whole\nfile\n", encoding="utf-8")
    result = tokenize(
        [tmp_path / "a.jsonl.gz", tmp_path / "b.txt"], tmp_path / "out", "--tokenizer", "byte", "--text_key", "body"
    )
    assert result.exit_code == 0, result.output
    corpus = IndexedDataset(tmp_path / "out")
    assert [bytes(corpus.document(i)[:-1].tolist()).decode() for i in range(3)] == [
        "first",
        "second",
        "the whole\nfile\n",
    ]


def test_worker_processes_write_the_same_file_as_one_process(tmp_path: Path, bpe_tokenizer: Path, monkeypatch):
    # Many small blocks, so results from two workers must be put back in input order.
    monkeypatch.setattr(documents, "BLOCK_BYTES", 4096)
    texts = [f"{index}: " + TEXTS[index % len(TEXTS)] * (1 + index % 7) for index in range(3000)]
    inputs = [write_jsonl(tmp_path / "in.jsonl", texts)]
    tokenize_files(inputs, str(bpe_tokenizer), tmp_path / "serial", num_workers=0)
    tokenize_files(inputs, str(bpe_tokenizer), tmp_path / "parallel", num_workers=2)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"serial{suffix}").read_bytes() == (tmp_path / f"parallel{suffix}").read_bytes()


class _PendingBlocks(deque):
    """The tokenizer's queue of blocks in flight, noting the most it ever held."""

    most = 0

    def append(self, item) -> None:
        super().append(item)
        _PendingBlocks.most = max(_PendingBlocks.most, len(self))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_blocks_in_flight_are_bounded_by_the_workers_not_the_input(tmp_path: Path, monkeypatch, num_workers: int):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 8192)
    monkeypatch.setattr(tokenization, "deque", _PendingBlocks)
    monkeypatch.setattr(_PendingBlocks, "most", 0)
    path = write_jsonl(tmp_path / "in.jsonl", [f"{index} " + "x" * 1000 for index in range(2000)])
    blocks = []
    tokenize_files([path], "byte", tmp_path / "out", num_workers=num_workers, on_progress=blocks.append)
    bound = 2 * num_workers + 1 if num_workers else 1
    assert path.stat().st_size > 2_000_000 and len(blocks) > 200
    assert _PendingBlocks.most == bound


def test_progress_reports_add_up_to_the_summary(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 256)
    path = write_jsonl(tmp_path / "in.jsonl", TEXTS * 10)
    path.write_bytes(path.read_bytes() + b'{"text": ""}\n')  # skipped: counted in bytes, not documents
    reports = []
    summary = tokenize_files(
        [path], "byte", tmp_path / "out", num_workers=0, on_error="skip", on_progress=reports.append
    )
    assert len(reports) > 1
    assert sum(report.documents for report in reports) == summary.documents == len(TEXTS) * 10
    assert sum(report.tokens for report in reports) == summary.tokens == IndexedDataset(tmp_path / "out").num_tokens
    assert sum(report.input_bytes for report in reports) == summary.input_bytes == path.stat().st_size


BAD_LINES = {
    "malformed JSON": b'{"text": "unterminated\n',
    "no key 'text'": b'{"content": "x"}\n',
    "'text' is not a string": b'{"text": 3}\n',
    "not a JSON object": b'["text"]\n',
    "invalid UTF-8": b'{"text": "caf\xe9"}\n',
    "invalid text": b'{"text": "lone \\ud800 surrogate"}\n',
    "empty document": b'{"text": ""}\n',
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_bad_line_fails_naming_file_and_line_and_leaves_no_output(tmp_path: Path, reason: str, num_workers: str):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "good"}\n' + BAD_LINES[reason] + b'{"text": "good"}\n')
    result = tokenize([path], tmp_path / "out", "--tokenizer", "byte", "--num_workers", num_workers)
    assert result.exit_code == 2
    assert f"error: {path}:2: {reason}" in result.stderr
    assert "--on_error skip" in result.stderr
    assert "Traceback" not in result.output
    assert files_in(tmp_path) == ["in.jsonl"]


def test_skip_counts_bad_lines_and_keeps_good_ones(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"".join([b'{"text": "one"}\n', *BAD_LINES.values(), BAD_LINES["invalid UTF-8"], b'{"text": "two"}\n'])
    )
    result = tokenize([path], tmp_path / "out", "--tokenizer", "byte", "--on_error", "skip")
    assert result.exit_code == 0, result.output
    assert f"skipped {len(BAD_LINES) + 1} documents: 2 invalid UTF-8" in result.output
    assert "1 malformed JSON" in result.output and "1 empty document" in result.output
    corpus = IndexedDataset(tmp_path / "out")
    assert [bytes(corpus.document(i)[:-1].tolist()) for i in range(len(corpus))] == [b"one", b"two"]


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_a_block_whose_every_line_is_skipped_adds_no_token(tmp_path: Path, monkeypatch, tokenizer, bpe_tokenizer):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 64)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "one"}\n' + BAD_LINES["empty document"] * 20 + b'{"text": "two"}\n')
    spec = "byte" if tokenizer == "byte" else str(bpe_tokenizer)
    result = tokenize([path], tmp_path / "out", "--tokenizer", spec, "--on_error", "skip", "--num_workers", "0")
    assert result.exit_code == 0, result.output
    corpus, encoder = IndexedDataset(tmp_path / "out"), load_tokenizer(spec)
    assert corpus.num_tokens == len(encoder.encode("one")) + len(encoder.encode("two")) + 2


@pytest.mark.parametrize(("content", "message"), [(b"caf\xe9", "invalid UTF-8 (at byte 3)"), (b"", "empty document")])
def test_bad_txt_file_fails_naming_the_file(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    result = tokenize([path], tmp_path / "out", "--tokenizer", "byte", "--num_workers", "0")
    assert result.exit_code == 2
    assert f"error: {path}: {message}" in result.stderr
    assert files_in(tmp_path) == ["in.txt"]


def test_all_documents_skipped_is_an_error(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(BAD_LINES["empty document"])
    result = tokenize([path], tmp_path / "out", "--tokenizer", "byte", "--on_error", "skip")
    assert result.exit_code == 2
    assert "no documents in the input (all were skipped)" in result.stderr
    assert files_in(tmp_path) == ["in.jsonl"]


def test_existing_output_is_refused_unless_forced(tmp_path: Path):
    inputs = [write_jsonl(tmp_path / "in.jsonl", ["new"])]
    (tmp_path / "out.idx").write_bytes(b"old")
    result = tokenize(inputs, tmp_path / "out", "--tokenizer", "byte")
    assert result.exit_code == 2
    assert f"{tmp_path / 'out.idx'} exists; pass --force" in result.stderr
    assert (tmp_path / "out.idx").read_bytes() == b"old"
    assert tokenize(inputs, tmp_path / "out", "--tokenizer", "byte", "--force").exit_code == 0
    assert IndexedDataset(tmp_path / "out").document(0).tolist() == [*b"new", 256]


def test_an_output_that_is_the_tokenizer_file_is_refused_even_when_forced(tmp_path: Path, bpe_tokenizer: Path):
    tokenizer = tmp_path / "out.bin"
    tokenizer.write_bytes(bpe_tokenizer.read_bytes())  # a tokenizer.json by another name
    inputs = [write_jsonl(tmp_path / "in.jsonl", ["new"])]
    result = tokenize(inputs, tmp_path / "out", "--tokenizer", str(tokenizer), "--force")
    assert result.exit_code == 2
    assert f"{tokenizer} is also an input of this command ({tokenizer})" in result.stderr
    assert tokenizer.read_bytes() == bpe_tokenizer.read_bytes()
    assert files_in(tmp_path) == ["in.jsonl", "out.bin"]


@pytest.mark.parametrize(
    ("make_input", "options", "message"),
    [
        (lambda d: d / "missing.jsonl", (), "missing.jsonl: no such file"),
        (lambda d: write_jsonl(d / "in.csv", ["x"]), (), "in.csv: unsupported input"),
        (lambda d: write_jsonl(d / "in.jsonl", ["x"]), ("--tokenizer", "nope.json"), "nope.json: no such tokenizer"),
        (lambda d: (d / "in.jsonl.gz").write_bytes(b"not gzip") and d / "in.jsonl.gz", (), "cannot decompress"),
    ],
)
def test_unusable_inputs_fail_cleanly(tmp_path: Path, make_input, options, message: str):
    path = make_input(tmp_path)
    before = files_in(tmp_path)
    result = tokenize([path], tmp_path / "out", *(options or ("--tokenizer", "byte")), "--num_workers", "0")
    assert result.exit_code == 2
    assert message in result.stderr
    assert files_in(tmp_path) == before


def test_invalid_tokenizer_file_fails_cleanly(tmp_path: Path):
    (tmp_path / "tokenizer.json").write_text("{}")
    inputs = [write_jsonl(tmp_path / "in.jsonl", ["x"])]
    result = tokenize(inputs, tmp_path / "out", "--tokenizer", str(tmp_path / "tokenizer.json"))
    assert result.exit_code == 2
    assert "not a valid Hugging Face tokenizer.json" in result.stderr
    assert files_in(tmp_path) == ["in.jsonl", "tokenizer.json"]


def test_interrupted_run_leaves_no_output(tmp_path: Path):
    inputs = [write_jsonl(tmp_path / "in.jsonl", ["x"])]

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_files(inputs, "byte", tmp_path / "out", num_workers=0, on_progress=interrupt)
    assert files_in(tmp_path) == ["in.jsonl"]


def test_inspect_prints_counts_and_a_decoded_sample(tmp_path: Path, bpe_tokenizer: Path):
    inputs = [write_jsonl(tmp_path / "in.jsonl", TEXTS)]
    assert tokenize(inputs, tmp_path / "byte", "--tokenizer", "byte").exit_code == 0
    result = invoke("inspect", "--prefix", str(tmp_path / "byte"))
    assert result.exit_code == 0, result.output
    assert "documents: 4" in result.output and "dtype:     uint16" in result.output
    assert "| def f(x):" in result.output
    assert tokenize(inputs, tmp_path / "bpe", "--tokenizer", str(bpe_tokenizer)).exit_code == 0
    result = invoke("inspect", "--prefix", str(tmp_path / "bpe"), "--tokenizer", str(bpe_tokenizer))
    assert "| def f(x):" in result.output


def test_inspect_rejects_a_truncated_corpus(tmp_path: Path):
    assert tokenize([write_jsonl(tmp_path / "in.jsonl", TEXTS)], tmp_path / "out", "--tokenizer", "byte").exit_code == 0
    (tmp_path / "out.bin").write_bytes((tmp_path / "out.bin").read_bytes()[:10])
    result = invoke("inspect", "--prefix", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "truncated or does not belong together" in result.stderr


def test_lines_longer_than_a_block_and_line_numbers_across_blocks(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(documents, "BLOCK_BYTES", 16)
    texts = ["x" * 100, "short", "y" * 40]
    path = write_jsonl(tmp_path / "in.jsonl", texts)
    path.write_bytes(path.read_bytes() + b"{bad\n")
    blocks = list(documents.read_blocks(path))
    assert len(blocks) > 1
    assert [documents.parse_block(block, "text") for block in blocks][-1][1][0].line == 4
    assert [text for block in blocks for text in documents.parse_block(block, "text")[0]] == texts


_KILLED_RUN = """
import sys, time
from pathlib import Path
from llm_gym.data.tokenization import tokenize_files

def stall(progress):
    Path(sys.argv[2]).touch()
    time.sleep(60)

tokenize_files([sys.argv[1]], "byte", sys.argv[3], num_workers=0, on_progress=stall)
"""


def test_killed_run_leaves_no_file_under_a_valid_name(tmp_path: Path):
    inputs = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    started = tmp_path / "started"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(inputs), str(started), str(tmp_path / "out")])
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert started.exists()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert (tmp_path / "out.bin.incomplete").exists()
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.idx").exists()


def test_sigterm_stops_workers_and_leaves_no_output(tmp_path: Path, bpe_tokenizer: Path):
    """A cluster's SIGTERM mid-run: partial outputs removed, worker processes stopped, no traceback."""
    inputs = write_jsonl(tmp_path / "in.jsonl", [TEXTS[0] * 40] * 40_000)  # seconds of work for 2 workers
    command = [sys.executable, "-m", "llm_gym", "data", "tokenize", "--input", str(inputs), "--tokenizer",
               str(bpe_tokenizer), "--output_prefix", str(tmp_path / "out"), "--num_workers", "2"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.bin.incomplete"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0):  # the workers are encoding
        assert child.poll() is None and time.monotonic() < deadline, "tokenize ended before it could be stopped"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 1 and "Aborted!" in stderr and "Traceback" not in stderr, stderr
    assert files_in(tmp_path) == ["in.jsonl"]
