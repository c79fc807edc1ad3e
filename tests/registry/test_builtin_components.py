"""Every built-in optimizer and LR schedule builds from its node and steps; the schedule feeds on the optimizer."""

import inspect
import itertools
import math

import pytest
import torch
from pydantic import BaseModel

from llm_gym.assembly import BUILTIN_COMPONENTS, make_registry
from llm_gym.errors import ConfigError
from llm_gym.optim.optimizers import OPTIMIZERS, weight_decay_parameter_groups
from llm_gym.optim.schedulers import SCHEDULERS, LinearWarmupCosineDecay, LinearWarmupCosineDecayConfig
from llm_gym.registry.component import Component
from llm_gym.registry.registry import takes_config_model


class Optimization(BaseModel):
    optimizer: Component("optimizer")
    lr_scheduler: Component("lr_scheduler")


SCHEDULE_CONFIGS = {
    "StepLR": {"step_size": 2, "gamma": 0.5},
    "ConstantLR": {"factor": 0.5, "total_iters": 2},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 10},
    "LinearLR": {"start_factor": 0.5, "total_iters": 4},
    "CosineAnnealingLR": {"T_max": 10},
    "LinearWarmupCosineDecay": {"warmup_steps": 2, "total_steps": 10},
}


def test_every_registered_schedule_has_a_test_config():
    assert set(SCHEDULE_CONFIGS) == set(SCHEDULERS)
    assert {"AdamW", "Adam", "SGD"} == set(OPTIMIZERS)


def build(optimizer_hint: str, schedule_hint: str):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 3))
    registry = make_registry()
    config = registry.validate(
        Optimization,
        {
            "optimizer": {"type_hint": optimizer_hint, "config": {"lr": 0.01}},
            "lr_scheduler": {"type_hint": schedule_hint, "config": SCHEDULE_CONFIGS[schedule_hint]},
        },
    )
    optimizer = registry.build_component_by_config(
        config.optimizer, extra_kwargs={"params": weight_decay_parameter_groups(model)}
    )
    schedule = registry.build_component_by_config(config.lr_scheduler, extra_kwargs={"optimizer": optimizer})
    return model, optimizer, schedule


@pytest.mark.parametrize("optimizer_hint", sorted(OPTIMIZERS))
def test_optimizer_builds_and_steps(optimizer_hint):
    model, optimizer, _ = build(optimizer_hint, "ConstantLR")
    assert isinstance(optimizer, OPTIMIZERS[optimizer_hint][0])
    before = [parameter.detach().clone() for parameter in model.parameters()]
    model(torch.tensor([[0, 1, 2]])).sum().backward()
    optimizer.step()
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("schedule_hint", sorted(SCHEDULERS))
def test_schedule_builds_on_the_optimizer_and_steps(schedule_hint):
    _, optimizer, schedule = build("AdamW", schedule_hint)
    assert isinstance(schedule, SCHEDULERS[schedule_hint][0])
    assert schedule.optimizer is optimizer
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert all(lr > 0 and math.isfinite(lr) for lr in lrs)
    assert len(set(lrs)) > 1  # every configuration above changes the rate within five steps


def test_weight_decay_groups_spare_biases_and_embeddings():
    _, optimizer, _ = build("AdamW", "ConstantLR")
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == pytest.approx(0.1)
    assert [tuple(p.shape) for p in decayed["params"]] == [(3, 4)]
    assert spared["weight_decay"] == 0.0
    assert sorted(tuple(p.shape) for p in spared["params"]) == [(3,), (5, 4)]


def linear_warmup_cosine_lrs(steps: int, **config) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LinearWarmupCosineDecay(LinearWarmupCosineDecayConfig(**config), optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_linear_warmup_cosine_decay_values():
    lrs = linear_warmup_cosine_lrs(14, warmup_steps=3, total_steps=11, min_lr_ratio=0.1)
    # Warmup: (step + 1) / (warmup + 1) of the peak, reaching the peak exactly when warmup ends.
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # Halfway through the 8 decay steps the cosine is at its midpoint: 0.1 + 0.9 × 0.5.
    assert lrs[7] == pytest.approx(0.55)
    # Then min_lr_ratio × peak, and flat after total_steps.
    assert lrs[11:] == pytest.approx([0.1, 0.1, 0.1])
    assert all(later <= earlier for earlier, later in itertools.pairwise(lrs[3:]))


def test_linear_warmup_cosine_decay_without_warmup_starts_at_the_peak():
    assert linear_warmup_cosine_lrs(2, warmup_steps=0, total_steps=4, min_lr_ratio=0.0)[0] == pytest.approx(1.0)


def test_linear_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match=r"warmup_steps \(5\) exceeds total_steps \(4\)"):
        linear_warmup_cosine_lrs(1, warmup_steps=5, total_steps=4)


def _own_components():
    for register_key, table in BUILTIN_COMPONENTS.items():
        for type_hint, (component, config_model) in table.items():
            if component.__module__.startswith("llm_gym."):
                yield pytest.param(component, config_model, id=f"{register_key}:{type_hint}")


@pytest.mark.parametrize(("component", "config_model"), list(_own_components()))
def test_a_builtin_declares_its_arguments_once_in_its_config_model(component, config_model):
    """The constructor takes the validated config model whole; no config field is a parameter of its own, but
    for those holding nested components, which also arrive as factories under their names."""
    parameters = inspect.signature(component).parameters
    nested = {name for name, field in config_model.model_fields.items() if "ComponentSlot" in repr(field)}
    assert not set(config_model.model_fields) & (set(parameters) - {"config"} - nested), "a config field repeated"
    if config_model.model_fields:
        assert takes_config_model(component, config_model)
    else:  # nothing to configure: no config parameter either
        assert "config" not in parameters


def test_key_query_validates_the_arguments_of_a_component_built_from_its_config():
    registry = make_registry()
    norm = registry.build_component_by_key_query("norm", "LayerNorm", {"dim": 4, "eps": 1e-3})
    assert (norm.normalized_shape, norm.eps, norm.bias is not None) == ((4,), 1e-3, True)
    with pytest.raises(ConfigError, match=r"^cannot build 'LayerNorm': eps: Input should be greater than 0$"):
        registry.build_component_by_key_query("norm", "LayerNorm", {"dim": 4, "eps": -1})
