"""Warm start: weights only, from a checkpoint directory or a consolidated weights file."""

from pathlib import Path

import pytest
import torch
from checkpoint_toys import Toy, assert_same, make_model, snapshot
from safetensors.torch import save_file

from crafted_files import RunsCode
from llm_gym.checkpointing import CheckpointManager, load_model_weights
from llm_gym.errors import UserError


def params(model):
    return snapshot(Toy(model))["params"]


@pytest.fixture
def trained():
    toy = Toy(make_model())
    toy.train(2)
    return toy


def test_from_a_checkpoint_directory_only_the_weights_come_back(trained, tmp_path):
    checkpoint = CheckpointManager(tmp_path, 1, 1).save(2, trained.state(), {})
    fresh = Toy(make_model(seed=5))
    load_model_weights(fresh.model, checkpoint)
    assert_same(params(trained.model), params(fresh.model))
    assert fresh.optimizer.state == {} and fresh.progress.step == 0 and fresh.loader.position == 0


@pytest.mark.parametrize("file_name", ["weights.safetensors", "weights.pt"])
def test_from_a_consolidated_file(trained, tmp_path, file_name):
    path = tmp_path / file_name
    weights = {name: tensor.contiguous() for name, tensor in trained.model.state_dict().items()}
    save_file(weights, path) if path.suffix == ".safetensors" else torch.save(weights, path)
    fresh = make_model(seed=5)
    load_model_weights(fresh, path)
    assert_same(params(trained.model), params(fresh))


BAD_FILES = {
    "missing.pt": (None, "does not exist"),
    "weights.npz": (b"PK", "reads a checkpoint directory, a .safetensors file, or a torch.save file"),
    "garbage.safetensors": (b"\x00" * 64, "is not a readable safetensors file"),
    "garbage.pt": (b"not a zip at all", "could not be read as weights"),
    "code.pt": (RunsCode(Path("pwned")), "could not be read as weights: Weights only load failed"),
    "list.pt": ([torch.zeros(2)], "must hold a flat dict of parameter name → tensor"),
    "wider.pt": (make_model(width=32).state_dict(), "incompatible model: different shapes: 0.bias"),
}


@pytest.mark.parametrize("file_name", BAD_FILES)
def test_bad_weights_files(tmp_path, monkeypatch, file_name):
    monkeypatch.chdir(tmp_path)
    content, message = BAD_FILES[file_name]
    path = tmp_path / file_name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model = make_model()
    before = params(model)
    with pytest.raises(UserError, match=message):
        load_model_weights(model, path)
    assert_same(before, params(model))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("given", ["checkpoints", "experiment"])
def test_from_a_checkpoints_or_experiment_directory_the_latest_checkpoint(trained, tmp_path, given):
    manager = CheckpointManager(tmp_path / "checkpoints", 1, -1)
    manager.save(1, Toy(make_model(seed=3)).state(), {})
    manager.save(2, trained.state(), {})
    fresh = make_model(seed=5)
    load_model_weights(fresh, {"checkpoints": tmp_path / "checkpoints", "experiment": tmp_path}[given])
    assert_same(params(trained.model), params(fresh))
