"""Real gloo ranks: FSDP2 2 → 2 ranks bit-exact, 2 ranks → 1 process, 1 process → 2 ranks; DDP; warm start."""

import logging
from pathlib import Path

import pytest
import torch
from checkpoint_toys import Toy, assert_same, full, make_model, snapshot
from safetensors.torch import save_file
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from llm_gym.checkpointing import CheckpointManager, load_checkpoint, load_model_weights
from llm_gym.parallel.distributed import init_distributed


def sharded_model(seed: int) -> nn.Module:
    model = make_model(seed=seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


class _Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def two_ranks(root: Path, one_process_checkpoint: Path, weights_file: Path) -> dict:
    env = init_distributed("cpu")
    toy = Toy(sharded_model(seed=0))
    torch.manual_seed(100 + env.rank)  # every rank its own dropout stream
    toy.train(2, env.rank, env.world_size)
    checkpoint = CheckpointManager(root, every_n_steps=2, keep_last=1).save(2, toy.state(), {"world_size": 2})
    saved = snapshot(toy)
    draw_after_save = torch.rand(3)
    losses_after_save = toy.train(2, env.rank, env.world_size)

    resumed = Toy(sharded_model(seed=1))
    load_checkpoint(checkpoint, resumed.state())
    restored = snapshot(resumed)
    draw_after_load = torch.rand(3)
    losses_after_load = resumed.train(2, env.rank, env.world_size)

    notes = _Notes()
    logging.getLogger("llm_gym.checkpointing").addHandler(notes)
    from_one_process = Toy(sharded_model(seed=2))
    load_checkpoint(one_process_checkpoint, from_one_process.state())
    draw_from_one_process = torch.rand(3)

    replicated = Toy(DistributedDataParallel(make_model(seed=4)))
    replicated.train(1, env.rank, env.world_size)
    ddp_checkpoint = CheckpointManager(root / "ddp", 1, 1).save(1, replicated.state(), {})

    warm = sharded_model(seed=5)
    load_model_weights(warm, weights_file)
    return {
        "ddp_checkpoint": ddp_checkpoint,
        "ddp_params": {name: param.detach().clone() for name, param in replicated.model.module.named_parameters()},
        "warm_params": {name: full(param) for name, param in warm.named_parameters()},
        "checkpoint": checkpoint,
        "saved": saved,
        "restored": restored,
        "draws": (draw_after_save, draw_after_load),
        "losses": (losses_after_save, losses_after_load),
        "from_one_process": snapshot(from_one_process),
        "draw_from_one_process": draw_from_one_process,
        "notes": notes.messages,
    }


@pytest.fixture(scope="module")
def one_process_checkpoint(tmp_path_factory):
    toy = Toy(make_model(seed=7))
    toy.train(3)
    root = tmp_path_factory.mktemp("one_process")
    checkpoint = CheckpointManager(root, 1, 1).save(3, toy.state(), {"world_size": 1})
    return checkpoint, snapshot(toy), torch.rand(3)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "weights.safetensors"
    save_file(make_model(seed=8).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, one_process_checkpoint, weights_file):
    skip_unless_gloo_sharding_works()
    root = tmp_path_factory.mktemp("two_ranks")
    return run_on_ranks(two_ranks, 2, root, one_process_checkpoint[0], weights_file)


@pytest.mark.slow
@pytest.mark.cross_version
def test_two_ranks_resume_on_two_ranks_bit_exactly(ranks):
    for result in ranks:
        assert_same(result["saved"], result["restored"])
        assert torch.equal(*result["draws"])
        assert result["losses"][0] == result["losses"][1]
    assert not torch.equal(ranks[0]["draws"][0], ranks[1]["draws"][0]), "each rank keeps its own RNG stream"


@pytest.mark.slow
@pytest.mark.cross_version
def test_two_rank_checkpoint_loads_into_one_process(ranks):
    toy = Toy(make_model(seed=9))
    meta = load_checkpoint(ranks[0]["checkpoint"], toy.state())
    assert meta["world_size"] == 2
    assert_same(ranks[0]["saved"], snapshot(toy))
    assert torch.equal(torch.rand(3), ranks[0]["draws"][0]), "one process continues rank 0's stream"


@pytest.mark.slow
@pytest.mark.cross_version
def test_one_process_checkpoint_loads_into_two_ranks(ranks, one_process_checkpoint):
    _, expected, draw = one_process_checkpoint
    for result in ranks:
        assert_same(expected, result["from_one_process"])
        assert torch.equal(result["draw_from_one_process"], draw)
    assert ranks[0]["notes"] == []
    assert ranks[1]["notes"] == [
        "rank 1: the checkpoint has no RNG state for this rank (world size changed); using rank 0's"
    ]


@pytest.mark.slow
@pytest.mark.cross_version
def test_ddp_checkpoint_has_plain_parameter_names(ranks):
    model = make_model(seed=9)
    load_model_weights(model, ranks[0]["ddp_checkpoint"])
    for name, param in model.named_parameters():
        assert torch.equal(param, ranks[0]["ddp_params"][name]), name


@pytest.mark.slow
@pytest.mark.cross_version
def test_warm_start_of_a_sharded_model_from_a_weights_file(ranks):
    expected = make_model(seed=8).state_dict()
    for result in ranks:
        assert result["warm_params"].keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(result["warm_params"][name], tensor), name
