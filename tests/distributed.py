"""Run a test function on N real processes joined in a gloo process group, as torchrun would."""

import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp

from llm_gym.parallel.distributed import torch_release
from llm_gym.parallel.strategies import GLOO_SHARDING_MIN_TORCH


def skip_unless_gloo_sharding_works() -> None:
    """Skip the calling test, or the tests of the calling fixture, on torch releases where llm_gym refuses
    FSDP2 and HSDP on several CPU ranks."""
    if torch_release() < GLOO_SHARDING_MIN_TORCH:
        minimum = ".".join(map(str, GLOO_SHARDING_MIN_TORCH))
        pytest.skip(f"FSDP2 and HSDP over gloo need torch >= {minimum}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results: Any) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    try:
        results[rank] = ("ok", fn(*args))
    except BaseException:  # report any failure of a rank to the test process
        results[rank] = ("error", traceback.format_exc())
        raise
    finally:
        from llm_gym.parallel.distributed import destroy_distributed

        destroy_distributed()


def run_on_ranks(fn: Callable, world_size: int = 2, *args: Any) -> list[Any]:
    """Call ``fn(*args)`` on ``world_size`` spawned ranks; return each rank's result (rank order)."""
    with mp.Manager() as manager:
        results = manager.dict()
        try:
            mp.spawn(_worker, args=(world_size, free_port(), fn, args, results), nprocs=world_size, join=True)
        except mp.ProcessRaisedException as error:
            failures = [value for status, value in results.values() if status == "error"]
            raise AssertionError("\n".join(failures) or str(error)) from None
        return [results[rank][1] for rank in range(world_size)]
