"""Optimizers as registry components, and the parameter groups they are built with.

The configs describe torch's own optimizers; ``params`` is injected at build time.
"""

from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat
from torch import nn

from llm_gym.config.app import ParameterGroupRule
from llm_gym.errors import ConfigError
from llm_gym.training.muon import Muon, MuonConfig


class _OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: PositiveFloat = Field(description="peak learning rate")
    weight_decay: NonNegativeFloat = 0.0


class AdamWConfig(_OptimizerConfig):
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.1
    foreach: bool | None = None
    fused: bool | None = None


class AdamConfig(_OptimizerConfig):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    foreach: bool | None = None
    fused: bool | None = None


class SGDConfig(_OptimizerConfig):
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    foreach: bool | None = None


# What wrappers insert into parameter names (activation checkpointing; torch.compile other than in place):
# rules match the names checkpoints use, without them.
_WRAPPER_NAME_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def parameter_name(name: str) -> str:
    """``name`` as the model itself calls the parameter, without what its wrappers add (DDP's ``module.``)."""
    name = name.removeprefix("module.")
    for part in _WRAPPER_NAME_PARTS:
        name = name.replace(part, "")
    return name


def is_hidden_matrix(name: str, parameter: nn.Parameter) -> bool:
    """A matrix of the repeated transformer blocks: not an embedding, the output head, a norm or a bias."""
    return name.startswith("blocks.") and parameter.ndim == 2


def parameter_groups(
    model: nn.Module, rules: Sequence[ParameterGroupRule] = (), mark_hidden_matrices: bool = False
) -> list[dict]:
    """The optimizer's parameter groups. By default matrices decay and biases, norm weights and embeddings
    (token and position, tied output included) do not (GPT-2/Llama practice): a group with
    ``weight_decay: 0.0``, while the first group takes the optimizer's configured value.

    ``rules`` then set ``lr_multiplier`` and ``weight_decay`` by parameter name, each matching rule
    overriding the earlier ones' settings; a rule that matches no parameter is a ``ConfigError``. With
    ``mark_hidden_matrices`` every group says whether it holds hidden matrices (``use_muon``).
    """
    embedding_params = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    groups: dict[tuple, dict] = {(): {"params": []}}
    matched = [False] * len(rules)
    for raw_name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        name = parameter_name(raw_name)
        settings: dict = {}
        if parameter.ndim < 2 or id(parameter) in embedding_params:
            settings["weight_decay"] = 0.0
        for index, rule in enumerate(rules):
            if fnmatchcase(name, rule.match):
                matched[index] = True
                settings.update(rule.model_dump(include={"lr_multiplier", "weight_decay"}, exclude_none=True))
        if mark_hidden_matrices:
            settings["use_muon"] = is_hidden_matrix(name, parameter)
        groups.setdefault(tuple(sorted(settings.items())), {**settings, "params": []})["params"].append(parameter)
    unmatched = [
        f"parameter_groups[{index}].match: '{rule.match}'" for index, rule in enumerate(rules) if not matched[index]
    ]
    if unmatched:
        example = parameter_name(next(name for name, _ in model.named_parameters()))
        raise ConfigError(f"{', '.join(unmatched)} matches no parameter of the model (names look like '{example}')")
    return [group for group in groups.values() if group["params"]]


def apply_lr_multipliers(optimizer: torch.optim.Optimizer) -> None:
    """Scale each group's lr by the ``lr_multiplier`` its rules gave it, before a schedule records the
    groups' initial lrs, so every schedule scales each group from its own peak."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.pop("lr_multiplier", 1.0)


OPTIMIZERS = {
    "AdamW": (torch.optim.AdamW, AdamWConfig),
    "Adam": (torch.optim.Adam, AdamConfig),
    "SGD": (torch.optim.SGD, SGDConfig),
    "Muon": (Muon, MuonConfig),
}
