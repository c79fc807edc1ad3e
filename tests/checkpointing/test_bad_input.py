"""Missing, partial, corrupted or incompatible checkpoints: a UserError (exit 2) naming the problem, raised
before anything is restored, and never DCP's internals."""

import os
import shutil
from fractions import Fraction

import pytest
import torch
from checkpoint_damage import edit_meta, flip_byte_in_the_middle, shard
from checkpoint_toys import FakeLoader, Toy, assert_same, make_model, snapshot

from crafted_files import forge
from llm_gym.checkpointing import CheckpointManager, ModelState, OptimizerState, load_checkpoint, resolve_resume
from llm_gym.errors import UserError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    toy = Toy(make_model())
    toy.train(2)
    return CheckpointManager(root, 1, 1).save(2, toy.state(), {"world_size": 1})


@pytest.fixture
def checkpoint(pristine, tmp_path):
    copy = tmp_path / "step_2"
    shutil.copytree(pristine, copy)
    return copy


DAMAGES = {
    "no .metadata": (lambda c: (c / ".metadata").unlink(), "not a complete checkpoint: it has no DCP .metadata"),
    "no llm_gym meta": (lambda c: (c / "llm_gym_meta.json").unlink(), "llm_gym_meta.json is missing"),
    "meta not json": (lambda c: (c / "llm_gym_meta.json").write_bytes(b"\x00{garbage"), "corrupted: not valid JSON"),
    "meta lacks keys": (lambda c: (c / "llm_gym_meta.json").write_text('{"step": 2}'), "must be a JSON object with"),
    "meta files malformed": (
        lambda c: edit_meta(c, lambda meta: meta.update(files={"__0_0.distcp": "ok"})),
        "'files' must map each file name to its bytes and crc32",
    ),
    "meta omits a shard": (
        lambda c: edit_meta(c, lambda meta: meta["files"].pop("__0_0.distcp")),
        r"\.metadata is corrupted: it refers to files llm_gym_meta\.json does not list: __0_0\.distcp",
    ),
    "meta from the future": (
        lambda c: edit_meta(c, lambda meta: meta.update(format_version=99)),
        "checkpoint format 99",
    ),
    ".metadata garbage": (lambda c: (c / ".metadata").write_bytes(b"not a pickle"), r"\.metadata has 12 bytes"),
    ".metadata bit flip": (lambda c: flip_byte_in_the_middle(c / ".metadata"), r"\.metadata fails its checksum"),
    ".metadata forged garbage": (lambda c: forge(c, ".metadata", b"not a pickle"), r"\.metadata is corrupted"),
    "shard truncated": (
        lambda c: os.truncate(shard(c), shard(c).stat().st_size // 2),
        r"is corrupted: __0_0\.distcp has \d+ bytes, expected \d+ \(truncated\?\)",
    ),
    "shard bit flip": (lambda c: flip_byte_in_the_middle(shard(c)), r"is corrupted: __0_0\.distcp fails its checksum"),
    "shard missing": (lambda c: shard(c).unlink(), r"is corrupted: __0_0\.distcp is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint_is_refused_before_anything_is_restored(checkpoint, damage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    damage_fn, message = DAMAGES[damage]
    damage_fn(checkpoint)
    toy = Toy(make_model(seed=3))
    before = snapshot(toy)
    with pytest.raises(UserError, match=message) as error:
        load_checkpoint(checkpoint, toy.state())
    assert str(checkpoint) in str(error.value)
    assert "Traceback" not in str(error.value)
    assert_same(before, snapshot(toy))
    assert not (tmp_path / "pwned").exists()


def test_missing_directory_and_file_instead_of_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "step_7", Toy(make_model()).state())
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        load_checkpoint(tmp_path / "a_file", Toy(make_model()).state())


def test_unfinished_save_directory_is_refused(checkpoint):
    partial = checkpoint.with_name(".tmp_step_3")
    checkpoint.rename(partial)
    (partial / ".metadata").unlink()
    (partial / "llm_gym_meta.json").unlink()
    with pytest.raises(UserError, match="not a complete checkpoint"):
        resolve_resume(str(partial), partial.parent)


def test_checkpoint_of_a_wider_model_names_the_differing_shapes(checkpoint):
    with pytest.raises(UserError, match="incompatible model") as error:
        load_checkpoint(checkpoint, {"model": ModelState(make_model(width=32))})
    assert "different shapes: " in str(error.value)
    assert "0.weight (checkpoint [16, 16], model [32, 16])" in str(error.value)


def test_checkpoint_of_a_deeper_model_names_the_differing_keys(checkpoint):
    with pytest.raises(UserError, match="incompatible model") as error:
        load_checkpoint(checkpoint, {"model": ModelState(make_model(depth=2))})
    assert "not in this model: 4.bias, 4.weight" in str(error.value)
    with pytest.raises(UserError, match=r"not in the checkpoint: 6\.bias, 6\.weight"):
        load_checkpoint(checkpoint, {"model": ModelState(make_model(depth=4))})


def test_checkpoint_without_the_requested_state(tmp_path):
    model = make_model()
    checkpoint = CheckpointManager(tmp_path, 1, 1).save(1, {"model": ModelState(model)}, {})
    with pytest.raises(UserError, match="has no 'optimizer' state"):
        load_checkpoint(checkpoint, Toy(make_model()).state())


def test_checkpoint_values_are_loaded_with_weights_only(tmp_path):
    class LoaderWithObjects(FakeLoader):
        def state_dict(self):
            return {**super().state_dict(), "fraction": Fraction(1, 3)}

    toy = Toy(make_model(), loader=LoaderWithObjects())
    checkpoint = CheckpointManager(tmp_path, 1, 1).save(1, toy.state(), {})
    with pytest.raises(UserError, match="could not be loaded: Weights only load failed") as error:
        load_checkpoint(checkpoint, Toy(make_model(), loader=LoaderWithObjects()).state())
    assert "Traceback" not in str(error.value)


def test_optimizer_of_another_kind_is_refused(checkpoint):
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 16)).sum().backward()
    sgd.step()
    with pytest.raises(UserError, match=r"state of another optimizer .* has no .*momentum_buffer"):
        load_checkpoint(checkpoint, {"optimizer": OptimizerState(model, sgd)})
