"""Save and load in one process, without a process group: everything comes back bit for bit."""

import json
import warnings

import pytest
import torch
from checkpoint_toys import Toy, assert_same, make_model, snapshot

from llm_gym.checkpointing import (
    CheckpointManager,
    ModelState,
    RNGState,
    load_checkpoint,
    read_checkpoint_meta,
)
from llm_gym.errors import UserError
from llm_gym.parallel import collectives


def test_round_trip_restores_everything_and_training_continues_identically(tmp_path):
    toy = Toy(make_model())
    toy.train(3)
    manager = CheckpointManager(tmp_path, every_n_steps=3, keep_last=1)
    checkpoint = manager.save(3, toy.state(), {"resolved_config": {"a": 1}, "world_size": 1})
    expected = snapshot(toy)
    expected_losses = toy.train(3)

    resumed = Toy(make_model(seed=1))
    torch.manual_seed(123)  # a different RNG stream, which the checkpoint must replace
    meta = load_checkpoint(checkpoint, resumed.state())

    assert_same(expected, snapshot(resumed))
    assert resumed.train(3) == expected_losses
    assert meta["step"] == 3 and meta["resolved_config"] == {"a": 1} and meta["world_size"] == 1


def test_layout_on_disk(tmp_path):
    toy = Toy(make_model())
    toy.train(1)
    checkpoint = CheckpointManager(tmp_path, 1, -1).save(1, toy.state(), {"world_size": 1})
    assert checkpoint == tmp_path / "step_1"
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    assert (checkpoint / ".metadata").is_file()
    meta = json.loads((checkpoint / "llm_gym_meta.json").read_text())
    assert meta["step"] == 1 and meta["files"]
    assert meta == read_checkpoint_meta(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1"]


def test_one_process_save_and_load_do_not_warn_that_there_is_no_process_group(tmp_path):
    """One process is what the user asked for; DCP's warning about it (worded differently across torch
    releases) would only alarm them."""
    toy = Toy(make_model())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpoint = CheckpointManager(tmp_path, 1, 1).save(1, toy.state(), {})
        load_checkpoint(checkpoint, Toy(make_model()).state())
    assert [str(w.message) for w in caught if "torch.distributed" in str(w.message)] == []


def test_warm_start_loads_weights_only(tmp_path):
    toy = Toy(make_model())
    toy.train(2)
    checkpoint = CheckpointManager(tmp_path, 1, 1).save(2, toy.state(), {})
    fresh = Toy(make_model(seed=5))
    load_checkpoint(checkpoint, {"model": ModelState(fresh.model)})
    assert_same(snapshot(toy)["params"], snapshot(fresh)["params"])
    assert fresh.optimizer.state == {} and fresh.progress.step == 0 and fresh.loader.position == 0


def test_rng_source_for_a_rank_the_checkpoint_lacks_is_rank_0(monkeypatch):
    rng = RNGState()
    assert rng.choose_source({"rank_0.cpu", "rank_1.cpu"}) is None
    monkeypatch.setattr(collectives, "rank", lambda: 3)
    note = rng.choose_source({"rank_0.cpu", "rank_1.cpu"})
    assert "rank 3" in note and "rank 0" in note
    assert set(rng.state_dict()) == {"rank_0"}
    with pytest.raises(UserError, match="no random-number-generator state for rank 0"):
        rng.choose_source({"rank_1.cpu"})
