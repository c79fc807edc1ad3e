"""Checkpoints crafted to run code, with fingerprints forged to match: each is refused with a UserError naming
the file, before any of it runs (the marker never appears) and before anything is restored."""

import pathlib
import pickle
import shutil

import pytest
import torch
from checkpoint_toys import Toy, assert_same, make_model, snapshot
from torch.distributed.checkpoint.metadata import Metadata

from crafted_files import (
    DCP_METADATA_MODULE,
    RunsCode,
    forge,
    forge_stored_value,
    metadata_hiding_code,
    metadata_rewriting_a_class,
    metadata_running_code,
    pickle_of_global,
    torch_save_running_code,
)
from llm_gym.checkpointing import CheckpointManager, load_checkpoint, load_model_weights
from llm_gym.checkpointing.storage import read_dcp_metadata
from llm_gym.errors import UserError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    toy = Toy(make_model())
    toy.train(2)
    return CheckpointManager(tmp_path_factory.mktemp("checkpoints"), 1, 1).save(2, toy.state(), {"world_size": 1})


@pytest.fixture
def checkpoint(pristine, tmp_path):
    copy = tmp_path / "step_2"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


METADATA_CRAFTS = {
    "the call alone": (lambda checkpoint, marker: metadata_running_code(marker), r"metadata\.os\.system'"),
    "the call inside real metadata": (metadata_hiding_code, r"metadata\.os\.system'"),
    "a plain os.system": (lambda checkpoint, marker: pickle.dumps(RunsCode(marker)), r"'posix\.system'"),
    "a dotted name in DCP's module": (
        lambda checkpoint, marker: pickle_of_global(DCP_METADATA_MODULE, "Metadata.__init__"),
        r"\.Metadata\.__init__'",
    ),
    "a class rewritten": (lambda checkpoint, marker: metadata_rewriting_a_class(), "the class PosixPath"),
}


@pytest.mark.parametrize("craft", METADATA_CRAFTS)
def test_crafted_metadata_is_refused_before_it_runs(checkpoint, marker, craft):
    make_content, message = METADATA_CRAFTS[craft]
    forge(checkpoint, ".metadata", make_content(checkpoint, marker))
    toy = Toy(make_model(seed=3))
    before = snapshot(toy)
    with pytest.raises(UserError, match=message) as error:
        load_checkpoint(checkpoint, toy.state())
    assert str(error.value).startswith(f"{checkpoint / '.metadata'} is corrupted: ")
    assert "refused" in str(error.value)
    assert not marker.exists()
    assert str(pathlib.Path("/a/b")) == "/a/b"
    assert_same(before, snapshot(toy))


def test_the_crafts_run_code_with_a_plain_unpickler(checkpoint, marker):
    """What the refusals above guard against: plain pickle runs both forms of the call."""
    pickle.loads(metadata_running_code(marker))
    assert marker.exists()
    marker.unlink()
    assert isinstance(pickle.loads(metadata_hiding_code(checkpoint, marker)), Metadata)
    assert marker.exists()


def test_real_metadata_reads_as_before(checkpoint):
    with (checkpoint / ".metadata").open("rb") as file:
        expected = pickle.load(file)
    assert read_dcp_metadata(checkpoint) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("storage_data", None, "its storage_data is not a table of storage locations"),
        ("storage_data", {"__0_0.distcp": "x"}, "its storage_data is not a table of storage locations"),
        ("state_dict_metadata", [], "its state_dict_metadata is not a table of state-dict entries"),
        ("state_dict_metadata", {"model.0.weight": 3}, "its state_dict_metadata is not a table of state-dict entries"),
    ],
)
def test_metadata_of_another_shape_is_refused(checkpoint, field, value, message):
    with (checkpoint / ".metadata").open("rb") as file:
        metadata = pickle.load(file)
    setattr(metadata, field, value)
    forge(checkpoint, ".metadata", pickle.dumps(metadata))
    with pytest.raises(UserError, match=f"{checkpoint / '.metadata'} is corrupted: {message}"):
        load_checkpoint(checkpoint, Toy(make_model()).state())


@pytest.mark.parametrize(("key", "kind"), [("model.", "a tensor"), ("dataloader.", "a value")])
def test_a_stored_entry_crafted_to_run_code_is_refused(checkpoint, marker, key, kind):
    fqn = forge_stored_value(checkpoint, key, torch_save_running_code(marker))
    assert fqn.startswith(key), kind
    with pytest.raises(UserError, match=r"could not be loaded: .*Weights only load failed"):
        load_checkpoint(checkpoint, Toy(make_model()).state())
    assert not marker.exists()


def test_warm_start_from_a_crafted_checkpoint_is_refused(checkpoint, marker):
    forge(checkpoint, ".metadata", metadata_hiding_code(checkpoint, marker))
    model = make_model(seed=3)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(UserError, match="refused"):
        load_model_weights(model, checkpoint)
    assert not marker.exists()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
