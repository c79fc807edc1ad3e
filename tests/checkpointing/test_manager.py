"""When to save, keep-last pruning, atomic publication, refusing non-finite weights, choosing what to resume."""

import errno
import os
import threading

import pytest
import torch
from checkpoint_toys import Toy, assert_same, make_model, snapshot
from torch.distributed.checkpoint import FileSystemWriter

import llm_gym.checkpointing.manager as manager_module
from llm_gym.assembly import make_registry
from llm_gym.checkpointing import (
    CheckpointManager,
    NonFiniteWeightsError,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_resume,
)
from llm_gym.config.app import CheckpointingSettings
from llm_gym.errors import UserError


def entries(root):
    return sorted(path.name for path in root.iterdir())


def test_should_save_every_n_steps_and_at_the_end(tmp_path):
    every_3 = CheckpointManager(tmp_path, every_n_steps=3, keep_last=1)
    assert [step for step in range(1, 10) if every_3.should_save(step, is_final=False)] == [3, 6, 9]
    assert every_3.should_save(10, is_final=True)
    only_at_end = CheckpointManager(tmp_path, every_n_steps=0, keep_last=1)
    assert not any(only_at_end.should_save(step, is_final=False) for step in range(1, 10))
    assert only_at_end.should_save(10, is_final=True)


@pytest.mark.parametrize("keep_last", [0, -2])
def test_keep_last_must_be_positive_or_minus_one(tmp_path, keep_last):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, 1, keep_last)


def test_keep_last_prunes_older_checkpoints_after_the_new_one_is_published(tmp_path):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=2)
    for step in range(1, 5):
        toy.train(1)
        manager.save(step, toy.state(), {})
    assert entries(tmp_path) == ["latest", "step_3", "step_4"]
    assert (tmp_path / "latest").read_text().strip() == "step_4"


def test_keep_all(tmp_path):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=-1)
    for step in range(1, 4):
        manager.save(step, toy.state(), {})
    assert entries(tmp_path) == ["latest", "step_1", "step_2", "step_3"]


def test_failed_save_keeps_the_previous_checkpoints_and_latest(tmp_path, monkeypatch):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1)
    manager.save(1, toy.state(), {})

    def disk_full(partial_dir, names):
        raise OSError("No space left on device")

    monkeypatch.setattr(manager_module, "file_fingerprints", disk_full)
    with pytest.raises(OSError):
        manager.save(2, toy.state(), {})
    assert entries(tmp_path) == [".tmp_step_2", "latest", "step_1"]
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    load_checkpoint(tmp_path / "step_1", Toy(make_model()).state())

    monkeypatch.undo()
    manager.save(3, toy.state(), {})
    assert entries(tmp_path) == ["latest", "step_3"]  # the unfinished save is cleaned up too


def disk_full_on_fsync(fd):
    # DCP fsyncs every file it writes: a full disk (or quota) showing there, as an OSError without a file name.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_inside_dcp_save_is_one_user_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1)
    manager.save(1, toy.state(), {})
    before = {path.name: path.read_bytes() for path in (tmp_path / "step_1").iterdir()}
    monkeypatch.setattr(os, "fsync", disk_full_on_fsync)
    with pytest.raises(UserError) as raised:
        manager.save(2, toy.state(), {})
    assert str(raised.value) == (
        f"cannot write checkpoint {tmp_path / 'step_2'}: No space left on device; "
        "the earlier checkpoints and latest are unchanged"
    )
    monkeypatch.undo()
    assert entries(tmp_path) == ["latest", "step_1"]  # what the failed save wrote is gone, to give the room back
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    assert {path.name: path.read_bytes() for path in (tmp_path / "step_1").iterdir()} == before
    load_checkpoint(tmp_path / "step_1", Toy(make_model()).state())


@pytest.mark.cross_version
def test_a_save_in_the_background_writes_the_state_of_its_step_while_training_changes_it(tmp_path, monkeypatch):
    # The writer starts only once training has changed every tensor the save holds.
    trained = threading.Event()
    write_data = FileSystemWriter.write_data

    def write_data_after_training(self, plan, planner):
        assert trained.wait(timeout=60)
        return write_data(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", write_data_after_training)
    toy = Toy(make_model())
    toy.train(2)
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1, in_background=True)
    manager.save(2, toy.state(), {})
    at_save = snapshot(toy)
    toy.train(2)
    trained.set()
    manager.wait()
    restored = Toy(make_model(seed=1))
    load_checkpoint(tmp_path / "step_2", restored.state())
    assert_same(at_save, snapshot(restored))


def test_full_disk_during_a_save_in_the_background_is_one_user_error_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1, in_background=True)
    manager.save(1, toy.state(), {})
    manager.wait()
    monkeypatch.setattr(os, "fsync", disk_full_on_fsync)
    manager.save(2, toy.state(), {})  # returns: the write fails later, in DCP's thread
    with pytest.raises(UserError) as raised:
        manager.wait()
    assert str(raised.value) == (
        f"cannot write checkpoint {tmp_path / 'step_2'}: No space left on device; "
        "the earlier checkpoints and latest are unchanged"
    )
    monkeypatch.undo()
    assert entries(tmp_path) == ["latest", "step_1"]
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    load_checkpoint(tmp_path / "step_1", Toy(make_model()).state())


def test_full_disk_writing_latest_is_one_user_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1)
    manager.save(1, toy.state(), {})
    real_write = manager_module.write_file_atomically

    def latest_on_a_full_disk(path, text):
        if path.name == manager_module.LATEST_FILE:
            monkeypatch.setattr(os, "fsync", disk_full_on_fsync)
        real_write(path, text)

    monkeypatch.setattr(manager_module, "write_file_atomically", latest_on_a_full_disk)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'latest'}: No space left on device"):
        manager.save(2, toy.state(), {})
    monkeypatch.undo()
    assert entries(tmp_path) == ["latest", "step_1", "step_2"]  # step_2 is complete; latest still names step_1
    assert (tmp_path / "latest").read_text().strip() == "step_1"


