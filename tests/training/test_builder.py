"""The model build that ``llm_gym run`` uses: eager and meta-device builds give the same initial weights,
on one rank and sharded over two."""

from types import SimpleNamespace

import pytest
import torch
from torch.distributed.tensor import DTensor

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.data.collators import document_ids
from llm_gym.data.tokenizers import ByteTokenizer
from llm_gym.errors import ConfigError
from llm_gym.models.attention import AttentionKernelConfig, SDPAttention
from llm_gym.models.mlp import GELUMLP, GELUMLPConfig
from llm_gym.parallel.distributed import DistributedEnvironment, destroy_distributed, init_distributed
from llm_gym.training import builder
from llm_gym.training.builder import build_model, build_model_on_meta, build_parallelism, check_model_fits

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


@pytest.mark.parametrize(
    ("setting", "compiled_model", "compiled_blocks"),
    [("false", False, False), ("none", False, False), ("true", False, True), ("blocks", False, True),
     ("model", True, False)],
)  # fmt: skip
def test_compile_wraps_the_forward_it_names_in_place(one_rank, setting, compiled_model, compiled_blocks):
    # torch.compile compiles at the first call: here only what it wrapped is checked, and that parameter names
    # (so checkpoints) do not depend on the setting. tests/training/test_run.py trains with each scope.
    config = load_config(TINY_CONFIG, TrainingAppConfig, [*SMALL, f"training.compile={setting}"], registry=REGISTRY)[0]
    model = build_model(config, build_parallelism(config, one_rank, REGISTRY), REGISTRY).model
    assert ("forward" in vars(model)) is compiled_model
    assert all(("forward" in vars(block)) is compiled_blocks for block in model.blocks)
    assert_same_weights(dict(model.named_parameters()), expected_weights())


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


class _ScaledMLP(GELUMLP):
    """A user MLP with a bare parameter and buffers that only its constructor fills."""

    def __init__(self, config: GELUMLPConfig, dim: int, bias: bool):
        super().__init__(config, dim, bias)
        self.scale = torch.nn.Parameter(torch.ones(dim))
        self.register_buffer("keep", torch.ones(dim, dtype=torch.bool), persistent=False)
        self.register_buffer("positions", torch.arange(dim), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden) * self.scale


class _ResetScaledMLP(_ScaledMLP):
    def reset_parameters(self) -> None:
        self.scale.fill_(1.0)
        self.keep.fill_(True)
        self.positions.copy_(torch.arange(self.positions.numel()))


