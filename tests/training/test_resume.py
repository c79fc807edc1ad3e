"""``llm_gym run --resume``: a stopped or killed run, resumed, writes the metrics an uninterrupted run writes.

Unless a test says otherwise, every run here trains 8 steps at most with the schedule pinned to 8 steps, so
a run stopped early by a smaller ``training.max_steps`` and its resumption follow the same learning-rate
curve as the reference.
Runs stop at step 4, where the reference evaluates too: a run always evaluates at its last step, so a
stop elsewhere would add one evaluation line that the reference does not have.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import (
    TINY_CONFIG,
    child_pids,
    is_gone,
    llm_gym,
    read_metrics,
    subprocess_env,
    tiny_overrides,
    torchrun,
    torchrun_command,
    wait_for_train_line,
)
from llm_gym.checkpointing import load_checkpoint, read_checkpoint_meta, resolve_resume
from llm_gym.checkpointing.storage import read_dcp_metadata
from llm_gym.training.resume_policy import config_differences

# What a resumed run must reproduce exactly; tokens_per_s is a wall-clock figure.
RECORDED = ("step", "split", "loss", "lr", "grad_norm", "tokens_seen")
TOTAL_STEPS = 8


def recorded(experiment_dir: Path) -> list[tuple]:
    return [tuple(line.get(key) for key in RECORDED) for line in read_metrics(experiment_dir / "metrics.jsonl")]


def run_overrides(corpus: Path, output_dir: Path, ranks: int, **extra: object) -> list[str]:
    """The tiny config for ``ranks`` ranks at a global batch of 4, checkpointed every 2 steps, all kept."""
    settings = {
        "training.max_steps": TOTAL_STEPS,
        "lr_scheduler.config.total_steps": TOTAL_STEPS,
        "training.micro_batch_size": 4 // ranks,
        "training.eval_interval": 4,
        "checkpointing.every_n_steps": 2,
        "checkpointing.keep_last": -1,
        **extra,
    }
    return tiny_overrides(corpus, output_dir, **settings)


def run_arguments(corpus: Path, output_dir: Path, ranks: int, *options: str, **overrides: object) -> list[str]:
    if ranks > 1:  # the tiny config's FSDP2
        skip_unless_gloo_sharding_works()
    return [
        "run",
        "--config_file_path",
        str(TINY_CONFIG),
        *options,
        *run_overrides(corpus, output_dir, ranks, **overrides),
    ]


def train(
    corpus: Path, output_dir: Path, ranks: int, *options: str, check: bool = True, **overrides: object
) -> subprocess.CompletedProcess:
    arguments = run_arguments(corpus, output_dir, ranks, *options, **overrides)
    return llm_gym(*arguments, check=check) if ranks == 1 else torchrun(ranks, *arguments, check=check)


@pytest.fixture(scope="module")
def reference(byte_corpus, tmp_path_factory):
    """``reference(ranks)``: the experiment directory of an uninterrupted 8-step run on that many ranks."""
    runs = {}

    def get(ranks: int) -> Path:
        if ranks not in runs:
            runs[ranks] = tmp_path_factory.mktemp(f"reference_{ranks}_ranks")
            train(byte_corpus, runs[ranks], ranks)
        return runs[ranks]

    return get


@pytest.fixture(scope="module")
def stopped_at_4(byte_corpus, tmp_path_factory):
    """``stopped_at_4(ranks, into)``: a copy, at ``into``, of a run on that many ranks stopped cleanly after
    step 4 (checkpoints step_2 and step_4). Each test gets its own copy, since resuming changes it."""
    runs = {}

    def copy(ranks: int, into: Path) -> Path:
        if ranks not in runs:
            runs[ranks] = tmp_path_factory.mktemp(f"stopped_{ranks}_ranks")
            train(byte_corpus, runs[ranks], ranks, **{"training.max_steps": 4})
        shutil.copytree(runs[ranks], into)
        return into

    return copy


def listing(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_clean_stop_resumed_gives_the_metrics_of_an_uninterrupted_run(
    byte_corpus, reference, stopped_at_4, tmp_path, ranks
):
    experiment = stopped_at_4(ranks, tmp_path / "experiment")
    assert [step for step, split, *_ in recorded(experiment) if split == "train"] == [1, 2, 3, 4]
    checkpoints = experiment / "checkpoints"
    # Also the remains of a save killed midway (shards, no llm_gym metadata, latest not updated): ignored.
    partial = checkpoints / ".tmp_step_6"
    shutil.copytree(checkpoints / "step_4", partial)
    (partial / "llm_gym_meta.json").unlink()

    resumed = train(byte_corpus, experiment, ranks, "--resume", "auto")

    assert recorded(experiment) == recorded(reference(ranks))
    assert "resuming with the config's hyperparameters, which differ from the checkpoint's" in resumed.stderr
    assert f"training.max_steps: checkpoint 4, now {TOTAL_STEPS}" in resumed.stderr
    assert sorted(entry.name for entry in checkpoints.iterdir()) == ["latest", "step_2", "step_4", "step_6", "step_8"]
    assert (checkpoints / "latest").read_text().strip() == "step_8"
    saved, resumed = (read_checkpoint_meta(checkpoints / f"step_{step}") for step in (4, 8))
    # A longer run is the same run: max_steps is not something an exact resume has to keep.
    assert saved["resolved_config"]["training"]["max_steps"] == 4
    assert resumed["resolved_config"]["training"]["max_steps"] == TOTAL_STEPS
    assert config_differences(saved["resolved_config"], resumed["resolved_config"], ranks, ranks) == []


def kill_torchrun(launcher: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers and then torchrun itself, as an out-of-memory killer or a scheduler would.

    torchrun starts every worker in a session of its own, so killing torchrun's process group would spare them.
    """
    workers = child_pids(launcher.pid)
    for worker in workers:
        os.killpg(worker, signal.SIGKILL)
    launcher.kill()
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not all(is_gone(worker) for worker in workers):
        assert time.monotonic() < deadline, "the killed workers did not end"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_a_run_killed_between_checkpoints_resumes_to_the_metrics_of_an_uninterrupted_run(
    byte_corpus, reference, tmp_path
):
    experiment = tmp_path / "experiment"
    with (tmp_path / "killed.log").open("w") as log:
        launcher = subprocess.Popen(
            torchrun_command(2, *run_arguments(byte_corpus, experiment, 2)),
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_train_line(experiment / "metrics.jsonl", 5, launcher)
        finally:
            kill_torchrun(launcher)

    # Where the kill landed varies (after step 5, in the save of step 6, ...); latest names a whole checkpoint.
    checkpoint = resolve_resume("auto", experiment / "checkpoints")
    resumed_from = read_checkpoint_meta(checkpoint)["step"]
    assert resumed_from in (4, 6), f"the kill should land between the checkpoints of steps 4 and 8, not {checkpoint}"
    assert max(line["step"] for line in read_metrics(experiment / "metrics.jsonl")) >= 5

    train(byte_corpus, experiment, 2, "--resume", "auto")

    assert recorded(experiment) == recorded(reference(2))
    assert not [entry.name for entry in (experiment / "checkpoints").iterdir() if entry.name.startswith(".tmp_")]


class _SavedLoaderState:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {"consumed_samples": 0, "seed": 0, "shuffle": False}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def saved_loader_state(checkpoint_dir: Path) -> dict[str, Any]:
    loader = _SavedLoaderState()
    load_checkpoint(checkpoint_dir, {"dataloader": loader})
    return loader.state


@pytest.mark.slow
@pytest.mark.cross_version
def test_two_ranks_resumed_on_one_continue_with_the_same_data_and_losses(
    byte_corpus, reference, stopped_at_4, tmp_path
):
    experiment = stopped_at_4(2, tmp_path / "experiment")

    train(byte_corpus, experiment, 1, "--resume", "auto")  # micro batch 4 on 1 rank: the same global batch

    actual, expected = recorded(experiment), recorded(reference(2))
    assert [line[:2] for line in actual] == [line[:2] for line in expected]
    for (*_, loss, lr, grad_norm, tokens), (*_, want_loss, want_lr, want_grad_norm, want_tokens) in zip(
        actual, expected, strict=True
    ):
        assert loss == pytest.approx(want_loss, abs=1e-5)
        assert (lr, tokens) == (want_lr, want_tokens)
        assert grad_norm == (None if want_grad_norm is None else pytest.approx(want_grad_norm, rel=1e-5))
    final = experiment / "checkpoints" / "step_8"
    assert read_checkpoint_meta(final)["world_size"] == 1
    assert saved_loader_state(final) == saved_loader_state(reference(2) / "checkpoints" / "step_8")


@pytest.mark.slow
def test_a_resume_that_breaks_equivalence_is_refused_with_the_differences(byte_corpus, stopped_at_4, tmp_path):
    experiment = stopped_at_4(1, tmp_path / "experiment")
    before = listing(experiment)

    result = train(
        byte_corpus, experiment, 1, "--resume", "auto", check=False,
        **{
            "model.config.n_layer": 2,
            "experiment.seed": 7,
            "training.micro_batch_size": 2,
            "data.train_dataset.config.path_prefix": byte_corpus / "val_byte",
            "optimizer.type_hint": "Adam",  # the same state names as AdamW, yet another optimizer
        },
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for difference in (
        "model.config.n_layer: checkpoint 4, now 2",
        "experiment.seed: checkpoint 42, now 7",
        "data.sampler.config.seed: checkpoint 42, now 7",
        "data.train_dataset.config.path_prefix: checkpoint",
        "global batch (micro_batch_size × gradient_accumulation_steps × ranks): checkpoint 4 (4 × 1 × 1 ranks), "
        "now 2 (2 × 1 × 1 ranks)",
        "optimizer.type_hint: checkpoint 'AdamW', now 'Adam'",
        "--allow_config_change",
    ):
        assert difference in result.stderr
    assert listing(experiment) == before


@pytest.mark.slow
def test_a_checkpoint_that_does_not_record_its_config_is_refused(byte_corpus, stopped_at_4, tmp_path):
    experiment = stopped_at_4(1, tmp_path / "experiment")
    meta_path = experiment / "checkpoints" / "step_4" / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["resolved_config"]
    meta_path.write_text(json.dumps(meta))
    before = listing(experiment)

    result = train(byte_corpus, experiment, 1, "--resume", "auto", check=False)

    assert result.returncode == 2, result.stderr
    assert "llm_gym_meta.json does not record the config" in result.stderr and "Traceback" not in result.stderr
    assert listing(experiment) == before


@pytest.mark.slow
def test_allow_config_change_resumes_with_another_seed(byte_corpus, reference, stopped_at_4, tmp_path):
    experiment = stopped_at_4(1, tmp_path / "experiment")

    loggers = "[{type_hint: Console, config: {progress_bar: false}}, {type_hint: MetricsJsonl, config: {}}]"
    result = train(
        byte_corpus, experiment, 1, "--resume", "auto", "--allow_config_change",
        **{"experiment.seed": 7, "loggers": loggers},
    )  # fmt: skip

    assert result.stdout.startswith(
        f"llm_gym run tiny_cpu → {experiment}\n1 rank on cpu (FSDP2), {TOTAL_STEPS} steps\n"
        "global batch: 4 samples (4 micro batch × 1 accumulation × 1 data-parallel) × 32 tokens"
    )
    assert "config changes allowed on resume" in result.stdout
    assert f"done at step {TOTAL_STEPS}: metrics in {experiment / 'metrics.jsonl'}" in result.stdout
    assert "experiment.seed: checkpoint 42, now 7" in result.stdout

    actual, expected = recorded(experiment), recorded(reference(1))
    assert [line[:2] for line in actual] == [line[:2] for line in expected]
    assert [line for line in actual if line[0] <= 4] == [line for line in expected if line[0] <= 4]
    # The new seed reorders the data from step 5 on.
    assert all(got[2] != want[2] for got, want in zip(actual, expected, strict=True) if got[0] > 4)
    assert yaml.safe_load((experiment / "config.yaml").read_text())["experiment"]["seed"] == 7


@pytest.mark.slow
def test_resume_from_a_named_checkpoint_and_keep_only_the_newest(byte_corpus, reference, stopped_at_4, tmp_path):
    experiment = stopped_at_4(1, tmp_path / "experiment")
    checkpoints = experiment / "checkpoints"

    train(
        byte_corpus, experiment, 1, "--resume", str(checkpoints / "step_2"),
        **{"checkpointing.every_n_steps": 1, "checkpointing.keep_last": 2},
    )  # fmt: skip

    assert recorded(experiment) == recorded(reference(1))  # lines after step 2 were dropped and written again
    assert sorted(entry.name for entry in checkpoints.iterdir()) == ["latest", "step_7", "step_8"]
    assert (checkpoints / "latest").read_text().strip() == "step_8"


@pytest.mark.slow
def test_a_model_with_dropout_resumes_to_the_losses_of_an_uninterrupted_run(byte_corpus, tmp_path):
    dropout = {"model.config.dropout": 0.1}
    reference_dir, experiment = tmp_path / "reference", tmp_path / "experiment"
    train(byte_corpus, reference_dir, 1, **dropout)
    train(byte_corpus, experiment, 1, **dropout, **{"training.max_steps": 4})

    train(byte_corpus, experiment, 1, "--resume", "auto", **dropout)

    assert recorded(experiment) == recorded(reference_dir)


@pytest.mark.slow
def test_a_run_extended_on_resume_follows_the_schedule_of_the_longer_run(byte_corpus, tmp_path):
    def longer_run(steps: int) -> dict[str, int]:
        return {"training.max_steps": steps, "lr_scheduler.config.total_steps": steps}

    fresh, experiment = tmp_path / "fresh", tmp_path / "experiment"
    train(byte_corpus, fresh, 1, **longer_run(12))
    train(byte_corpus, experiment, 1, **longer_run(6))

    result = train(byte_corpus, experiment, 1, "--resume", "auto", **longer_run(12))

    def train_lrs(experiment_dir: Path) -> dict[int, float]:
        return {step: lr for step, split, _, lr, *_ in recorded(experiment_dir) if split == "train"}

    resumed_lrs, fresh_lrs = train_lrs(experiment), train_lrs(fresh)
    assert sorted(resumed_lrs) == list(range(1, 13))
    assert [resumed_lrs[step] for step in range(7, 13)] == [fresh_lrs[step] for step in range(7, 13)]
    for change in ("lr_scheduler.config.total_steps: checkpoint 6, now 12", "training.max_steps: checkpoint 6, now 12"):
        assert change in result.stderr


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_resume_from_a_missing_directory_is_one_error(byte_corpus, tmp_path):
    missing = tmp_path / "experiment" / "checkpoints" / "step_4"

    result = train(byte_corpus, tmp_path / "experiment", 1, "--resume", str(missing), check=False)

    assert_one_error_line(result, f"checkpoint directory {missing} does not exist")
    assert not (tmp_path / "experiment").exists()


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_is_one_error(byte_corpus, stopped_at_4, tmp_path):
    experiment = stopped_at_4(1, tmp_path / "experiment")
    shard = next((experiment / "checkpoints" / "step_4").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    before = listing(experiment)

    result = train(byte_corpus, experiment, 1, "--resume", "auto", check=False)

    assert_one_error_line(result, f"checkpoint {experiment / 'checkpoints' / 'step_4'} is corrupted: {shard.name}")
    assert listing(experiment) == before


MUON = {"optimizer.type_hint": "Muon", "optimizer.config.lr": 0.02, "optimizer.config.adamw.lr": 3e-3}


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_muon_run_resumes_to_the_metrics_of_an_uninterrupted_run(byte_corpus, tmp_path, ranks):
    reference_dir, experiment = tmp_path / "reference", tmp_path / "experiment"
    train(byte_corpus, reference_dir, ranks, **MUON)
    train(byte_corpus, experiment, ranks, **MUON, **{"training.max_steps": 4})

    train(byte_corpus, experiment, ranks, "--resume", "auto", **MUON)

    assert recorded(experiment) == recorded(reference_dir)
    # Its moments went through the checkpoint: the hidden matrices' momentum, AdamW's for the rest.
    saved = {key.split(".")[-1] for key in read_dcp_metadata(experiment / "checkpoints" / "step_4").state_dict_metadata}
    assert {"momentum_buffer", "exp_avg", "exp_avg_sq", "use_muon"} <= saved


@pytest.mark.slow
def test_a_resume_inside_a_log_window_writes_the_lines_of_an_uninterrupted_run(byte_corpus, tmp_path):
    # Train lines at steps 3, 6 and 8, checkpoints at every even step: step 4's is one step into a window.
    windowed = {"training.log_interval": 3, "training.eval_interval": 8}
    reference_dir, experiment = tmp_path / "reference", tmp_path / "experiment"
    train(byte_corpus, reference_dir, 1, **windowed)
    shutil.copytree(reference_dir, experiment)

    train(byte_corpus, experiment, 1, "--resume", str(experiment / "checkpoints" / "step_4"), **windowed)

    lines = read_metrics(reference_dir / "metrics.jsonl")
    assert [line["step"] for line in lines if line["split"] == "train"] == [3, 6, 8]
    assert lines[1]["loss"] != lines[1]["loss_step"]  # the mean over steps 4-6, not step 6 alone
    assert recorded(experiment) == recorded(reference_dir)
    assert [line.get("loss_step") for line in read_metrics(experiment / "metrics.jsonl")] == [
        line.get("loss_step") for line in lines
    ]
