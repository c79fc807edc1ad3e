"""A checkpoint restores counters and state; the hyperparameters of optimizer and schedule come from the config
of the run that loads it, for every registered optimizer and schedule."""

import pytest
import torch
from pydantic import BaseModel

from llm_gym.assembly import make_registry
from llm_gym.checkpointing import CheckpointManager, OptimizerState, load_checkpoint, training_state
from llm_gym.errors import UserError
from llm_gym.optim.optimizers import OPTIMIZERS, weight_decay_parameter_groups
from llm_gym.optim.schedulers import SCHEDULERS
from llm_gym.registry.component import Component

SAVED_AT_STEP = 3
# Each schedule as a run first configured it, and as a longer run resumed from that one configures it.
SCHEDULES = {
    "StepLR": ({"step_size": 2, "gamma": 0.5}, {"step_size": 3, "gamma": 0.7}),
    "ConstantLR": ({"factor": 0.5, "total_iters": 4}, {"factor": 0.25, "total_iters": 8}),
    "OneCycleLR": ({"max_lr": 0.1, "total_steps": 6}, {"max_lr": 0.2, "total_steps": 12}),
    "LinearLR": ({"start_factor": 0.5, "total_iters": 4}, {"start_factor": 0.25, "total_iters": 8}),
    "CosineAnnealingLR": ({"T_max": 6}, {"T_max": 12}),
    "LinearWarmupCosineDecay": ({"warmup_steps": 2, "total_steps": 6}, {"warmup_steps": 2, "total_steps": 12}),
}
OPTIMIZER_CONFIGS = {
    "AdamW": ({"lr": 0.01}, {"lr": 0.02, "weight_decay": 0.05, "betas": (0.8, 0.9), "eps": 1e-6}),
    "Adam": ({"lr": 0.01}, {"lr": 0.02, "weight_decay": 0.01, "betas": (0.8, 0.9)}),
    "SGD": ({"lr": 0.01, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01}),
}


class _Optimization(BaseModel):
    optimizer: Component("optimizer")
    lr_scheduler: Component("lr_scheduler")


class _Progress:
    def state_dict(self) -> dict:
        return {"step": SAVED_AT_STEP}

    def load_state_dict(self, state: dict) -> None:
        pass


def build(optimizer_hint: str, optimizer_config: dict, schedule_hint: str, schedule_config: dict):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 3))
    registry = make_registry()
    config = registry.validate(
        _Optimization,
        {
            "optimizer": {"type_hint": optimizer_hint, "config": optimizer_config},
            "lr_scheduler": {"type_hint": schedule_hint, "config": schedule_config},
        },
    )
    optimizer = registry.build_component_by_config(
        config.optimizer, extra_kwargs={"params": weight_decay_parameter_groups(model)}
    )
    schedule = registry.build_component_by_config(config.lr_scheduler, extra_kwargs={"optimizer": optimizer})
    return model, optimizer, schedule