class _MaskedAttention(SDPAttention):
    """A kernel holding only a buffer, an int8 table whose values include the integer sentinel (-128)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__(dropout)
        self.register_buffer("table", torch.full((4,), -128, dtype=torch.int8))


class _ResetMaskedAttention(_MaskedAttention):
    def reset_parameters(self) -> None:
        self.table.fill_(-128)


class _HalfResetMaskedAttention(_MaskedAttention):
    def reset_parameters(self) -> None:
        self.table[:2] = -128  # the rest keeps what the memory held


def build_with(registry, env, *overrides: str, mlp: type | None = None, attention: type | None = None):
    """``build_model`` of the small config with its MLP and attention kernel replaced by these test classes."""
    nodes = []
    for key, cls, config_model, config in (
        ("mlp", mlp, GELUMLPConfig, "{hidden_dim: 64}"),
        ("attention", attention, AttentionKernelConfig, "{}"),
    ):
        if cls is not None:
            registry.register_component(key, cls.__name__, cls, config_model)
            nodes.append(f"model.config.{key}={{type_hint: {cls.__name__}, config: {config}}}")
    config = load_config(TINY_CONFIG, TrainingAppConfig, [*SMALL, *nodes, *overrides], registry=registry)[0]
    return build_model(config, build_parallelism(config, env, registry), registry)


@pytest.mark.parametrize("activation_checkpointing", ["none", "full"])
def test_parameters_and_buffers_that_init_weights_leaves_unfilled_are_refused_by_name(
    fresh_registry, one_rank, activation_checkpointing
):
    with pytest.raises(ConfigError) as error:
        build_with(
            fresh_registry, one_rank, f"training.activation_checkpointing={activation_checkpointing}", mlp=_ScaledMLP
        )
    message = str(error.value)
    assert message.startswith(
        "model: DecoderLM.init_weights() left blocks.0.mlp.scale, blocks.1.mlp.scale, blocks.0.mlp.keep, "
        "blocks.0.mlp.positions, blocks.1.mlp.keep and 1 more (parameters and buffers of _ScaledMLP) without values"
    )
    assert "give _ScaledMLP a reset_parameters() that fills its own" in message


def test_a_component_filling_its_state_in_reset_parameters_is_initialised(fresh_registry, one_rank):
    built = build_with(fresh_registry, one_rank, mlp=_ResetScaledMLP, attention=_ResetMaskedAttention)
    block = built.inner.blocks[1]
    assert torch.equal(block.mlp.scale, torch.ones(32)) and bool(block.mlp.keep.all())
    assert torch.equal(block.mlp.positions, torch.arange(32))
    assert torch.equal(block.attention.kernel.table, torch.full((4,), -128, dtype=torch.int8))


@pytest.mark.parametrize("kernel", [_MaskedAttention, _HalfResetMaskedAttention])
def test_an_integer_buffer_left_unfilled_in_whole_or_part_is_refused(fresh_registry, one_rank, kernel):
    with pytest.raises(ConfigError, match=r"left blocks\.0\.attention\.kernel\.table, blocks\.1\.attention"):
        build_with(fresh_registry, one_rank, attention=kernel)


class _ShardUnawareMLP(_ResetScaledMLP):
    """Fills the scale on rank 0 only, as an init written for one process would fill only its own shard."""

    def reset_parameters(self) -> None:
        self.keep.fill_(True)
        self.positions.copy_(torch.arange(self.positions.numel()))
        if torch.distributed.get_rank() == 0:  # (the constructor's call, on the meta device, is not sharded)
            (self.scale.to_local() if isinstance(self.scale, DTensor) else self.scale).fill_(1.0)


def _build_sharded_after_sharding(mlp: type) -> str:
    env = init_distributed("cpu")
    try:
        build_with(make_registry(), env, "parallelism.type_hint=FSDP2", "training.meta_device_init=true", mlp=mlp)
    except ConfigError as error:
        return str(error)
    return "built"


@pytest.mark.slow
def test_a_shard_left_unfilled_on_one_rank_is_refused_on_every_rank():
    skip_unless_gloo_sharding_works()
    messages = run_on_ranks(_build_sharded_after_sharding, 2, _ShardUnawareMLP)
    assert messages[0] == messages[1]
    assert messages[0].startswith(
        "model: DecoderLM.init_weights() left blocks.0.mlp.scale, blocks.1.mlp.scale (parameters of _ShardUnawareMLP)"
    )
    assert run_on_ranks(_build_sharded_after_sharding, 2, _ResetScaledMLP) == ["built", "built"]


@pytest.mark.parametrize("meta_device_init", [False, True])
def test_weights_beyond_the_memory_of_the_device_are_refused(monkeypatch, meta_device_init):
    """Two CPU ranks of one machine share its RAM; with meta_device_init each holds only its FSDP2 shard."""
    config = load("FSDP2", meta_device_init)
    env = DistributedEnvironment(0, 0, 2, 2, torch.device("cpu"))
    registry = make_registry()
    parallelism = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    model = build_model_on_meta(config, registry)
    tensors = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}.values()
    needed = sum(tensor.numel() * tensor.element_size() for tensor in tensors) * (1 if meta_device_init else 2)
    monkeypatch.setattr(builder, "available_memory", lambda device: needed)
    check_model_fits(model, config, parallelism)
    monkeypatch.setattr(builder, "available_memory", lambda device: needed - 1)
    with pytest.raises(ConfigError, match=r"^model: its weights alone need [\d.]+ GiB × 2 ranks on cpu, more than"):
        check_model_fits(model, config, parallelism)


@pytest.mark.parametrize("masking", [False, True])
def test_batches_carry_document_ids_exactly_when_the_model_reads_them(byte_corpus, masking):
    overrides = [*SMALL, f"model.config.document_masking={masking}",
                 f"data.train_dataset.config.path_prefix={byte_corpus / 'train_byte'}",
                 f"data.eval_datasets.val.config.path_prefix={byte_corpus / 'val_byte'}"]  # fmt: skip
    config = load_config(TINY_CONFIG, TrainingAppConfig, overrides, registry=REGISTRY)[0]
    end = builder.end_of_document_id(config, build_model_on_meta(config, REGISTRY))
    assert end == (ByteTokenizer.eos_id if masking else None)
    parallelism = SimpleNamespace(data_parallel_rank=0, data_parallel_size=1)
    data = builder.build_data(config, parallelism, REGISTRY, end)
    batches = [next(iter(data.train_loader)), next(data.eval_splits["val"]())]
    for batch in batches:
        expected = document_ids(batch.inputs, ByteTokenizer.eos_id) if masking else None
        assert batch.document_ids is None if expected is None else torch.equal(batch.document_ids, expected)
