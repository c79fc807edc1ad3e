"""Optimizers as registry components, and the parameter groups they are built with.

The configs describe torch's own optimizers, and Muon, written here; ``params`` is injected at build time.

Muon: the hidden matrices (the 2-D weights of the repeated blocks) take Muon's update: Nesterov momentum, made
orthogonal by a Newton–Schulz iteration (Keller Jordan's quintic, the coefficients and step count of
``torch.optim.Muon``) and scaled for the matrix's shape. Embeddings, the output head, norm gains and biases
take AdamW's, with the settings under ``adamw``. The builder marks each parameter group ``use_muon``.

The iteration is written here, not taken from ``torch.optim.Muon``: that exists only from torch 2.9 (llm_gym
supports 2.6), and it orthogonalises whatever tensor it holds, where under FSDP2 each rank holds a shard
of a matrix. Here a sharded matrix is gathered whole (``full_tensor``, an all-gather: no reduction, so
gloo's broken ``AVG`` is never involved), orthogonalised on every rank alike, and each rank keeps its own
rows. On one rank, in bfloat16, the update is ``torch.optim.Muon``'s to the bit (tested).
"""

import math
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator
from torch import nn
from torch.distributed.tensor import DTensor, Replicate

from llm_gym.errors import ConfigError

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
Beta = Annotated[float, Field(ge=0, lt=1)]
"""A moment's decay rate: torch refuses any outside [0, 1)."""


