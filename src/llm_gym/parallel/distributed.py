"""The process group every run lives in: torchrun's, or a one-rank group for a plain ``python`` launch.

Always having a process group keeps one code path: the same collectives, FSDP2 and DCP calls run on a
laptop and on a cluster. gloo on CPU, NCCL on GPU.
"""

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from llm_gym.errors import UserError


@dataclass(frozen=True)
class DistributedEnvironment:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def select_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("training.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
            "launch at most one process per GPU (--nproc_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto", timeout_s: float = 1800) -> DistributedEnvironment:
    """Join torchrun's process group, or create a one-rank group when launched without torchrun. A collective
    that waits ``timeout_s`` for the other ranks fails the group."""
    launched_by_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched_by_torchrun and int(os.environ.get("WORLD_SIZE", 1)) != 1:
        raise UserError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but RANK is not: launch several ranks with torchrun, "
            "or unset WORLD_SIZE for one process"
        )
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    device = select_device(requested_device, local_rank)
    env = DistributedEnvironment(rank, local_rank, world_size, local_world_size, device)
    if not dist.is_initialized():
        # Without torchrun there is one rank: an in-process store needs no port that another job could hold.
        rendezvous = {"init_method": "env://"} if launched_by_torchrun else {"store": dist.HashStore()}
        dist.init_process_group(
            backend=env.backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
            **rendezvous,
        )
    return env


def host_group(env: DistributedEnvironment) -> dist.ProcessGroup | None:
    """A gloo group of every rank, for small exchanges the host makes without waiting for the device (whatever
    the run's own backend); None for one process. Every rank must call it, at the same point."""
    return None if env.world_size == 1 else dist.new_group(backend="gloo")


# Before torch 2.8 (pytorch PR 154976) a gloo process group's destructor holds the GIL while it waits for its
# worker threads, and a worker that is just releasing its last collective's tensors needs the GIL to do so: a
# deadlock, seen in the test suite on torch 2.6 as a process that never ends.
GLOO_DESTRUCTOR_RELEASES_GIL_TORCH = (2, 8)
GLOO_WORKERS_SETTLE_S = 0.05


def torch_release() -> tuple[int, ...]:
    """(major, minor) of the installed torch."""
    return tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])


def destroy_distributed() -> None:
    if dist.is_initialized():
        if dist.get_backend() == "gloo" and torch_release() < GLOO_DESTRUCTOR_RELEASES_GIL_TORCH:
            # Sleeping releases the GIL: the workers finish with their tensors before the destructor runs.
            time.sleep(GLOO_WORKERS_SETTLE_S)
        dist.destroy_process_group()
