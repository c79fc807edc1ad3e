"""The accelerator metrics (MFU only against the peak of the GPU and dtype the run computes in, never a guess) and
the memory a device has left."""

import os

import pytest
import torch

from llm_gym.training.hardware import HardwareMetrics, available_memory

FLOPS_PER_TOKEN = 1_000_000
CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device that reports a chosen name and 3 GiB of peak memory, without a GPU."""

    def install(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)

    return install


def test_mfu_against_the_bf16_peak_of_a_known_gpu(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3")
    metrics = HardwareMetrics(CUDA, FLOPS_PER_TOKEN, world_size=2, compute_dtype=torch.bfloat16)(tokens_per_s=1e8)
    assert metrics["peak_memory_gib"] == 3.0
    assert metrics["mfu"] == pytest.approx(1e8 * FLOPS_PER_TOKEN / (989e12 * 2))


@pytest.mark.parametrize(
    ("device_name", "compute_dtype"),
    [
        ("NVIDIA A10G", torch.bfloat16),  # not in the table
        ("NVIDIA H100 80GB HBM3", torch.float32),  # float32 parameters: the bf16 peak would flatter nothing
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", torch.bfloat16),  # a slice of the GPU its name matches
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", torch.bfloat16),
    ],
)
def test_no_mfu_without_a_known_peak_but_peak_memory_still(fake_gpu, device_name, compute_dtype):
    fake_gpu(device_name)
    metrics = HardwareMetrics(CUDA, FLOPS_PER_TOKEN, world_size=1, compute_dtype=compute_dtype)(tokens_per_s=1e8)
    assert metrics == {"peak_memory_gib": 3.0}


def test_nothing_on_cpu(monkeypatch):
    def no_cuda_call(*args, **kwargs):
        raise AssertionError("a CPU run must not query CUDA")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda_call)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", no_cuda_call)
    metrics = HardwareMetrics(torch.device("cpu"), FLOPS_PER_TOKEN, world_size=1, compute_dtype=torch.float32)
    assert metrics(tokens_per_s=1e6) == {}


def test_available_memory_is_a_gpus_free_memory_or_the_available_ram(monkeypatch):
    ram = available_memory(torch.device("cpu"))
    assert ram is not None and 0 < ram <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * 2**30, 80 * 2**30))
    assert available_memory(CUDA) == 5 * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_memory(CUDA) is None  # validate planning for GPUs on a machine without one