class _OptimizerConfig(BaseModel):
    # .inf and .nan are refused for every number: no optimizer can step with them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lr: PositiveFloat = Field(description="peak learning rate")
    weight_decay: NonNegativeFloat = 0.0

    def _step_scalars(self) -> dict[str, float]:
        """The numbers a step multiplies the float32 weights, gradients or moments by, named as in the config."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "lr × weight_decay": self.lr * self.weight_decay}

    @model_validator(mode="after")
    def _step_scalars_fit_float32(self) -> "_OptimizerConfig":
        # torch converts them to the tensors' dtype, and one beyond float32 stops the run with an overflow error.
        for name, value in self._step_scalars().items():
            if value > FLOAT32_MAX:
                raise ValueError(
                    f"{name} = {value:.3g} is beyond the largest float32 ({FLOAT32_MAX:.3g}), the type of the "
                    "weights a step scales by it"
                )
        return self


class _AdamMomentsConfig(_OptimizerConfig):
    betas: tuple[Beta, Beta]
    eps: PositiveFloat = 1e-8

    def _step_scalars(self) -> dict[str, float]:
        # The first step's bias correction divides the learning rate by 1 - betas[0].
        first_step = self.lr / (1 - self.betas[0])
        return {**super()._step_scalars(), "eps": self.eps, "lr / (1 - betas[0]), the first step's size": first_step}


class _AdamLikeConfig(_AdamMomentsConfig):
    foreach: bool | None = None
    fused: bool | None = None


class AdamWConfig(_AdamLikeConfig):
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.1


class AdamConfig(_AdamLikeConfig):
    betas: tuple[Beta, Beta] = (0.9, 0.999)


class SGDConfig(_OptimizerConfig):
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    foreach: bool | None = None

    def _step_scalars(self) -> dict[str, float]:
        return {**super()._step_scalars(), "momentum": self.momentum}


# torch.optim.Muon's defaults, from Keller Jordan's reference implementation.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


class MuonAdamWSettings(_AdamMomentsConfig):
    """The AdamW half of Muon: embeddings, output head, norm gains and biases."""

    lr: PositiveFloat = Field(description="peak learning rate of the parameters AdamW updates")
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = Field(
        0.1, description="for the matrices among them (an untied output head); biases, norms, embeddings: 0"
    )


class MuonConfig(_OptimizerConfig):
    lr: PositiveFloat = Field(description="peak learning rate of the hidden matrices")
    weight_decay: NonNegativeFloat = Field(0.1, description="decoupled, of the hidden matrices")
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: int = Field(NEWTON_SCHULZ_STEPS, ge=1, le=99, description="Newton–Schulz iterations")
    ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS
    eps: PositiveFloat = Field(1e-7, description="floor of the norm the iteration's input is divided by")
    adjust_lr: Literal["original", "match_rms_adamw"] = Field(
        "original",
        description="original: lr × sqrt(max(1, rows / columns)); match_rms_adamw: lr × 0.2 × sqrt(max(rows, "
        "columns)), the update RMS of AdamW, so that AdamW's lr and weight decay carry over",
    )
    newton_schulz_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a GPU, float32 on CPU (where bfloat16 matmuls are slow)"
    )
    adamw: MuonAdamWSettings


def newton_schulz(
    matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """An approximately orthogonal matrix with ``matrix``'s singular vectors (``U S' Vᵀ``, ``S'`` near 1), in
    ``dtype``: the quintic iteration ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ`` on the wide orientation."""
    a, b, c = coefficients
    tall = matrix.size(0) > matrix.size(1)
    update = matrix.to(dtype)
    if tall:
        update = update.T
    update = update / update.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = update @ update.T
        update = torch.addmm(update, torch.addmm(gram, gram, gram, beta=b, alpha=c), update, beta=a)
    return update.T if tall else update


def _orthogonalised(update: torch.Tensor, group: dict) -> torch.Tensor:
    """``newton_schulz`` of the whole matrix; for a DTensor shard, gathered first and sharded back alike."""
    setting = group["newton_schulz_dtype"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(setting)
    if dtype is None:
        dtype = torch.bfloat16 if update.device.type == "cuda" else torch.float32
    settings = (group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
    if not isinstance(update, DTensor):
        return newton_schulz(update, *settings)
    mesh = update.device_mesh
    orthogonal = newton_schulz(update.full_tensor(), *settings)
    # Every rank computed the same whole matrix: replicated, then each keeps its shard (no communication).
    replicated = DTensor.from_local(orthogonal, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, update.placements)


def _adjusted_lr(lr: float, adjust_lr: str, shape: torch.Size) -> float:
    rows, columns = shape[:2]
    if adjust_lr == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, columns))
    return lr * math.sqrt(max(1, rows / columns))


class Muon(torch.optim.Optimizer):
    """Muon for the param groups marked ``use_muon``, AdamW (decoupled weight decay) for the others.

    Its state: ``momentum_buffer`` per hidden matrix; ``step``, ``exp_avg``, ``exp_avg_sq`` per AdamW
    parameter, as torch's AdamW names them.
    """

    treats_hidden_matrices_apart = True
    """``llm_gym run`` marks each param group it builds with ``use_muon``."""

    def __init__(self, config: MuonConfig, params: Iterable[dict[str, Any]]):
        muon_settings = config.model_dump(exclude={"adamw"})
        adamw_settings = config.adamw.model_dump()
        groups = []
        for group in params:
            if not isinstance(group, dict) or "use_muon" not in group:
                raise ValueError("Muon takes parameter groups that say whether they are hidden matrices (use_muon)")
            if group["use_muon"] and any(parameter.ndim != 2 for parameter in group["params"]):
                raise ValueError("Muon orthogonalises matrices only: a use_muon group holds a non-2-D parameter")
            groups.append({**(muon_settings if group["use_muon"] else adamw_settings), **group})
        super().__init__(groups, {"lr": config.lr, "weight_decay": config.weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = self._muon_update if group["use_muon"] else self._adamw_update
            for parameter in group["params"]:
                if parameter.grad is not None:
                    update(parameter, parameter.grad, group)
        return loss

    def _muon_update(self, parameter: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        momentum, buffer = group["momentum"], state["momentum_buffer"]
        buffer.lerp_(grad, 1 - momentum)
        update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        orthogonal = _orthogonalised(update, group)
        parameter.mul_(1 - group["lr"] * group["weight_decay"])
        parameter.add_(orthogonal, alpha=-_adjusted_lr(group["lr"], group["adjust_lr"], parameter.shape))

    def _adamw_update(self, parameter: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """torch's single-tensor AdamW, operation for operation."""
        state = self.state[parameter]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        lr, (beta1, beta2) = group["lr"], group["betas"]
        state["step"] += 1
        step = state["step"].item()
        parameter.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denominator = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        parameter.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))


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


class GroupRule(Protocol):
    """A rule of the config's ``parameter_groups`` (``llm_gym.config.app.ParameterGroupRule``): settings for
    the parameters whose names match the glob ``match``; None leaves a setting as it is."""

    match: str
    lr_multiplier: float | None
    weight_decay: float | None


def parameter_groups(
    model: nn.Module, rules: Sequence[GroupRule] = (), mark_hidden_matrices: bool = False
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
                settings.update(
                    (setting, value)
                    for setting, value in (("lr_multiplier", rule.lr_multiplier), ("weight_decay", rule.weight_decay))
                    if value is not None
                )
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
