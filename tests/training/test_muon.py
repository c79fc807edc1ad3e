"""Muon: torch's update where torch has one, the hidden matrices apart from the rest, the same result sharded
over two ranks (FSDP2, HSDP) as on one, and a memory estimate that knows its state."""

import pytest
import torch
from torch import nn

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.data.collators import Batch
from llm_gym.optim.optimizers import Muon, MuonConfig, newton_schulz
from llm_gym.parallel.distributed import init_distributed
from llm_gym.parallel.strategies import FSDP2, HSDP, FSDP2Config, HSDPConfig, NoParallelism, NoParallelismConfig
from llm_gym.training.builder import build_optimization
from llm_gym.training.step import train_step
from llm_gym.training.summary import optimizer_state_tensors

VOCAB, DIM, SEQ = 32, 16, 8
MUON = MuonConfig(lr=0.02, adamw={"lr": 1e-3})


def pair(*shape: int) -> tuple[nn.Parameter, nn.Parameter]:
    value = torch.randn(*shape)
    return nn.Parameter(value.clone()), nn.Parameter(value.clone())


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in torch 2.9")
@pytest.mark.parametrize(("nesterov", "adjust_lr"), [(True, "original"), (False, "match_rms_adamw")])
def test_on_one_rank_the_update_is_torch_s_muon_and_adamw_to_the_bit(nesterov, adjust_lr):
    torch.manual_seed(0)
    (wide, wide_torch), (tall, tall_torch), (bias, bias_torch) = pair(4, 6), pair(6, 4), pair(4)
    ours = Muon(
        MuonConfig(lr=0.02, nesterov=nesterov, adjust_lr=adjust_lr, newton_schulz_dtype="bfloat16", adamw={"lr": 1e-3}),
        [{"params": [wide, tall], "use_muon": True}, {"params": [bias], "use_muon": False, "weight_decay": 0.01}],
    )
    torch_muon = torch.optim.Muon([wide_torch, tall_torch], lr=0.02, nesterov=nesterov, adjust_lr_fn=adjust_lr)
    torch_adamw = torch.optim.AdamW([bias_torch], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, foreach=False)
    for _ in range(4):
        for ours_parameter, torch_parameter in ((wide, wide_torch), (tall, tall_torch), (bias, bias_torch)):
            ours_parameter.grad = torch.randn_like(ours_parameter)
            torch_parameter.grad = ours_parameter.grad.clone()
        for optimizer in (ours, torch_muon, torch_adamw):
            optimizer.step()
        assert torch.equal(wide, wide_torch) and torch.equal(tall, tall_torch) and torch.equal(bias, bias_torch)


@pytest.mark.parametrize("shape", [(8, 8), (5, 12), (12, 5)])
def test_newton_schulz_keeps_the_singular_vectors_and_flattens_the_spectrum(shape):
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    orthogonal = newton_schulz(matrix, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    singular_values = torch.linalg.svdvals(orthogonal)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5  # U S' Vᵀ with S' near 1
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    # The same singular vectors: U ᵀ · result · V is diagonal.
    projected = left.T @ orthogonal @ right.T
    off_diagonal = projected - torch.diag(torch.diagonal(projected))
    assert off_diagonal.abs().max() < 1e-4


def test_the_config_gives_hidden_matrices_to_muon_and_the_rest_to_adamw():
    registry = make_registry()
    config = load_config(
        TINY_CONFIG,
        TrainingAppConfig,
        ["model.config.n_layer=1", "model.config.tie_embeddings=false", "optimizer.type_hint=Muon",
         "optimizer.config.lr=0.02", "optimizer.config.adamw.lr=3e-3", "optimizer.config.adamw.betas=[0.8, 0.9]",
         "parameter_groups=[{match: 'output.weight', lr_multiplier: 0.5}]", "lr_scheduler.config.warmup_steps=0"],
        registry=registry,
    )[0]  # fmt: skip
    model = registry.build_component_by_config(config.model)
    optimizer, _ = build_optimization(config, model, registry)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = {
        tuple(sorted(names[id(parameter)] for parameter in group["params"])): group for group in optimizer.param_groups
    }
    hidden = tuple(sorted(f"blocks.0.{name}.weight" for name in
                          ("attention.query", "attention.key", "attention.value", "attention.output", "mlp.gate",
                           "mlp.input", "mlp.output")))  # fmt: skip
    no_decay = (
        "blocks.0.attention_norm.weight",
        "blocks.0.mlp_norm.weight",
        "final_norm.weight",
        "token_embedding.weight",
    )
    assert set(groups) == {hidden, no_decay, ("output.weight",)}
    assert groups[hidden]["use_muon"] and (groups[hidden]["lr"], groups[hidden]["momentum"]) == (0.02, 0.95)
    for adamw_group in (groups[no_decay], groups[("output.weight",)]):
        assert not adamw_group["use_muon"] and adamw_group["betas"] == (0.8, 0.9) and "momentum" not in adamw_group
    assert (groups[no_decay]["lr"], groups[no_decay]["weight_decay"]) == (3e-3, 0.0)
    assert (groups[("output.weight",)]["lr"], groups[("output.weight",)]["weight_decay"]) == (1.5e-3, 0.1)


def test_muon_refuses_groups_it_cannot_update():
    matrix, vector = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="whether they are hidden matrices"):
        Muon(MUON, [{"params": [matrix]}])
    with pytest.raises(ValueError, match="non-2-D parameter"):
        Muon(MUON, [{"params": [matrix, vector], "use_muon": True}])


