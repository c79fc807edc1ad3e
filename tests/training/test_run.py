"""`llm_gym run` end to end: real processes, real files, gloo."""

import errno
import math
import os
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides, torchrun
from llm_gym.cli import DEBUG_ENV, main
from llm_gym.training.run import run_training

SPEC_TRAIN_KEYS = {"step", "split", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s"}


def losses(metrics: list[dict]) -> list[tuple[int, str, float]]:
    return [(line["step"], line["split"], line["loss"]) for line in metrics]


@pytest.fixture(scope="module")
def single_process_run(byte_corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("single")
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, output_dir))
    return output_dir


def test_single_process_run_writes_the_experiment_directory(single_process_run):
    metrics = read_metrics(single_process_run / "metrics.jsonl")
    train = [line for line in metrics if line["split"] == "train"]
    assert [line["step"] for line in train] == [1, 2, 3, 4, 5, 6]
    phases = {f"phase_{name}_s" for name in ("data", "step", "optimizer", "device_wait", "evaluation", "checkpoint")}
    assert all(set(line) == SPEC_TRAIN_KEYS | {"loss_step"} | phases for line in train)
    assert [line["step"] for line in metrics if line["split"] == "val"] == [3, 6]
    assert train[-1]["tokens_seen"] == 6 * 4 * 32
    resolved = yaml.safe_load((single_process_run / "config.yaml").read_text())
    assert resolved["training"]["max_steps"] == 6
    assert resolved["lr_scheduler"]["config"]["total_steps"] == 6  # interpolation resolved after overrides
    latest = (single_process_run / "checkpoints" / "latest").read_text().strip()
    assert latest.endswith("step_6")


@pytest.mark.slow
def test_the_same_config_gives_identical_losses(single_process_run, byte_corpus, tmp_path):
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, tmp_path))
    expected = losses(read_metrics(single_process_run / "metrics.jsonl"))
    assert losses(read_metrics(tmp_path / "metrics.jsonl")) == expected


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_a_compiled_run_trains_like_an_eager_one_and_its_checkpoints_load_eagerly(
    single_process_run, byte_corpus, tmp_path, scope
):
    """``training.compile`` compiles each block or the whole forward with inductor: the same losses up to the
    float rounding of fused kernels, and checkpoints an eager run continues from."""
    compiled = tmp_path / "compiled"
    llm_gym(
        "run",
        "--config_file_path",
        str(TINY_CONFIG),
        *tiny_overrides(byte_corpus, compiled, **{"training.compile": scope}),
    )
    expected = losses(read_metrics(single_process_run / "metrics.jsonl"))
    actual = losses(read_metrics(compiled / "metrics.jsonl"))
    assert [(step, split) for step, split, _ in actual] == [(step, split) for step, split, _ in expected]
    for (_, _, got), (_, _, want) in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    branch = {"checkpointing.branch_from": compiled / "checkpoints" / "step_3"}
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, tmp_path / "eager", **branch))
    continued = losses(read_metrics(tmp_path / "eager" / "metrics.jsonl"))
    after_branch = [entry for entry in expected if entry[0] > 3]
    assert [(step, split) for step, split, _ in continued] == [(step, split) for step, split, _ in after_branch]
    for (_, _, got), (_, _, want) in zip(continued, after_branch, strict=True):
        assert got == pytest.approx(want, abs=1e-3)


def _matmul_precisions_after_runs(corpus, output_dir) -> list[str]:
    after = []
    for index, settings in enumerate([{"training.float32_matmul_precision": "medium"}, {}]):
        torch.set_float32_matmul_precision("high")  # what the process had before
        run_training(TINY_CONFIG, tiny_overrides(corpus, output_dir / str(index), **settings))
        after.append(torch.get_float32_matmul_precision())
    return after


def test_each_run_sets_its_own_float32_matmul_precision(byte_corpus, tmp_path):
    # Process-wide in torch: a run after another in one process (a sweep, a benchmark) must not inherit it.
    assert run_on_ranks(_matmul_precisions_after_runs, 1, byte_corpus, tmp_path)[0] == ["medium", "highest"]


