"""Which config changes break an exact resume, so a resume can refuse them unless the user insists, and
which change hyperparameters, so a resume can say that the config's values apply."""

import json
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from llm_gym.registry import ResolverRegistry

_ABSENT = "<absent>"

# Sections and keys whose change makes a resumed run differ from an uninterrupted one.
_EQUIVALENCE_KEYS = (
    "model",
    "experiment.seed",
    "training.sequence_length",
    "data.train_dataset",
    "data.sampler",
    "data.collator",
    # Another optimizer cannot continue the saved one's moments, even where their state has the same names.
    "optimizer.type_hint",
)

# Settings a resumed run takes from its config, not from the checkpoint: changing them is how a run is
# extended or retuned, so they are reported rather than refused.
_HYPERPARAMETER_KEYS = ("optimizer.config", "lr_scheduler", "training.max_steps")


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _differences(path: str, saved: Any, current: Any) -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            line
            for key in sorted(saved.keys() | current.keys(), key=str)
            for line in _differences(f"{path}.{key}", saved.get(key, _ABSENT), current.get(key, _ABSENT))
        ]
    return [] if saved == current else [f"{path}: checkpoint {saved!r}, now {current!r}"]


def _differences_at(
    keys: tuple[str, ...], saved_resolved: dict[str, Any], current_resolved: dict[str, Any]
) -> list[str]:
    # The saved config went through JSON; the current one must too, or a tuple and a list would differ.
    current_resolved = json.loads(json.dumps(current_resolved, default=str))
    return [
        line for key in keys for line in _differences(key, _lookup(saved_resolved, key), _lookup(current_resolved, key))
    ]


_MODEL_PARALLEL_DEGREES = ("tensor_parallel_degree", "context_parallel_degree", "pipeline_parallel_degree")


def _global_batch(config: dict[str, Any], world_size: int) -> tuple[int | None, str]:
    micro = _lookup(config, "training.micro_batch_size")
    accumulation = _lookup(config, "training.gradient_accumulation_steps")
    accumulation = 1 if accumulation == _ABSENT else accumulation
    # The ranks of one tensor-, context- or pipeline-parallel group read the same samples.
    degrees = {key: _lookup(config, f"parallelism.config.{key}") for key in _MODEL_PARALLEL_DEGREES}
    degrees = {key: degree for key, degree in degrees.items() if isinstance(degree, int) and degree > 1}
    ranks = world_size // math.prod(degrees.values())
    divided = " × ".join(f"{key} {degree}" for key, degree in degrees.items())
    terms = f"{micro} × {accumulation} × {ranks} ranks" + (f" (world size {world_size} ÷ {divided})" if degrees else "")
    if not (isinstance(micro, int) and isinstance(accumulation, int)):
        return None, terms
    return micro * accumulation * ranks, terms


def with_defaults(
    saved_resolved: dict[str, Any],
    current_resolved: dict[str, Any],
    schema: type[BaseModel],
    registry: ResolverRegistry,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both configs as ``schema`` reads them, every default written out, so that a key set to its default and
    the same key left out compare equal (a config that adds ``document_masking: false`` continues a run whose
    config predates the key). A saved config the schema no longer accepts is compared as written, and so is
    the current one then, lest every default count as a difference."""
    try:
        return tuple(
            registry.validate(schema, config).model_dump(mode="json") for config in (saved_resolved, current_resolved)
        )
    except ValidationError:
        return saved_resolved, current_resolved


def config_differences(
    saved_resolved: dict[str, Any], current_resolved: dict[str, Any], saved_world_size: int, current_world_size: int
) -> list[str]:
    """Readable differences between a checkpoint's resolved config and the current one that break exact
    equivalence. The global batch is compared as micro batch × accumulation × ranks, so resuming 2 → 1
    ranks with doubled accumulation is no difference."""
    differences = _differences_at(_EQUIVALENCE_KEYS, saved_resolved, current_resolved)
    saved_batch, saved_terms = _global_batch(saved_resolved, saved_world_size)
    current_batch, current_terms = _global_batch(current_resolved, current_world_size)
    if saved_batch != current_batch:
        differences.append(
            f"global batch (micro_batch_size × gradient_accumulation_steps × ranks): "
            f"checkpoint {saved_batch} ({saved_terms}), now {current_batch} ({current_terms})"
        )
    return differences


def hyperparameter_changes(saved_resolved: dict[str, Any], current_resolved: dict[str, Any]) -> list[str]:
    """Readable differences in optimizer, schedule and run length between a checkpoint's resolved config
    and the current one: a resumed run trains with the current values."""
    return _differences_at(_HYPERPARAMETER_KEYS, saved_resolved, current_resolved)
