"""``llm_gym validate --suggest_layout``: the layouts of a world size that fit its devices, fewest bytes sent first.

Each layout keeps the global batch of the config as given (``training.global_batch_size``, or micro batch ×
accumulation × data-parallel degree at this world size) with the same micro batch: the accumulation is what
changes, and a layout whose data-parallel degree does not divide the global batch is not listed. Every layout
listed has been loaded and built as ``run`` would (config, strategy and mesh degrees, the model's
tensor-parallel plan), so what this code refuses is not listed either; the figures are
``llm_gym.parallel.layouts``'.
"""

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import UserError
from llm_gym.logging_broker.text_table import text_table
from llm_gym.models.contract import LanguageModel
from llm_gym.parallel.distributed import DistributedEnvironment
from llm_gym.parallel.layouts import (
    INTER_NODE_WEIGHT,
    SUGGESTED_LAYOUTS_SHOWN,
    USABLE_DEVICE_FRACTION,
    Plan,
    accumulation_for,
    by_communication,
    candidate_layouts,
    divisors,
    fits,
    plan_layout,
)
from llm_gym.registry import ResolverRegistry
from llm_gym.training.builder import build_model_on_meta, build_optimization
from llm_gym.training.summary import (
    GIB,
    fills_pipeline_first,
    model_figures,
    optimizer_state_tensors,
    planned_device,
    step_figures,
)


def suggest_layouts(
    config_file_path: Path,
    overrides: Sequence[str],
    config: TrainingAppConfig,
    world_size: int,
    ranks_per_node: int,
    device_memory_gib: float,
    registry: ResolverRegistry,
) -> list[str]:
    """The lines validate prints: a table of the layouts that fit, and why the first wins. Raises ``UserError``
    (exit 2) with what would make one fit when none does."""
    training = config.training
    node = min(ranks_per_node, world_size)
    env = DistributedEnvironment(0, 0, world_size, node, planned_device(training.device))
    configured = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    global_samples = training.global_batch_size or training.samples_per_step(configured.data_parallel_size)
    model = build_model_on_meta(config, registry)
    optimizer, _ = build_optimization(config, model, registry)
    state_tensors, _ = optimizer_state_tensors(optimizer)
    figures = model_figures(model, _any_tensor_parallel_plan(configured, model, node))
    step = step_figures(config, configured, state_tensors)
    stages_per_rank = getattr(config.parallelism.config, "stages_per_rank", 1)
    device_bytes = device_memory_gib * GIB
    refusals: dict[tuple, str | None] = {}
    plans: list[Plan] = []
    skipped: Counter[str] = Counter()
    smallest: Plan | None = None
    for layout in candidate_layouts(world_size, node, stages_per_rank):
        accumulation = accumulation_for(global_samples, training.micro_batch_size, layout.data_parallel)
        if accumulation is None:
            skipped["would change the global batch (its data-parallel degree does not divide it)"] += 1
            continue
        plan = plan_layout(
            figures,
            dataclasses.replace(step, gradient_accumulation_steps=accumulation),
            layout,
            node,
            schedule_fills_first=fills_pipeline_first(configured),
        )
        if plan.problems:
            skipped[plan.problems[0]] += 1
            continue
        key = (layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel, layout.strategy)
        if key not in refusals:
            refusals[key] = _refusal(config_file_path, overrides, plan, env, model, registry)
        if refusals[key] is not None:
            skipped[refusals[key]] += 1
            continue
        if smallest is None or plan.memory.total < smallest.memory.total:
            smallest = plan
        if not fits(plan, device_bytes):
            skipped[f"need more than {USABLE_DEVICE_FRACTION:.0%} of {device_memory_gib:g} GiB"] += 1
            continue
        plans.append(plan)
    usable = USABLE_DEVICE_FRACTION * device_memory_gib
    if not plans:
        raise UserError(_nothing_fits(world_size, device_memory_gib, usable, smallest, skipped))
    plans = by_communication(plans)
    shown = plans[:SUGGESTED_LAYOUTS_SHOWN]
    header = (
        f"layouts of {world_size} ranks ({node} per node, {device_memory_gib:g} GiB each, planned to {usable:g} GiB) "
        f"that keep the global batch of {global_samples} samples (micro batch {training.micro_batch_size}, "
        f"accumulation adjusted): {len(plans)} fit"
        + (f", the {len(shown)} sending the fewest bytes:" if len(plans) > len(shown) else ":")
    )
    rows = [
        [
            str(plan.layout),
            plan.layout.strategy,
            str(plan.gradient_accumulation_steps),
            f"{plan.memory.total / GIB:.2f}",
            f"{plan.traffic.total / GIB:.3f}",
            f"{plan.inter_node_bytes / GIB:.3f}",
            f"{plan.weighted_bytes / GIB:.3f}",
        ]
        for plan in shown
    ]
    table = text_table(
        ["layout (outermost first)", "strategy", "accumulation", "GiB/rank", "sent GiB", "inter-node", "weighted"],
        rows,
    )
    best = plans[0]
    notes = [
        f"sent: GiB each rank sends per step; weighted: inside a node + {INTER_NODE_WEIGHT} × between nodes "
        "(docs/parallelism.md, Choosing a layout)",
        _reason(best, plans[1] if len(plans) > 1 else None, node, device_memory_gib),
        "use it: " + " ".join(_overrides(best)),
    ]
    if skipped:
        notes += ["not listed:", *(f"  {count} {why}" for why, count in skipped.most_common())]
    return [header, *(f"  {line}" for line in table), *notes]


