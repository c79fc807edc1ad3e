"""metrics.jsonl: the keys of docs/contract.md, one flushed line per record, and truncation on resume."""

import json

import pytest

from llm_gym.errors import UserError
from llm_gym.logging_broker import MetricsRecord
from llm_gym.logging_broker.metrics_file import MetricsJsonl, MetricsJsonlConfig

TRAIN = {"loss": 3.25, "lr": 6e-4, "grad_norm": 0.75, "tokens_seen": 4096, "tokens_per_s": 1234.5}


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_run(experiment_dir, steps, resume_step=None, **config) -> MetricsJsonl:
    logger = MetricsJsonl(MetricsJsonlConfig(**config), experiment_dir, {}, resume_step)
    for step in steps:
        logger.consume(MetricsRecord(step, "train", {**TRAIN, "tokens_seen": 4096 * step}))
        if step % 2 == 0:
            logger.consume(MetricsRecord(step, "val", {"loss": 3.5}))
    logger.close()
    return logger


def test_each_record_is_one_line_with_step_split_and_metrics_written_at_once(tmp_path):
    logger = MetricsJsonl(MetricsJsonlConfig(), tmp_path, {}, None)
    logger.consume(MetricsRecord(1, "train", TRAIN))
    # Flushed per line: readable while the run is still going.
    assert read_lines(tmp_path / "metrics.jsonl") == [{"step": 1, "split": "train", **TRAIN}]
    logger.consume(MetricsRecord(1, "val", {"loss": 3.5}))
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert list(json.loads(lines[0])) == ["step", "split", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s"]
    assert json.loads(lines[1]) == {"step": 1, "split": "val", "loss": 3.5}


def test_integers_stay_integers_and_non_finite_values_become_null(tmp_path):
    logger = MetricsJsonl(MetricsJsonlConfig(), tmp_path, {}, None)
    logger.consume(MetricsRecord(2, "train", {"loss": float("nan"), "grad_norm": float("inf"), "tokens_seen": 7}))
    logger.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert line == '{"step": 2, "split": "train", "loss": null, "grad_norm": null, "tokens_seen": 7}\n'


def test_a_fresh_run_replaces_an_old_file(tmp_path):
    write_run(tmp_path, range(1, 7))
    write_run(tmp_path, range(1, 3))
    assert [(line["step"], line["split"]) for line in read_lines(tmp_path / "metrics.jsonl")] == [
        (1, "train"),
        (2, "train"),
        (2, "val"),
    ]


def test_a_resumed_run_drops_the_lines_after_its_checkpoint_and_continues(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_run(tmp_path, range(1, 6))  # killed at step 5, last checkpoint at step 2
    with path.open("a") as file:
        file.write('{"step": 6, "split": "tr')  # torn by the kill
    write_run(tmp_path, range(3, 7), resume_step=2)
    steps = [(line["step"], line["split"]) for line in read_lines(path)]
    assert steps == [
        (1, "train"), (2, "train"), (2, "val"),
        (3, "train"), (4, "train"), (4, "val"), (5, "train"), (6, "train"), (6, "val"),
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_resuming_without_a_file_starts_one_under_the_configured_name(tmp_path):
    experiment_dir = tmp_path / "not" / "yet"
    logger = write_run(experiment_dir, [3], resume_step=2, filename="train_metrics.jsonl")
    assert logger.path == experiment_dir / "train_metrics.jsonl"
    assert [line["step"] for line in read_lines(logger.path)] == [3]


def test_a_full_disk_is_a_user_error_naming_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    logger = MetricsJsonl(MetricsJsonlConfig(), tmp_path, {}, None)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device"):
        logger.consume(MetricsRecord(1, "train", TRAIN))
    with pytest.raises(UserError, match="No space left on device"):
        logger.close()
