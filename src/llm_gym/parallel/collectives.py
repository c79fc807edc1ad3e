"""Rank queries and collectives that also work without a process group (one process, no torchrun)."""

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


def has_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if has_process_group() else 0


def world_size() -> int:
    return dist.get_world_size() if has_process_group() else 1


def barrier() -> None:
    if has_process_group():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    if not has_process_group():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool, group: dist.ProcessGroup | None = None) -> bool:
    """True on every rank (of ``group``, by default all) when ``flag`` is true on at least one."""
    if not has_process_group():
        return flag
    backend_device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=backend_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


_SINGLE_PROCESS_WARNING = "torch.distributed is (disabled, )?unavailable or uninitialized"  # "disabled, ": torch 2.7


def gather_floats(value: float, group: dist.ProcessGroup) -> list[float]:
    """Every rank's ``value``, in rank order, over ``group``, a gloo group: on the host, no device wait."""
    gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, torch.tensor([value], dtype=torch.float64), group=group)
    return [float(tensor[0]) for tensor in gathered]


@contextlib.contextmanager
def single_process_quietly() -> Iterator[None]:
    """Silence DCP's warning that it runs in one process: without a process group, that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
        yield


def silence_single_process_warning() -> None:
    """``single_process_quietly`` for good, in every thread: DCP's background saves warn from their own thread,
    after the caller's ``catch_warnings`` has ended."""
    warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
