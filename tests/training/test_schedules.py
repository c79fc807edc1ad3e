"""Warmup–stable–decay and schedules in sequence: the lr of every step of a short run against the formula,
the configuration rules, and a restore (stepping a fresh schedule to the saved position) that continues exactly."""

import math

import pytest
import torch
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.checkpointing import SchedulerState
from llm_gym.registry import Component


class Schedule(BaseModel):
    lr_scheduler: Component("lr_scheduler")


def optimizer_with_groups(*lrs: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


REGISTRY = make_registry()


def validate(node: dict) -> Schedule:
    return REGISTRY.validate(Schedule, {"lr_scheduler": node})


def build(node: dict, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return REGISTRY.build_component_by_config(validate(node).lr_scheduler, extra_kwargs={"optimizer": optimizer})


def lrs_of_steps(node: dict, steps: int, *group_lrs: float) -> list[list[float]]:
    """The lr of each param group for optimizer steps 1 .. ``steps``."""
    optimizer = optimizer_with_groups(*(group_lrs or (1.0,)))
    schedule = build(node, optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        assert schedule.get_last_lr() == lrs[-1]
        optimizer.step()
        schedule.step()
    return lrs


def wsd(**config) -> dict:
    return {"type_hint": "WarmupStableDecay", "config": config}


def wsd_formula(step: int, warmup: int, total: int, decay: int, shape: str, min_ratio: float) -> float:
    """The documented schedule, written out: step ``step`` (0-based) trains at this factor of the peak."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    start = total - decay
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / decay)
    shaped = {"linear": 1 - progress, "cosine": (1 + math.cos(math.pi * progress)) / 2, "1-sqrt": 1 - progress**0.5}
    return min_ratio + (1 - min_ratio) * shaped[shape]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_warmup_stable_decay_trains_each_step_at_the_formula(shape):
    lrs = lrs_of_steps(wsd(warmup_steps=2, total_steps=10, decay_steps=4, decay_shape=shape, min_lr_ratio=0.1), 13)

    expected = [wsd_formula(step, 2, 10, 4, shape, 0.1) for step in range(13)]
    assert [lr for (lr,) in lrs] == pytest.approx(expected, abs=1e-12)
    # Written out for the linear shape: warmup 1/3, 2/3; the peak for steps 3-7; then 1, 0.775, 0.55, 0.325
    # (a quarter of the way down per step), and 0.1 from step 11, which the run does not reach, on.
    if shape == "linear":
        assert [lr for (lr,) in lrs] == pytest.approx(
            [1 / 3, 2 / 3, 1, 1, 1, 1, 1, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1], abs=1e-12
        )


def test_a_decay_fraction_is_a_share_of_total_steps_rounded_half_up():
    by_count = lrs_of_steps(wsd(warmup_steps=0, total_steps=10, decay_steps=3), 10)
    by_fraction = lrs_of_steps(wsd(warmup_steps=0, total_steps=10, decay_fraction=0.25), 10)  # 2.5 → 3 steps
    assert by_fraction == by_count


def test_each_param_group_follows_the_schedule_at_its_own_peak():
    lrs = lrs_of_steps(wsd(warmup_steps=1, total_steps=4, decay_steps=2), 4, 1.0, 0.01)
    assert [second for _, second in lrs] == pytest.approx([first * 0.01 for first, _ in lrs], abs=1e-15)


def test_lengthening_a_run_in_its_stable_phase_keeps_the_lr_until_the_new_decay():
    short, longer = (lrs_of_steps(wsd(warmup_steps=2, total_steps=total, decay_steps=3), 20) for total in (10, 20))
    assert longer[:7] == short[:7]  # the shorter run's decay begins at step 7 (0-based)
    assert longer[7:17] == [[1.0]] * 10


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"warmup_steps": 2, "total_steps": 10}, "give exactly one of decay_steps"),
        ({"warmup_steps": 2, "total_steps": 10, "decay_steps": 3, "decay_fraction": 0.3}, "give exactly one of"),
        ({"warmup_steps": 2, "total_steps": 10, "decay_steps": 9}, r"warmup_steps \(2\) \+ decay steps \(9\) exceed"),
        ({"warmup_steps": 0, "total_steps": 10, "decay_fraction": 1.5}, "less than or equal to 1"),
        ({"warmup_steps": 0, "total_steps": 10, "decay_steps": 2, "decay_shape": "sqrt"}, "'linear', 'cosine'"),
    ],
)
def test_warmup_stable_decay_refuses_what_does_not_fit(config, message):
    with pytest.raises(ValidationError, match=message):
        validate(wsd(**config))


WARMUP_THEN_COSINE = {
    "type_hint": "Sequential",
    "config": {
        "schedules": [
            {"type_hint": "LinearLR", "config": {"start_factor": 0.25, "end_factor": 1.0, "total_iters": 3}},
            {"type_hint": "CosineAnnealingLR", "config": {"T_max": 4}},
        ],
        "milestones": [3],
    },
}


def test_schedules_in_sequence_each_start_at_their_own_step_zero():
    lrs = lrs_of_steps(WARMUP_THEN_COSINE, 8, 1.0, 0.1)

    warmup = [0.25, 0.5, 0.75]  # LinearLR from 0.25 of the peak, a quarter more per step
    cosine = [(1 + math.cos(math.pi * step / 4)) / 2 for step in range(5)]  # from the peak down to 0 over 4 steps
    assert [first for first, _ in lrs] == pytest.approx(warmup + cosine, abs=1e-12)
    assert [second for _, second in lrs] == pytest.approx([0.1 * lr for lr in warmup + cosine], abs=1e-12)


def test_a_later_schedule_does_not_disturb_an_earlier_one():
    # torch's SequentialLR builds every schedule on the one optimizer: ConstantLR's initial step would
    # halve the rate LinearLR starts from. Here each drives its own stand-in.
    node = {
        "type_hint": "Sequential",
        "config": {
            "schedules": [
                {"type_hint": "LinearLR", "config": {"start_factor": 0.5, "end_factor": 1.0, "total_iters": 2}},
                {"type_hint": "ConstantLR", "config": {"factor": 0.5, "total_iters": 2}},
            ],
            "milestones": [2],
        },
    }
    assert [lr for (lr,) in lrs_of_steps(node, 6)] == pytest.approx([0.5, 0.75, 0.5, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    ("schedules", "milestones", "message"),
    [(2, [], "2 schedules need 1 milestones, got 0"), (3, [4, 2], r"milestones must increase, got \[4, 2\]")],
)
def test_sequential_needs_one_increasing_milestone_between_schedules(schedules, milestones, message):
    node = {"type_hint": "StepLR", "config": {"step_size": 1}}
    with pytest.raises(ValidationError, match=message):
        validate({"type_hint": "Sequential", "config": {"schedules": [node] * schedules, "milestones": milestones}})


@pytest.mark.parametrize(
    "node", [WARMUP_THEN_COSINE, wsd(warmup_steps=2, total_steps=10, decay_steps=4, decay_shape="cosine")]
)
def test_a_restored_schedule_continues_exactly(node):
    uninterrupted = lrs_of_steps(node, 9, 1.0, 0.3)
    for saved_at in range(9):
        optimizer = optimizer_with_groups(1.0, 0.3)
        restored = SchedulerState(build(node, optimizer))
        restored.load_state_dict({"last_epoch": saved_at})
        continued = []
        for _ in range(saved_at, 9):
            continued.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            restored.lr_scheduler.step()
        assert continued == uninterrupted[saved_at:]
