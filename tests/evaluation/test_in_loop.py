"""Evaluators in the training loop: task accuracy and bits per byte in metrics.jsonl, validated with the config."""

import json

import pytest
from click.testing import CliRunner

from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides
from llm_gym.assembly import make_registry
from llm_gym.cli import main
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError

TASK_ROWS = [{"context": "def f(x):\n", "choices": ["    return x", "!!?? ]]]]"], "gold": 0}] * 4

EVALUATORS = (
    "[{type_hint: MultipleChoice, config: {name: returns, path: TASK, batch_size: 3}},"
    " {type_hint: BitsPerByte, config: {split: val}}]"
)


@pytest.mark.slow
def test_evaluators_log_accuracy_and_bits_per_byte_and_leave_training_unchanged(tiny_run, byte_corpus, tmp_path):
    task = tmp_path / "returns.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for row in TASK_ROWS))
    experiment = tmp_path / "experiment"
    overrides = tiny_overrides(byte_corpus, experiment, **{"model.config.n_layer": 2})
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides,
            f"evaluation.evaluators={EVALUATORS.replace('TASK', str(task))}")  # fmt: skip
    lines = read_metrics(experiment / "metrics.jsonl")
    plain = read_metrics(tiny_run / "metrics.jsonl")
    train, plain_train = ([line["loss"] for line in run if line["split"] == "train"] for run in (lines, plain))
    assert train == plain_train
    val, plain_val = ([line for line in run if line["split"] == "val"] for run in (lines, plain))
    assert [line["step"] for line in val] == [line["step"] for line in plain_val] == [3, 6]  # one line a step
    for line, plain_line in zip(val, plain_val, strict=True):
        assert line["loss"] == pytest.approx(plain_line["loss"], rel=1e-6)
        assert 0 < line["bits_per_byte"] < line["loss"] / 0.69 * 1.01  # byte tokens: bpb ≈ loss / ln 2
    task_lines = [line for line in lines if line["split"] == "returns"]
    assert [line["step"] for line in task_lines] == [3, 6]
    assert all(set(line) == {"step", "split", "accuracy", "accuracy_norm"} for line in task_lines)
    assert all(line["accuracy"] in (0.0, 1.0) for line in task_lines)


@pytest.mark.parametrize(
    ("evaluators", "message"),
    [
        ("[{type_hint: BitsPerByte, config: {split: test}}]", r"config\.split: 'test' is not a split of data"),
        ("[{type_hint: MultipleChoice, config: {name: val, path: t.jsonl}}]", r"'val' is already the name of a split"),
        (
            "[{type_hint: MultipleChoice, config: {name: a, path: t.jsonl}},"
            " {type_hint: MultipleChoice, config: {name: a, path: u.jsonl}}]",
            r"evaluators\[1\]: two evaluators report the split 'a'",
        ),
        ("[{type_hint: MultipleChoice, config: {name: a, path: t.jsonl, format: mmlu}}]", r"config\.format"),
        ("[{type_hint: Perplexity}]", r"unknown type_hint 'Perplexity' for 'evaluator'"),
    ],
)
def test_bad_evaluators_are_config_errors(evaluators, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, TrainingAppConfig, [f"evaluation.evaluators={evaluators}"], registry=make_registry())


def test_validate_builds_the_evaluators(tmp_path):
    task = tmp_path / "returns.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for row in TASK_ROWS))
    result = _validate(f"evaluation.evaluators={EVALUATORS.replace('TASK', str(task))}")
    assert "evaluation returns: MultipleChoiceEvaluator, 4 examples" in result.stdout
    assert "evaluation val: BitsPerByteEvaluator" in result.stdout
    absent = EVALUATORS.replace("TASK", str(tmp_path / "absent.jsonl"))
    missing = _validate(f"evaluation.evaluators={absent}")
    assert "evaluation: not checked here (task file" in missing.stdout


def _validate(*overrides: str):
    result = CliRunner().invoke(main, ["validate", "--config_file_path", str(TINY_CONFIG), *overrides])
    assert result.exit_code == 0, result.output
    return result