@pytest.mark.slow
@pytest.mark.cross_version
@pytest.mark.parametrize(("strategy", "micro_batch_size", "accumulation"), [("FSDP2", 2, 1), ("DDP", 1, 2)])
def test_two_ranks_give_the_losses_of_one_rank(
    single_process_run, byte_corpus, tmp_path, strategy, micro_batch_size, accumulation
):
    """The same global batch of 4 (1 rank × micro 4) split otherwise: training and evaluation losses agree."""
    if strategy == "FSDP2":
        skip_unless_gloo_sharding_works()
    layout = {
        "training.micro_batch_size": micro_batch_size,
        "training.gradient_accumulation_steps": accumulation,
        "parallelism.type_hint": strategy,
    }
    overrides = tiny_overrides(byte_corpus, tmp_path, **layout)
    torchrun(2, "run", "--config_file_path", str(TINY_CONFIG), *overrides)
    expected = losses(read_metrics(single_process_run / "metrics.jsonl"))
    actual = losses(read_metrics(tmp_path / "metrics.jsonl"))
    assert [(step, split) for step, split, _ in actual] == [(step, split) for step, split, _ in expected]
    for (_, _, got), (_, _, want) in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.global_batch_size=5"], "global_batch_size (5) must equal"),
        (["parallelism.type_hint=HSDP", "parallelism.config.replicate_degree=3"], "replicate_degree"),
    ],
)
def test_inconsistent_parallel_settings_are_refused(byte_corpus, tmp_path, overrides, message):
    result = llm_gym(
        "run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, tmp_path), *overrides, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_corpus_beyond_the_model_vocabulary_is_refused_with_a_message(byte_corpus, tmp_path):
    # No tokenizer file to compare with: the ids themselves are checked as batches arrive.
    overrides = tiny_overrides(
        byte_corpus, tmp_path, **{"model.config.vocab_size": 100, "data.tokenizer": tmp_path / "absent.json"}
    )  # letters are >= 97
    result = llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides, check=False)
    assert result.returncode == 2, result.stderr
    assert "in a train batch is outside the model's vocabulary of 100" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_fresh_run_refuses_a_directory_with_checkpoints(single_process_run, byte_corpus):
    result = llm_gym(
        "run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, single_process_run), check=False
    )
    assert result.returncode == 2
    assert "already holds checkpoints" in result.stderr and "--resume auto" in result.stderr


@pytest.mark.slow
def test_warm_start_loads_weights_and_starts_a_fresh_schedule(single_process_run, byte_corpus, tmp_path):
    checkpoint = single_process_run / "checkpoints" / "step_6"
    overrides = tiny_overrides(byte_corpus, tmp_path, **{"checkpointing.warm_start_from": checkpoint})
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides)
    fresh = read_metrics(single_process_run / "metrics.jsonl")
    warm = read_metrics(tmp_path / "metrics.jsonl")
    assert warm[0]["step"] == 1 and warm[0]["lr"] == fresh[0]["lr"]  # the schedule starts over
    assert warm[0]["loss"] < fresh[0]["loss"] - 0.5  # the weights do not
    bad = llm_gym(
        "run", "--config_file_path", str(TINY_CONFIG),
        *tiny_overrides(byte_corpus, tmp_path / "bad", **{"checkpointing.warm_start_from": tmp_path / "none.pt"}),
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.slow
def test_document_masking_off_trains_exactly_as_without_the_keys_and_on_it_trains(
    single_process_run, byte_corpus, tmp_path
):
    off = {"model.config.document_masking": "false", "model.config.document_positions": "continue"}
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, tmp_path / "off", **off))
    expected = losses(read_metrics(single_process_run / "metrics.jsonl"))
    assert losses(read_metrics(tmp_path / "off" / "metrics.jsonl")) == expected
    on = {"model.config.document_masking": "true", "model.config.document_positions": "restart"}
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(byte_corpus, tmp_path / "on", **on))
    masked = losses(read_metrics(tmp_path / "on" / "metrics.jsonl"))
    # The test corpus's documents are whole source files, longer than these runs read between two ends, so
    # the losses may agree; that batches carry the documents is test_builder's.
    assert [(step, split) for step, split, _ in masked] == [(step, split) for step, split, _ in expected]
    assert all(math.isfinite(loss) for _, _, loss in masked)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "every_k"])
def test_activation_checkpointing_recomputes_without_changing_the_losses(
    single_process_run, byte_corpus, tmp_path, mode
):
    overrides = tiny_overrides(byte_corpus, tmp_path, **{"training.activation_checkpointing": mode})
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides)
    expected = losses(read_metrics(single_process_run / "metrics.jsonl"))
    assert losses(read_metrics(tmp_path / "metrics.jsonl")) == expected


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_earlier_checkpoints(
    single_process_run, byte_corpus, tmp_path, monkeypatch
):
    experiment = tmp_path / "experiment"
    shutil.copytree(single_process_run, experiment)
    checkpoints = experiment / "checkpoints"
    before = {path.relative_to(checkpoints): path.read_bytes() for path in checkpoints.rglob("*") if path.is_file()}

    def disk_full(fd):  # what DCP's fsync of each file it writes meets when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setenv(DEBUG_ENV, "")
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    overrides = tiny_overrides(byte_corpus, experiment, **{"training.max_steps": 9})
    result = CliRunner().invoke(main, ["run", "--config_file_path", str(TINY_CONFIG), "--resume", "auto", *overrides])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert f"cannot write checkpoint {checkpoints / 'step_9'}: No space left on device" in result.stderr
    after = {path.relative_to(checkpoints): path.read_bytes() for path in checkpoints.rglob("*") if path.is_file()}
    assert after == before  # step_3, step_6 and latest byte for byte; nothing of step_9 left
