"""Give a model built on the meta device its memory and its initial values, and refuse any value left unfilled.

``to_empty`` allocates without writing, so a parameter or buffer that ``init_weights()`` does not fill would
train on whatever the memory held (and end much later as a "non-finite loss"). Before ``init_weights()``
every tensor is filled with a sentinel that initialisation never writes: NaN for floating point, a byte
other than 0 and 1 for booleans. Integers have no such value; where one still holds its sentinel afterwards,
those elements get a second sentinel and ``init_weights()`` runs again from the same seed (it must give the
same values), so only elements it never writes keep it. Each rank checks its own shard, and every rank
raises the same error.
"""

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from llm_gym.errors import ConfigError
from llm_gym.parallel import collectives

_LISTED = 5
_BOOL_SENTINEL = 0xFF  # the byte of a bool is 0 or 1 once anything writes it


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _integer_sentinels(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return (info.min, info.min + 1) if info.min < 0 else (info.max, info.max - 1)


def _fill_sentinel(tensor: torch.Tensor) -> None:
    if _is_integer(tensor):
        tensor.fill_(_integer_sentinels(tensor.dtype)[0])
    elif tensor.dtype == torch.bool:
        tensor.view(torch.uint8).fill_(_BOOL_SENTINEL)
    else:
        tensor.fill_(float("nan"))


def _unfilled(tensor: torch.Tensor) -> torch.Tensor:
    """Where ``tensor`` still holds its sentinel (an integer perhaps because it was written with that value)."""
    if _is_integer(tensor):
        return tensor == _integer_sentinels(tensor.dtype)[0]
    if tensor.dtype == torch.bool:
        return tensor.view(torch.uint8) == _BOOL_SENTINEL
    return tensor.isnan()


def _initialise(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    model.init_weights()


@torch.no_grad()
def materialise(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a meta-device model on ``device`` and draw its weights from ``seed`` (``init_weights()``).

    Raises ``ConfigError`` naming every parameter and buffer that ``init_weights()`` left unfilled, in part
    or whole, on any rank.
    """
    model.to_empty(device=device)
    # Each tensor once (tied parameters are one parameter), this rank's shard of a sharded one.
    tensors = {name: _local(tensor) for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    for tensor in tensors.values():
        _fill_sentinel(tensor)
    _initialise(model, seed)
    unfilled = {}  # name → where; kept only for the few tensors that have such elements
    for name, tensor in tensors.items():
        if (where := _unfilled(tensor)).any():
            unfilled[name] = where
    suspects = {name: where for name, where in unfilled.items() if _is_integer(tensors[name])}
    if collectives.any_rank(bool(suspects)):
        for name, where in suspects.items():
            tensors[name][where] = _integer_sentinels(tensors[name].dtype)[1]
        _initialise(model, seed)
        for name, where in suspects.items():
            unfilled[name] = where & (tensors[name] == _integer_sentinels(tensors[name].dtype)[1])
    names = [name for name, where in unfilled.items() if where.any()]
    if collectives.any_rank(bool(names)):
        everywhere = {name for rank_names in collectives.all_gather_objects(names) for name in rank_names}
        raise ConfigError(_unfilled_message(model, [name for name in tensors if name in everywhere]))


def _class_name(module: nn.Module) -> str:
    """The module's own class, not the subclass ``fully_shard`` makes of it (``FSDPDecoderLM``)."""
    cls = type(module)
    if isinstance(module, FSDPModule):
        cls = next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls.__name__


def _unfilled_message(model: nn.Module, names: list[str]) -> str:
    parameters = dict(model.named_parameters())
    kinds = " and ".join(sorted({"parameters" if name in parameters else "buffers" for name in names}, reverse=True))
    owners = [model.get_submodule(name.rpartition(".")[0]) for name in names]
    classes = sorted({_class_name(owner) for owner in owners})
    shown = [name.replace(_CHECKPOINT_PREFIX, "") for name in names[:_LISTED]]
    listed = ", ".join(shown) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
    components = sorted({_class_name(owner) for owner in owners if owner is not model})
    advice = (
        f"; give {', '.join(components)} a reset_parameters() that fills its own (DecoderLM's init_weights() calls "
        "it on every module inside that holds parameters or buffers, other than nn.Linear)"
        if components
        else ""
    )
    return (
        f"model: {_class_name(model)}.init_weights() left {listed} ({kinds} of {', '.join(classes)}) without "
        "values. llm_gym builds the model on the meta device and allocates it empty, so what a constructor fills "
        f"is gone: init_weights() must fill every parameter and buffer in place, non-persistent buffers too{advice} "
        "(docs/configuration.md, Your own components)"
    )