def train(model, optimizer, schedule, steps: int) -> list[float]:
    """The lr of each step taken."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        model(torch.tensor([[0, 1, 2]])).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    return lrs


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def save(tmp_path, model, optimizer, schedule):
    state = training_state(model, optimizer, schedule, _Progress(), _Progress())
    return CheckpointManager(tmp_path, 0, -1).save(SAVED_AT_STEP, state, {"world_size": 1})


def load(checkpoint, model, optimizer, schedule) -> None:
    state = training_state(model, optimizer, schedule, _Progress(), _Progress())
    del state["rng"]
    load_checkpoint(checkpoint, state)


@pytest.mark.parametrize("schedule_hint", sorted(SCHEDULERS))
def test_a_changed_schedule_applies_from_the_resumed_step(tmp_path, schedule_hint):
    saved_config, resumed_config = SCHEDULES[schedule_hint]
    first_run = build("AdamW", {"lr": 0.01}, schedule_hint, saved_config)
    train(*first_run, SAVED_AT_STEP)
    checkpoint = save(tmp_path, *first_run)
    fresh = build("AdamW", {"lr": 0.01}, schedule_hint, resumed_config)
    fresh_lrs = train(*fresh, 2 * SAVED_AT_STEP)

    resumed = build("AdamW", {"lr": 0.01}, schedule_hint, resumed_config)
    load(checkpoint, *resumed)

    assert resumed[2].last_epoch == SAVED_AT_STEP
    assert train(*resumed, SAVED_AT_STEP) == fresh_lrs[SAVED_AT_STEP:]


@pytest.mark.parametrize("optimizer_hint", sorted(OPTIMIZERS))
def test_changed_optimizer_settings_apply_and_its_state_is_restored(tmp_path, optimizer_hint):
    saved_config, resumed_config = OPTIMIZER_CONFIGS[optimizer_hint]
    schedule = ("LinearWarmupCosineDecay", SCHEDULES["LinearWarmupCosineDecay"][0])
    first_run = build(optimizer_hint, saved_config, *schedule)
    train(*first_run, SAVED_AT_STEP)
    checkpoint = save(tmp_path, *first_run)
    fresh = build(optimizer_hint, resumed_config, *schedule)
    train(*fresh, SAVED_AT_STEP)

    resumed = build(optimizer_hint, resumed_config, *schedule)
    load(checkpoint, *resumed)

    assert hyperparameters(resumed[1]) == hyperparameters(fresh[1])
    for saved_param, resumed_param in zip(first_run[0].parameters(), resumed[0].parameters(), strict=True):
        saved, restored = first_run[1].state[saved_param], resumed[1].state[resumed_param]
        assert saved.keys() == restored.keys()
        assert all(torch.equal(torch.as_tensor(saved[key]), torch.as_tensor(restored[key])) for key in saved)


@pytest.mark.parametrize(
    ("saved", "resumed", "missing"),
    [
        (("AdamW", {"lr": 0.01}), ("SGD", {"lr": 0.01, "momentum": 0.9}), "momentum_buffer"),
        (("SGD", {"lr": 0.01}), ("SGD", {"lr": 0.01, "momentum": 0.9}), "momentum_buffer"),
    ],
)
def test_another_optimizers_state_is_refused_naming_what_is_missing(tmp_path, saved, resumed, missing):
    schedule = ("StepLR", SCHEDULES["StepLR"][0])
    first_run = build(*saved, *schedule)
    train(*first_run, SAVED_AT_STEP)
    checkpoint = save(tmp_path, *first_run)
    with pytest.raises(UserError, match="holds the state of another optimizer") as error:
        load(checkpoint, *build(*resumed, *schedule))
    assert f"the checkpoint has no {missing}" in str(error.value)
    assert "checkpointing.warm_start_from" in str(error.value)


def test_a_setting_the_checkpoint_lacks_comes_from_the_config(tmp_path, monkeypatch):
    """A torch release that adds a setting to the param groups (AdamW's decoupled_weight_decay, in 2.7) still
    resumes the checkpoints of the releases before it."""
    schedule = ("StepLR", SCHEDULES["StepLR"][0])
    first_run = build("AdamW", {"lr": 0.01}, *schedule)
    train(*first_run, SAVED_AT_STEP)
    with_every_setting = OptimizerState.state_dict

    def as_an_older_release_saves(self):
        return {key: value for key, value in with_every_setting(self).items() if not key.endswith(".amsgrad")}

    monkeypatch.setattr(OptimizerState, "state_dict", as_an_older_release_saves)
    checkpoint = save(tmp_path, *first_run)
    monkeypatch.undo()
    resumed = build("AdamW", {"lr": 0.01}, *schedule)
    load(checkpoint, *resumed)

    assert all(group["amsgrad"] is False for group in resumed[1].param_groups)
    for saved_param, resumed_param in zip(first_run[0].parameters(), resumed[0].parameters(), strict=True):
        torch.testing.assert_close(resumed[1].state[resumed_param], first_run[1].state[saved_param], rtol=0, atol=0)
    # The next save is whole again.
    assert any(key.endswith(".amsgrad") for key in OptimizerState(resumed[0], resumed[1]).state_dict())


def test_a_schedule_too_short_for_the_checkpoint_is_named(tmp_path):
    first_run = build("AdamW", {"lr": 0.01}, "OneCycleLR", {"max_lr": 0.1, "total_steps": 6})
    train(*first_run, SAVED_AT_STEP)
    checkpoint = save(tmp_path, *first_run)
    with pytest.raises(UserError, match="lr_scheduler: the configured schedule cannot reach the checkpoint's step 3"):
        load(checkpoint, *build("AdamW", {"lr": 0.01}, "OneCycleLR", {"max_lr": 0.1, "total_steps": 2}))
