"""``llm_gym evaluate``: the same numbers as training, bits per byte by hand, the JSON file, every layout."""

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from experiment_runs import llm_gym, read_metrics, torchrun
from llm_gym.cli import main
from llm_gym.data.indexed import IndexedDataset
from llm_gym.inference.trained_model import load_trained_model

EOS = 256


def _evaluate(*args: str) -> dict:
    result = llm_gym("evaluate", *args)
    path = result.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    return json.loads(open(path).read())


@pytest.mark.slow
def test_evaluate_loss_equals_the_training_runs_final_val_loss(tiny_run):
    final_val = [line for line in read_metrics(tiny_run / "metrics.jsonl") if line["split"] == "val"][-1]
    report = _evaluate("--checkpoint_path", str(tiny_run), "--prefix", "val", "--max_samples", "8")
    assert report["step"] == final_val["step"] == 6
    assert report["language_modeling"]["val"]["loss"] == pytest.approx(final_val["loss"], rel=1e-6)
    assert report["language_modeling"]["val"]["samples"] == 8


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory):
    """Documents shorter than a sample, some with two-byte characters: samples cross document ends."""
    directory = tmp_path_factory.mktemp("short_documents")
    texts = [f"déjà vu {index}: x = {index * 7}" for index in range(12)]
    (directory / "short.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    llm_gym("data", "tokenize", "--input", str(directory / "short.jsonl"), "--tokenizer", "byte",
            "--output_prefix", str(directory / "short"))  # fmt: skip
    return directory / "short"


@pytest.mark.slow
def test_bits_per_byte_by_hand(tiny_run, short_documents):
    """Byte tokenizer: every target but the end of a document is one byte; their nats / ln 2 / their count."""
    report = _evaluate("--checkpoint_path", str(tiny_run), "--prefix", str(short_documents),
                       "--max_samples", "3", "--micro_batch_size", "2")  # fmt: skip
    trained = load_trained_model(tiny_run)
    tokens = torch.from_numpy(IndexedDataset(short_documents).tokens[: 3 * 32 + 1].astype("int64"))
    inputs, targets = tokens[:-1].view(3, 32), tokens[1:].view(3, 32)
    with torch.no_grad():
        nats = F.cross_entropy(trained.model(inputs).flatten(0, 1), targets.flatten(), reduction="none")
    is_text = targets.flatten() != EOS
    result = report["language_modeling"]["short"]
    assert result["tokens"] == 96 and result["bytes"] == int(is_text.sum()) < 96
    assert result["loss"] == pytest.approx(float(nats.mean()), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(float(nats.mean())), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(float(nats[is_text].sum()) / math.log(2) / int(is_text.sum()))


@pytest.mark.slow
def test_the_report_is_deterministic_and_the_same_on_two_ranks(tiny_run, tmp_path):
    args = ["--checkpoint_path", str(tiny_run / "checkpoints"), "--prefix", "val", "--max_samples", "5"]
    one = llm_gym("evaluate", *args, "--output_path", str(tmp_path / "one.json"))
    again = llm_gym("evaluate", *args, "--output_path", str(tmp_path / "again.json"))
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "again.json").read_bytes()
    assert "val" in one.stdout and "bits/byte" in one.stdout and one.stdout == again.stdout.replace("again", "one")
    torchrun(2, "evaluate", *args, "--output_path", str(tmp_path / "two_ranks.json"))
    single, double = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two_ranks.json"))
    assert double["language_modeling"]["val"]["tokens"] == single["language_modeling"]["val"]["tokens"]
    for key in ("loss", "bits_per_byte"):
        assert double["language_modeling"]["val"][key] == pytest.approx(single["language_modeling"]["val"][key])
    assert single["step"] == 6 and single["config_fingerprint"].startswith("sha256:")
    assert single["checkpoint"].endswith("step_6") and single["format"] == "llm_gym.evaluation/1"


def test_the_default_report_goes_under_the_experiment_directory(tiny_run):
    result = llm_gym("evaluate", "--checkpoint_path", str(tiny_run), "--prefix", "val", "--max_samples", "1")
    path = result.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    assert path.startswith(str(tiny_run / "evaluations" / "step_6_")) and path.endswith(".json")


@pytest.mark.slow
def test_tasks_from_the_command_line(tiny_run, byte_corpus, tmp_path):
    task = tmp_path / "letters.jsonl"
    rows = [{"context": "import json\n", "choices": ["import os", "!!!! ????"], "gold": 0}] * 3
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = llm_gym("evaluate", "--checkpoint_path", str(tiny_run), "--tasks", str(task),
                     "--tasks", f"lines=code_lines:{byte_corpus / 'train.jsonl'}", "--max_examples", "20",
                     "--output_path", str(tmp_path / "report.json"))  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["language_modeling"] == {}
    assert set(report["tasks"]) == {"letters", "lines"}
    assert report["tasks"]["letters"]["examples"] == 3 and report["tasks"]["lines"]["examples"] == 20
    assert report["tasks"]["letters"]["accuracy"] in (0.0, 1.0) and report["tasks"]["lines"]["chance"] == 0.25
    assert "accuracy_norm" in result.stdout and "lines" in result.stdout


def test_harness_tasks_without_lm_eval_say_what_to_install(tiny_run, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a)
    )
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint_path", str(tiny_run), "--harness_tasks", "arc_easy"])
    assert result.exit_code == 2 and "pip install 'llm_gym[harness]'" in result.stderr