def test_every_written_file_is_fingerprinted_whatever_dcp_save_returns(tmp_path, monkeypatch):
    """torch 2.11's dcp.save returns its metadata without storage_data; the list of files comes from disk."""
    real_save = manager_module.dcp.save

    def save_like_torch_2_11(*args, **kwargs):
        metadata = real_save(*args, **kwargs)
        metadata.storage_data = None
        return metadata

    monkeypatch.setattr(manager_module.dcp, "save", save_like_torch_2_11)
    toy = Toy(make_model())
    checkpoint = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1).save(1, toy.state(), {})
    written = {path.name for path in checkpoint.iterdir()} - {manager_module.META_FILE}
    assert set(read_checkpoint_meta(checkpoint)["files"]) == written
    restored = Toy(make_model(seed=1))
    load_checkpoint(checkpoint, restored.state())
    torch.testing.assert_close(restored.model.state_dict(), toy.model.state_dict(), rtol=0, atol=0)


def test_saving_the_same_step_again_replaces_it(tmp_path):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=2)
    manager.save(1, toy.state(), {"attempt": 1})
    manager.save(1, toy.state(), {"attempt": 2})
    assert entries(tmp_path) == ["latest", "step_1"]
    assert load_checkpoint(tmp_path / "step_1", Toy(make_model()).state())["attempt"] == 2


def test_checkpoints_of_an_abandoned_later_timeline_are_left_alone(tmp_path):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=1)
    for step in (1, 5):
        manager.save(step, toy.state(), {})
    manager.save(3, toy.state(), {})  # resumed from an earlier checkpoint
    assert entries(tmp_path) == ["latest", "step_3", "step_5"]
    assert (tmp_path / "latest").read_text().strip() == "step_3"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_never_saved(tmp_path, value):
    toy = Toy(make_model())
    with torch.no_grad():
        toy.model[0].weight[0, 0] = value
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite values in 0\.weight"):
        CheckpointManager(tmp_path / "checkpoints", 1, 1).save(1, toy.state(), {})
    assert not (tmp_path / "checkpoints").exists()


def test_resolve_resume(tmp_path, caplog):
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    assert "starting from scratch" in caplog.text
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=-1)
    manager.save(1, toy.state(), {})
    manager.save(2, toy.state(), {})
    assert resolve_resume("auto", tmp_path) == tmp_path / "step_2"
    assert resolve_resume(str(tmp_path / "step_1"), tmp_path) == tmp_path / "step_1"


def test_resolve_resume_rejects_bad_targets(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(UserError, match="latest is corrupted"):
        resolve_resume("auto", tmp_path)
    (tmp_path / "latest").write_text("step_9\n")
    with pytest.raises(UserError, match="step_9 does not exist"):
        resolve_resume("auto", tmp_path)


def test_extra_strategies_save_at_chosen_steps_and_protect_milestones(tmp_path):
    from llm_gym.checkpointing.strategies import KeepEveryNSteps, KeepEveryNStepsConfig, SaveAtSteps, SaveAtStepsConfig

    toy = Toy(make_model())
    manager = CheckpointManager(
        tmp_path,
        every_n_steps=2,
        keep_last=1,
        strategies=[
            SaveAtSteps(SaveAtStepsConfig(steps=[3])),
            KeepEveryNSteps(KeepEveryNStepsConfig(every_n_steps=4)),
        ],
    )
    saved = [step for step in range(1, 10) if manager.should_save(step, is_final=step == 9)]
    assert saved == [2, 3, 4, 6, 8, 9]
    for step in saved:
        manager.save(step, toy.state(), {})
    assert entries(tmp_path) == ["latest", "step_4", "step_8", "step_9"]


def test_checkpoint_strategies_are_registry_components():
    registry = make_registry()
    settings = registry.validate(
        CheckpointingSettings, {"strategies": [{"type_hint": "KeepEveryNSteps", "config": {"every_n_steps": 100}}]}
    )
    strategy = registry.build_component_by_config(settings.strategies[0])
    assert strategy.protects(200, newer_steps=[300]) and not strategy.protects(250, newer_steps=[300])


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("kill_before", ["old checkpoint moved aside", "new checkpoint renamed into place"])
def test_latest_names_a_complete_checkpoint_while_a_step_is_saved_again(tmp_path, monkeypatch, kill_before):
    toy = Toy(make_model())
    manager = CheckpointManager(tmp_path, every_n_steps=1, keep_last=-1)
    for step in (2, 4):
        manager.save(step, toy.state(), {"run": "first"})
    real_replace = manager_module.os.replace
    moved = {"old checkpoint moved aside": "step_4", "new checkpoint renamed into place": ".tmp_step_4"}[kill_before]

    def replace(source, target):
        if manager_module.Path(source).name == moved:
            raise _Killed
        real_replace(source, target)

    monkeypatch.setattr(manager_module.os, "replace", replace)
    with pytest.raises(_Killed):  # resumed from step_2, the run reaches step 4 again and saves it
        manager.save(4, toy.state(), {"run": "resumed"})

    assert resolve_resume("auto", tmp_path) == tmp_path / "step_2"
    monkeypatch.setattr(manager_module.os, "replace", real_replace)
    manager.save(4, toy.state(), {"run": "resumed"})
    assert resolve_resume("auto", tmp_path) == tmp_path / "step_4"
    assert read_checkpoint_meta(tmp_path / "step_4")["run"] == "resumed"
