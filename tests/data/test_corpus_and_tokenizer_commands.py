"""``llm_gym data demo_corpus`` and ``train_tokenizer``."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus_helpers import write_jsonl

from llm_gym.cli import main
from llm_gym.data import demo_corpus
from llm_gym.data.demo_corpus import split_of, write_demo_corpus
from llm_gym.data.tokenizers import load_tokenizer


def invoke(*args: str):
    return CliRunner().invoke(main, ["data", *args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def fake_stdlib(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    for relative, content in {
        "os.py": "import sys\n",
        "json/decoder.py": "def decode(): ...\n",
        "json/__init__.py": "",
        "test/test_os.py": "assert True\n",
        "idlelib/idle_test/test_x.py": "pass\n",
        "site-packages/numpy/core.py": "x = 1\n",
        "latin.py": b"s = '\xe9'\n",
        "README.txt": "not python\n",
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def test_interrupted_demo_corpus_leaves_earlier_outputs_and_no_partial_files(
    tmp_path: Path, fake_stdlib: Path, monkeypatch
):
    output = tmp_path / "out"
    write_demo_corpus(output, root=fake_stdlib)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    real_split_of = demo_corpus.split_of

    def interrupt_after_the_first_document(relative_path: str) -> str:
        if relative_path != "json/decoder.py":
            raise KeyboardInterrupt
        return real_split_of(relative_path)

    monkeypatch.setattr(demo_corpus, "split_of", interrupt_after_the_first_document)
    with pytest.raises(KeyboardInterrupt):
        write_demo_corpus(output, force=True, root=fake_stdlib)
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before


def test_demo_corpus_keeps_library_sources_only_split_by_path(tmp_path: Path, fake_stdlib: Path):
    summary = write_demo_corpus(tmp_path / "out", root=fake_stdlib)
    records = {split: read_jsonl(tmp_path / "out" / f"{split}.jsonl") for split in ("train", "val", "test")}
    paths = {record["path"]: split for split, split_records in records.items() for record in split_records}
    assert paths == {"json/decoder.py": split_of("json/decoder.py"), "os.py": split_of("os.py")}
    assert summary.skipped == 2  # the empty __init__.py and the latin-1 file
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_split_is_a_fixed_function_of_the_path():
    splits = [split_of(f"pkg/module_{i}.py") for i in range(2000)]
    assert abs(splits.count("train") / 2000 - 0.9) < 0.03
    assert splits.count("val") > 50 and splits.count("test") > 50
    assert split_of("os.py") == split_of("os.py")


def test_demo_corpus_command_on_this_python(tmp_path: Path):
    result = invoke("demo_corpus", "--output_dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    train = read_jsonl(tmp_path / "train.jsonl")
    assert len(train) > 100 and all(record["text"] for record in train)
    assert not any("/test/" in f"/{record['path']}" or "site-packages" in record["path"] for record in train)
    again = invoke("demo_corpus", "--output_dir", str(tmp_path))
    assert again.exit_code == 2 and "train.jsonl exists; pass --force" in again.stderr


def test_train_tokenizer_command(tmp_path: Path):
    texts = ["def add(a, b):\n    return a + b\n", "naïve café ✓\n"] * 20
    inputs = write_jsonl(tmp_path / "in.jsonl", texts, key="body")
    output = tmp_path / "tok" / "tokenizer.json"
    args = ("train_tokenizer", "--input", str(inputs), "--vocab_size", "300", "--output_path", str(output))
    result = invoke(*args, "--text_key", "body")
    assert result.exit_code == 0, result.output
    tokenizer = load_tokenizer(output)
    assert 257 < tokenizer.vocab_size <= 300  # a tiny corpus may run out of merges
    assert f"{tokenizer.vocab_size} tokens" in result.output
    assert tokenizer.decode(tokenizer.encode(texts[1] + "unseen ☃")) == texts[1] + "unseen ☃"
    assert tokenizer.decode([tokenizer.eos_id]) == "<|endoftext|>"
    # A document quoting the end-of-document token is text: only the writer's own EOS ends it. A prompt reads
    # the token as Hugging Face tokenizers (and so the exported one) do.
    quoting = "see <|endoftext|> here"
    tokens, _ = tokenizer.encode_batch_to_array([quoting], np.dtype(np.uint16))
    assert tokens.tolist().count(tokenizer.eos_id) == 1 and tokens[-1] == tokenizer.eos_id
    assert tokenizer.decode(tokens[:-1].tolist()) == quoting
    assert tokenizer.encode(quoting).count(tokenizer.eos_id) == 1
    again = invoke(*args, "--text_key", "body")
    assert again.exit_code == 2 and "tokenizer.json exists; pass --force" in again.stderr
    assert invoke(*args, "--text_key", "body", "--force").exit_code == 0


@pytest.mark.parametrize(
    ("lines", "options", "message"),
    [
        (b'{"text": "ok"}\n{oops\n', (), "in.jsonl:2: malformed JSON"),
        (b'{"text": "ok"}\n', ("--text_key", "body"), "in.jsonl:1: no key 'body'"),
        (b'{"text": "ok"}\n', ("--vocab_size", "100"), "--vocab_size must be at least 257"),
        (b"", (), "no documents in the input"),
    ],
)
def test_train_tokenizer_bad_input(tmp_path: Path, lines: bytes, options: tuple, message: str):
    (tmp_path / "in.jsonl").write_bytes(lines)
    output = tmp_path / "tokenizer.json"
    vocab = () if "--vocab_size" in options else ("--vocab_size", "300")
    result = invoke(
        "train_tokenizer", "--input", str(tmp_path / "in.jsonl"), "--output_path", str(output), *vocab, *options
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]


def test_train_tokenizer_into_a_read_only_directory_is_one_line(tmp_path: Path, monkeypatch):
    """The tokenizers library reported it as a bare Exception; written by Python, it is an OSError naming the file."""
    inputs = write_jsonl(tmp_path / "in.jsonl", ["def add(a, b):\n    return a + b\n"] * 20)
    output = tmp_path / "tokenizer.json"

    def read_only(path: Path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(Path, "write_text", read_only)
    result = invoke("train_tokenizer", "--input", str(inputs), "--vocab_size", "300", "--output_path", str(output))
    assert result.exit_code == 2
    assert result.stderr == f"error: cannot write {output}: Read-only file system\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]


def test_train_tokenizer_refuses_an_output_hard_linked_to_its_input(tmp_path: Path):
    inputs = write_jsonl(tmp_path / "in.jsonl", ["def add(a, b):\n    return a + b\n"] * 20)
    output = tmp_path / "tokenizer.json"
    os.link(inputs, output)
    before = inputs.read_bytes()
    result = invoke(
        "train_tokenizer", "--input", str(inputs), "--vocab_size", "300", "--output_path", str(output), "--force"
    )
    assert result.exit_code == 2
    assert "tokenizer.json is also an input of this command" in result.stderr
    assert inputs.read_bytes() == before
