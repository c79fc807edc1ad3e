"""Muon: orthogonalised momentum for the hidden matrices, AdamW for the other parameters, in one optimizer.

The hidden matrices (the 2-D weights of the repeated blocks) take Muon's update: Nesterov momentum, made
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
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat
from torch.distributed.tensor import DTensor, Replicate

# torch.optim.Muon's defaults, from Keller Jordan's reference implementation.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


class MuonAdamWSettings(BaseModel):
    """The AdamW half: embeddings, output head, norm gains and biases."""

    model_config = ConfigDict(extra="forbid")

    lr: PositiveFloat = Field(description="peak learning rate of the parameters AdamW updates")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = Field(
        0.1, description="for the matrices among them (an untied output head); biases, norms, embeddings: 0"
    )


class MuonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: PositiveFloat = Field(description="peak learning rate of the hidden matrices")
    weight_decay: NonNegativeFloat = Field(0.1, description="decoupled, of the hidden matrices")
    momentum: float = Field(0.95, ge=0, lt=1)
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

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        adamw: MuonAdamWSettings | dict[str, Any],
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NEWTON_SCHULZ_STEPS,
        ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS,
        eps: float = 1e-7,
        adjust_lr: str = "original",
        newton_schulz_dtype: str = "auto",
    ):
        adamw = MuonAdamWSettings.model_validate(adamw)
        muon_settings = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": tuple(ns_coefficients),
            "eps": eps,
            "adjust_lr": adjust_lr,
            "newton_schulz_dtype": newton_schulz_dtype,
        }
        groups = []
        for group in params:
            if not isinstance(group, dict) or "use_muon" not in group:
                raise ValueError("Muon takes parameter groups that say whether they are hidden matrices (use_muon)")
            if group["use_muon"] and any(parameter.ndim != 2 for parameter in group["params"]):
                raise ValueError("Muon orthogonalises matrices only: a use_muon group holds a non-2-D parameter")
            settings = muon_settings if group["use_muon"] else {**adamw.model_dump(), "betas": tuple(adamw.betas)}
            groups.append({**settings, **group})
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})

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
