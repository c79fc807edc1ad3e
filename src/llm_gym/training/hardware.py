"""Accelerator figures for the train metrics (MFU against a known peak, peak memory; nothing on CPU), and the
memory a device has left."""

import os
from pathlib import Path

import torch

from llm_gym.models.flops import peak_flops_per_second


class HardwareMetrics:
    """``compute_dtype`` is the dtype the matmuls run in (the parallelism strategy's ``compute_dtype``): the
    peak to measure MFU against depends on it, and a float32 run has none in the table."""

    def __init__(self, device: torch.device, flops_per_token: int, world_size: int, compute_dtype: torch.dtype):
        self.device = device
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak_flops = (
            peak_flops_per_second(torch.cuda.get_device_name(device), compute_dtype) if device.type == "cuda" else None
        )

    def __call__(self, tokens_per_s: float) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        metrics = {"peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        # Never against a guessed peak: an unknown GPU, a MIG slice or a float32 run gets no MFU at all.
        if self.peak_flops is not None:
            metrics["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        return metrics


def available_memory(device: torch.device) -> int | None:
    """Bytes a process could still allocate on ``device``: a GPU's free memory, or the RAM the kernel counts as
    available (free plus reclaimable caches); None where it cannot be told."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # without /proc (macOS): all of the RAM, which nothing larger can fit in either
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
