"""The model build that ``llm_gym run`` uses: eager and meta-device builds give the same initial weights,
on one rank and sharded over two."""

import pytest
import torch

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.parallel.distributed import destroy_distributed, init_distributed
from llm_gym.training.builder import build_model, build_parallelism

REGISTRY = make_registry()
SEED = 5
# The shipped tiny config (RoPE, GQA, SwiGLU, TruncatedNormal), smaller still; data paths are never read here.
SMALL = ["training.sequence_length=16", "model.config.n_layer=2", "model.config.dim=32", f"experiment.seed={SEED}"]


def load(strategy: str, meta_device_init: bool) -> TrainingAppConfig:
    overrides = [*SMALL, f"parallelism.type_hint={strategy}", f"training.meta_device_init={meta_device_init}"]
    return load_config(TINY_CONFIG, TrainingAppConfig, overrides, registry=REGISTRY)[0]


def expected_weights() -> dict[str, torch.Tensor]:
    """The weights of a model constructed directly, then initialised from the experiment seed."""
    model = REGISTRY.build_component_by_config(load("NoParallelism", False).model)
    torch.manual_seed(SEED)
    with torch.no_grad():
        model.init_weights()
    return {name: parameter.detach() for name, parameter in model.named_parameters()}


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=0, rtol=0, msg=name)


@pytest.fixture
def one_rank():
    """A one-process group for this test only: later tests expect none."""
    yield init_distributed("cpu")
    destroy_distributed()


@pytest.mark.parametrize("meta_device_init", [False, True])
@pytest.mark.parametrize("strategy", ["NoParallelism", "FSDP2"])
def test_one_rank_build_has_the_weights_of_the_seed(one_rank, strategy, meta_device_init):
    config = load(strategy, meta_device_init)
    built = build_model(config, build_parallelism(config, one_rank, REGISTRY), REGISTRY)
    assert built.model is built.inner  # one rank: nothing to wrap
    assert not any(parameter.is_meta for parameter in built.model.parameters())
    assert_same_weights(dict(built.model.named_parameters()), expected_weights())


def _two_rank_build(meta_device_init: bool) -> dict:
    config = load("FSDP2", meta_device_init)
    built = build_model(config, build_parallelism(config, init_distributed("cpu"), REGISTRY), REGISTRY)
    return {
        "sharded": all(type(parameter).__name__ == "DTensor" for parameter in built.model.parameters()),
        "weights": {name: p.full_tensor().detach().clone() for name, p in built.model.named_parameters()},
    }


@pytest.mark.slow
@pytest.mark.parametrize("meta_device_init", [False, True])
def test_two_rank_fsdp2_build_has_the_weights_of_the_seed(meta_device_init):
    skip_unless_gloo_sharding_works()
    expected = expected_weights()
    for result in run_on_ranks(_two_rank_build, 2, meta_device_init):
        assert result["sharded"]
        assert_same_weights(result["weights"], expected)


class _NoInitWeights(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)


def test_a_model_without_the_contract_is_refused_when_built(fresh_registry, one_rank):
    fresh_registry.register_component("model", "NoInitWeights", _NoInitWeights)
    overrides = [*SMALL, "model={type_hint: NoInitWeights, config: {dim: 4}}"]
    config = load_config(TINY_CONFIG, TrainingAppConfig, overrides, registry=fresh_registry)[0]
    with pytest.raises(ConfigError, match=r"model: _NoInitWeights does not provide .* lacks vocab_size \(int\)"):
        build_model(config, build_parallelism(config, one_rank, fresh_registry), fresh_registry)
