"""Saves in the background (``checkpointing.async``): the same checkpoints and losses as saving in line, training
goes on while one is written, and a SIGKILL while it is written leaves the previous one ``latest``, from which
the run resumes bit for bit."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import (
    TINY_CONFIG,
    llm_gym,
    read_metrics,
    subprocess_env,
    tiny_config_with_user_module,
    tiny_overrides,
    torchrun,
    wait_for_train_line,
)
from llm_gym.checkpointing.loading import find_checkpoint

# With SLOW_SAVE set, the writes of the save at step 6 take 30 s: the run trains on meanwhile, until the save at
# step 9 waits for it.
SLOW_WRITER = """
import os
import time

from torch.distributed.checkpoint import FileSystemWriter

_write_data = FileSystemWriter.write_data


def _slow_write_data(self, plan, planner):
    if os.environ.get("SLOW_SAVE") and ".tmp_step_6" in str(self.path):
        time.sleep(30)
    return _write_data(self, plan, planner)


FileSystemWriter.write_data = _slow_write_data
"""

SETTINGS = {"training.max_steps": 12, "checkpointing.every_n_steps": 3, "checkpointing.keep_last": 2,
            "training.eval_interval": 100}  # fmt: skip
ASYNC = {"checkpointing.async": "true"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("async_save")
    tiny_config_with_user_module(directory, "slow_writer", SLOW_WRITER)
    return directory


def _run_args(workspace: Path, output_dir: Path, config: Path = TINY_CONFIG, **settings) -> list[str]:
    return ["run", "--config_file_path", str(config), *tiny_overrides(workspace, output_dir, **SETTINGS, **settings)]


def _losses(output_dir: Path) -> list[tuple[int, str, float]]:
    return [(line["step"], line["split"], line["loss"]) for line in read_metrics(output_dir / "metrics.jsonl")]


def _checkpoints(output_dir: Path) -> list[str]:
    return sorted(entry.name for entry in (output_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def in_line(workspace) -> Path:
    output_dir = workspace / "in_line"
    llm_gym(*_run_args(workspace, output_dir))
    return output_dir


@pytest.mark.slow
@pytest.mark.cross_version
def test_a_run_saving_in_the_background_writes_what_saving_in_line_does(workspace, in_line):
    output_dir = workspace / "background"
    llm_gym(*_run_args(workspace, output_dir, **ASYNC))
    assert _losses(output_dir) == _losses(in_line)
    assert _checkpoints(output_dir) == _checkpoints(in_line) == ["latest", "step_12", "step_9"]
    # Resumed from the background save at step 9, the run ends as the uninterrupted one did.
    branch = workspace / "branch"
    llm_gym(*_run_args(workspace, branch, **{"checkpointing.branch_from": output_dir / "checkpoints" / "step_9"}))
    assert _losses(branch) == [entry for entry in _losses(in_line) if entry[0] > 9]


@pytest.mark.slow
def test_two_ranks_save_in_the_background_as_in_line(workspace, tmp_path):
    skip_unless_gloo_sharding_works()
    settings = {"training.micro_batch_size": 2}
    in_line = torchrun(2, *_run_args(workspace, tmp_path / "in_line", **settings))
    background = torchrun(2, *_run_args(workspace, tmp_path / "background", **settings, **ASYNC))
    assert in_line.returncode == background.returncode == 0
    assert _losses(tmp_path / "background") == _losses(tmp_path / "in_line")
    assert find_checkpoint(tmp_path / "background" / "checkpoints").name == "step_12"


@pytest.mark.slow
def test_a_sigkill_while_a_save_is_written_leaves_the_previous_latest_and_the_run_resumes_exactly(workspace, in_line):
    output_dir = workspace / "killed"
    args = _run_args(workspace, output_dir, config=workspace / "slow_writer.yaml", **ASYNC)
    child = subprocess.Popen(
        [sys.executable, "-m", "llm_gym", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**subprocess_env(), "SLOW_SAVE": "1"},
    )
    try:
        # Step 8 trained while step 6 is still being written: the save did not stall the run.
        wait_for_train_line(output_dir / "metrics.jsonl", 8, child)
        checkpoints = output_dir / "checkpoints"
        assert (checkpoints / ".tmp_step_6").is_dir() and find_checkpoint(checkpoints).name == "step_3"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert find_checkpoint(output_dir / "checkpoints").name == "step_3"
    llm_gym(*args, "--resume", "auto")
    assert [entry for entry in _losses(output_dir) if entry[0] > 3] == [
        entry for entry in _losses(in_line) if entry[0] > 3
    ]
