"""The training step: per-token loss over the global batch, accumulation, clipping and sharding parity."""

import re

import pytest
import torch
from torch import nn

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from llm_gym.data.collators import Batch
from llm_gym.errors import UserError
from llm_gym.parallel.distributed import DistributedEnvironment, init_distributed
from llm_gym.parallel.strategies import FSDP2, HSDP, PARALLELISM, HSDPConfig, NoParallelism, NoParallelismConfig
from llm_gym.training.step import train_step

VOCAB, DIM, SEQ = 32, 16, 8


class ToyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh()) for _ in range(2))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(input_ids)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


def global_batch(samples: int = 8) -> Batch:
    tokens = torch.randint(0, VOCAB, (samples, SEQ + 1), generator=torch.Generator().manual_seed(7))
    targets = tokens[:, 1:].clone()
    targets[0, :3] = -100  # unequal token counts per sample: normalisation must use the global count
    return Batch(inputs=tokens[:, :-1], targets=targets)


def split(batch: Batch, parts: int, index: int = 0, of: int = 1) -> list[Batch]:
    """This rank's ``parts`` micro batches, taking every ``of``-th sample from ``index`` (the sampler's stride)."""
    inputs, targets = batch.inputs[index::of], batch.targets[index::of]
    size = len(inputs) // parts
    return [Batch(inputs[i * size : (i + 1) * size], targets[i * size : (i + 1) * size]) for i in range(parts)]


def one_step(strategy_name: str, accumulation: int, max_norm: float | None = 0.5, **strategy_kwargs) -> dict:
    env = init_distributed("cpu")
    names = {"none": "NoParallelism", "fsdp2": "FSDP2", "ddp": "DDP", "hsdp": "HSDP"}
    strategy_class, config_model = PARALLELISM[names[strategy_name]]
    strategy = strategy_class(config_model(**strategy_kwargs), env)
    torch.manual_seed(0)
    model = strategy.parallelize(ToyLM())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    micro = split(global_batch(), accumulation, env.rank, env.world_size)
    result = train_step(model, strategy, micro, max_grad_norm=max_norm).read()
    optimizer.step()
    state = {
        name: (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().clone()
        for name, param in model.named_parameters()
    }
    return {
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "params": {k.removeprefix("module."): v for k, v in state.items()},
    }


@pytest.fixture(scope="module")
def reference() -> dict:
    return run_on_ranks(one_step, 1, "none", 1)[0]


def assert_same(result: dict, expected: dict, atol: float = 1e-6) -> None:
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert result["grad_norm"] == pytest.approx(expected["grad_norm"], abs=1e-6)
    for name, value in expected["params"].items():
        torch.testing.assert_close(result["params"][name], value, atol=atol, rtol=0)


def test_gradient_accumulation_equals_one_big_batch(reference):
    assert_same(run_on_ranks(one_step, 1, "none", 4)[0], reference)


@pytest.mark.slow
@pytest.mark.cross_version
@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [("fsdp2", {}), ("ddp", {}), ("hsdp", {"replicate_degree": 2}), ("hsdp", {"shard_degree": 2})],
)
def test_two_ranks_match_one_rank_with_the_same_global_batch(strategy, kwargs, reference):
    if strategy != "ddp":
        skip_unless_gloo_sharding_works()
    for result in run_on_ranks(_step_with_kwargs, 2, strategy, kwargs):
        assert_same(result, reference)


def _step_with_kwargs(strategy: str, kwargs: dict) -> dict:
    return one_step(strategy, 2, **kwargs)


@pytest.mark.slow
@pytest.mark.cross_version
def test_fsdp2_clipping_uses_the_global_norm_of_an_unsharded_model():
    skip_unless_gloo_sharding_works()
    unclipped = run_on_ranks(one_step, 1, "none", 1, None)[0]
    sharded = run_on_ranks(one_step, 2, "fsdp2", 1, 1e-3)
    for result in sharded:
        assert result["grad_norm"] == pytest.approx(unclipped["grad_norm"], rel=1e-6)
    clipped_reference = run_on_ranks(one_step, 1, "none", 1, 1e-3)[0]
    assert_same(sharded[0], clipped_reference)


def env(world_size: int, local_world_size: int | None = None) -> DistributedEnvironment:
    return DistributedEnvironment(0, 0, world_size, local_world_size or world_size, torch.device("cpu"))


@pytest.mark.parametrize(
    ("world_size", "replicate", "shard", "message"),
    [
        (4, 3, -1, "must equal the world size 4"),
        (4, 2, 3, "must equal the world size 4"),
        (2, 0, 2, "positive or -1"),
    ],
)
def test_hsdp_degrees_must_multiply_to_the_world_size(world_size, replicate, shard, message):
    with pytest.raises(UserError, match=message):
        HSDP(HSDPConfig(replicate_degree=replicate, shard_degree=shard), env(world_size))


def test_hsdp_infers_missing_degrees():
    strategy = HSDP(HSDPConfig(), env(8, local_world_size=4))
    assert (strategy.replicate_degree, strategy.shard_degree) == (2, 4)
    assert (HSDP(HSDPConfig(replicate_degree=4), env(8)).shard_degree) == 2


@pytest.mark.parametrize("version", ["2.6.0+cu124", "2.8.0"])
@pytest.mark.parametrize("strategy", [FSDP2, HSDP])
def test_sharding_over_gloo_is_refused_on_torch_releases_that_get_it_wrong(monkeypatch, strategy, version):
    monkeypatch.setattr(torch, "__version__", version)
    message = f"{strategy.__name__} on CPU (gloo) needs torch >= 2.9, this is torch {version}"
    config = PARALLELISM[strategy.__name__][1]()
    with pytest.raises(UserError, match=re.escape(message)):
        strategy(config, env(2)).parallelize(nn.Linear(2, 2))
    model = nn.Linear(2, 2)
    assert strategy(config, env(1)).parallelize(model) is model  # one rank runs unwrapped


def test_no_parallelism_refuses_several_ranks():
    with pytest.raises(UserError, match="runs on one process"):
        NoParallelism(NoParallelismConfig(), env(2))


class DocumentRecordingLM(ToyLM):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[object] = []

    def forward(self, input_ids: torch.Tensor, **documents: torch.Tensor) -> torch.Tensor:
        self.received.append({name: value.tolist() for name, value in documents.items()})
        return super().forward(input_ids)


def _documents_received() -> list:
    strategy = NoParallelism(NoParallelismConfig(), init_distributed("cpu"))
    model = DocumentRecordingLM()
    batch = global_batch(2)
    document_ids = torch.tensor([[0] * 4 + [1] * 4, [0] * 8], dtype=torch.int32)
    with_documents = Batch(batch.inputs, batch.targets, document_ids=document_ids)
    train_step(model, strategy, [batch, with_documents], max_grad_norm=None)
    return model.received


def test_the_step_passes_document_ids_only_when_the_batch_has_them():
    received = run_on_ranks(_documents_received, 1)[0]
    assert received == [{}, {"document_ids": [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]}]