def test_the_memory_estimate_counts_one_buffer_per_hidden_weight_and_two_moments_for_the_rest():
    matrix, vector = nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(16))
    optimizer = Muon(MUON, [{"params": [matrix], "use_muon": True}, {"params": [vector], "use_muon": False}])
    assert optimizer_state_tensors(optimizer) == (
        1.5,
        "Muon: 1 fp32 momentum buffer (50% hidden matrices), 2 fp32 AdamW moments (the rest)",
    )


class OddLM(nn.Module):
    """Blocks whose matrices split unevenly over two ranks (7 and 5 rows), an untied head and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(DIM, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, DIM)) for _ in range(2)
        )
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(input_ids)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


def muon_steps(strategy_name: str, steps: int = 3, **strategy_kwargs) -> dict[str, torch.Tensor]:
    env = init_distributed("cpu")
    strategies = {
        "none": (NoParallelism, NoParallelismConfig),
        "fsdp2": (FSDP2, FSDP2Config),
        "hsdp": (HSDP, HSDPConfig),
    }
    strategy_class, strategy_config = strategies[strategy_name]
    strategy = strategy_class(strategy_config(**strategy_kwargs), env)
    torch.manual_seed(0)
    model = strategy.parallelize(OddLM())
    groups = [
        {"params": [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2],
         "use_muon": True},
        {"params": [p for name, p in model.named_parameters() if not (name.startswith("blocks.") and p.ndim == 2)],
         "use_muon": False},
    ]  # fmt: skip
    optimizer = Muon(MuonConfig(lr=0.05, adamw={"lr": 1e-2}, newton_schulz_dtype="float32"), groups)
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (4, SEQ + 1), generator=generator)
        mine = [Batch(inputs=tokens[env.rank :: env.world_size, :-1], targets=tokens[env.rank :: env.world_size, 1:])]
        train_step(model, strategy, mine, max_grad_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
    return {
        name: (parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter).detach().clone()
        for name, parameter in model.named_parameters()
    }


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "kwargs"), [("fsdp2", {}), ("hsdp", {"shard_degree": 2})])
def test_two_sharded_ranks_give_the_weights_of_one(strategy, kwargs):
    skip_unless_gloo_sharding_works()
    (reference,) = run_on_ranks(muon_steps, 1, "none")
    for result in run_on_ranks(_muon_steps_with_kwargs, 2, strategy, kwargs):
        assert result.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(result[name], value, atol=1e-5, rtol=0, msg=name)


def _muon_steps_with_kwargs(strategy: str, kwargs: dict) -> dict[str, torch.Tensor]:
    return muon_steps(strategy, **kwargs)
