"""Parameter groups from the config: lr multipliers and weight decay by parameter name, for every optimizer,
with each group's lr scheduled from its own peak and restored so."""

import pytest

from experiment_runs import TINY_CONFIG
from llm_gym.assembly import make_registry
from llm_gym.checkpointing import SchedulerState
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.optim.optimizers import parameter_name
from llm_gym.parallel.block_wrappers import apply_activation_checkpointing
from llm_gym.training.builder import build_optimization

RULES = "[{match: 'token_embedding.*', lr_multiplier: 0.1}, {match: '*norm*', weight_decay: 0.05}, {match: '*.mlp.output.weight', lr_multiplier: 0.5, weight_decay: 0.2}]"  # noqa: E501
SMALL = ["training.sequence_length=16", "model.config.n_layer=2", "model.config.dim=32", "model.config.n_head_kv=4"]
OPTIMIZERS = {
    "AdamW": [],
    "Adam": [],
    "SGD": ["optimizer.config.momentum=0.9"],
}


def built(*overrides: str):
    registry = make_registry()
    config = load_config(TINY_CONFIG, TrainingAppConfig, [*SMALL, *overrides], registry=registry)[0]
    model = registry.build_component_by_config(config.model)
    return model, *build_optimization(config, model, registry)


def groups_by_name(model, optimizer) -> list[tuple[list[str], float, float]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [
        (sorted(names[id(parameter)] for parameter in group["params"]), group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
    ]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_gets_the_groups_the_config_asks_for(optimizer):
    model, built_optimizer, _ = built(
        f"optimizer.type_hint={optimizer}", "optimizer.config.lr=0.01", "optimizer.config.weight_decay=0.1",
        *OPTIMIZERS[optimizer], f"parameter_groups={RULES}",
    )  # fmt: skip

    # The schedule's first step (warmup) scales every group alike: compare with the group's peak.
    factor = 1 / 6  # LinearWarmupCosineDecay, 5 warmup steps: (0 + 1) / (5 + 1)
    blocks = [f"blocks.{index}" for index in range(2)]
    assert groups_by_name(model, built_optimizer) == [
        # Matrices: the optimizer's lr and weight decay.
        (sorted(f"{block}.{name}.weight" for block in blocks for name in
                ("attention.query", "attention.key", "attention.value", "attention.output", "mlp.gate", "mlp.input")),
         pytest.approx(0.01 * factor), 0.1),
        # The tied embedding, which never decays: a tenth of the lr.
        (["token_embedding.weight"], pytest.approx(0.001 * factor), 0.0),
        # Norm gains: their own weight decay instead of none.
        (sorted([*(f"{block}.{norm}.weight" for block in blocks for norm in ("attention_norm", "mlp_norm")),
                 "final_norm.weight"]), pytest.approx(0.01 * factor), 0.05),
        ([f"{block}.mlp.output.weight" for block in blocks], pytest.approx(0.005 * factor), 0.2),
    ]  # fmt: skip


def test_without_rules_matrices_decay_and_the_rest_does_not():
    model, optimizer, _ = built()
    (matrices, lr, decay), (others, other_lr, other_decay) = groups_by_name(model, optimizer)
    assert (decay, other_decay, other_lr) == (0.1, 0.0, lr)
    assert all(name.endswith("norm.weight") or name == "token_embedding.weight" for name in others)
    assert len(matrices) == 2 * 7  # query, key, value, output; gate, input, output


def test_the_schedule_scales_each_group_from_its_own_peak_and_a_restore_keeps_it():
    def lrs(optimizer) -> list[float]:
        return [group["lr"] for group in optimizer.param_groups]

    _, optimizer, schedule = built(f"parameter_groups={RULES}", "lr_scheduler.config.total_steps=8")
    peaks = [group["initial_lr"] for group in optimizer.param_groups]
    assert peaks == pytest.approx([3e-3, 3e-4, 3e-3, 1.5e-3])
    history = []
    for _ in range(8):
        history.append(lrs(optimizer))
        assert lrs(optimizer) == pytest.approx([lrs(optimizer)[0] * peak / peaks[0] for peak in peaks], rel=1e-12)
        optimizer.step()
        schedule.step()

    _, restored_optimizer, restored_schedule = built(f"parameter_groups={RULES}", "lr_scheduler.config.total_steps=8")
    SchedulerState(restored_schedule).load_state_dict({"last_epoch": 5})
    assert lrs(restored_optimizer) == history[5]


def test_a_rule_that_matches_nothing_is_refused_with_the_names_it_could_match():
    with pytest.raises(ConfigError) as error:
        built("parameter_groups=[{match: '*norm*', weight_decay: 0.0}, {match: 'embedding.*', lr_multiplier: 2}]")
    assert str(error.value) == (
        "parameter_groups[1].match: 'embedding.*' matches no parameter of the model "
        "(names look like 'token_embedding.weight')"
    )


def test_a_rule_that_sets_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"parameter_groups\[0\]: the rule for .*sets neither"):
        built("parameter_groups=[{match: '*norm*'}]")


def test_rules_match_the_model_s_own_names_through_wrappers():
    model, _, _ = built()
    apply_activation_checkpointing(model, "full")
    wrapped = [name for name, _ in model.named_parameters() if "_checkpoint_wrapped_module" in name]
    assert wrapped and all(parameter_name(name).startswith("blocks.") for name in wrapped)
    assert parameter_name("module.blocks.0._orig_mod.mlp.input.weight") == "blocks.0.mlp.input.weight"
    assert "_checkpoint_wrapped_module" not in "".join(parameter_name(name) for name in wrapped)