def _overrides(plan: Plan) -> list[str]:
    return [*plan.layout.overrides(), f"training.gradient_accumulation_steps={plan.gradient_accumulation_steps}"]


def _any_tensor_parallel_plan(configured, model: LanguageModel, node: int) -> dict:
    """The model's plan for the smallest degree above 1 it accepts (what it leaves whole is the same at any
    degree); empty where it accepts none, and every layout with tensor parallelism is refused later."""
    for degree in divisors(node)[1:]:
        try:
            return model.tensor_parallel_plan(degree) if hasattr(model, "tensor_parallel_plan") else {}
        except UserError:
            continue
    return {}


def _refusal(
    config_file_path: Path,
    overrides: Sequence[str],
    plan: Plan,
    env: DistributedEnvironment,
    model: LanguageModel,
    registry: ResolverRegistry,
) -> str | None:
    """Why ``run`` would refuse this layout's degrees for this config (as loading, the strategy and the model's
    plan say), or None."""
    try:
        config = load_config(config_file_path, TrainingAppConfig, [*overrides, *_overrides(plan)], registry=registry)[0]
        parallelism = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
        parallelism.tensor_parallel_plan(model)
    except UserError as error:
        return "refused: " + " ".join(str(error).split())  # one line, whatever the error's own layout
    return None


def _reason(best: Plan, runner_up: Plan | None, ranks_per_node: int, device_memory_gib: float) -> str:
    kinds = ", ".join(f"{kind} {sent / GIB:.3f}" for kind, sent in best.traffic.bytes_by_kind.items()) or "nothing"
    memory = f"it needs {best.memory.total / GIB:.2f} of {device_memory_gib:g} GiB per rank"
    if runner_up is None:
        return f"{best.layout} is the only layout that fits; it sends {kinds} GiB per rank per step; {memory}"
    ratio = runner_up.weighted_bytes / best.weighted_bytes if best.weighted_bytes else float("inf")
    kinds_of_both = set(best.traffic.bytes_by_kind) | set(runner_up.traffic.bytes_by_kind)
    weighted = [plan.traffic.weighted_by_kind(plan.layout, ranks_per_node) for plan in (best, runner_up)]
    kind = max(kinds_of_both, key=lambda kind: weighted[1].get(kind, 0) - weighted[0].get(kind, 0))
    return (
        f"{best.layout} wins: it sends the fewest weighted bytes, {best.weighted_bytes / GIB:.3f} GiB per rank per "
        f"step ({kinds} GiB), {ratio:.2f}× fewer than the next, {runner_up.layout}, whose {kind} weighs "
        f"{weighted[1].get(kind, 0) / GIB:.3f} GiB against {weighted[0].get(kind, 0) / GIB:.3f}; {memory}"
    )


def _nothing_fits(
    world_size: int, device_memory_gib: float, usable: float, smallest: Plan | None, skipped: Counter
) -> str:
    if smallest is None:
        reasons = "; ".join(f"{count} {why}" for why, count in skipped.most_common())
        return f"--suggest_layout: no layout of {world_size} ranks can run this config: {reasons}"
    need = smallest.memory.total / GIB
    return (
        f"--suggest_layout: no layout of {world_size} ranks fits {device_memory_gib:g} GiB per device (planned to "
        f"{usable:g} GiB); the smallest, {smallest.layout}, needs {need:.2f} GiB per rank (state "
        f"{smallest.memory.state / GIB:.2f}, gathered {smallest.memory.unsharded / GIB:.2f}, activations "
        f"{smallest.memory.activations / GIB:.2f}, logits {smallest.memory.logits / GIB:.2f}); to fit, set "
        "training.activation_checkpointing=full, or a smaller training.micro_batch_size with a larger "
        "gradient_accumulation_steps, or launch more ranks, or use devices of at least "
        f"{need / USABLE_DEVICE_FRACTION:.0f} GiB"
    )
