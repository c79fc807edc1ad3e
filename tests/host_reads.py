"""A counting shim for the reads that make the host wait for the device, for CPU machines, where no read waits.

On a GPU, ``tensor.item()``, ``float(tensor)``, ``bool(tensor)``, ``tensor.tolist()`` and ``tensor.cpu()`` of a
device tensor block until the device has computed it. On CPU nothing blocks, so this counts the calls instead:
those made by llm_gym's own step code (training, parallelism, models, optimizers, checkpoints, logging), not
by the data pipeline, whose tensors are host tensors on every machine, nor torch's own (AdamW reads its step
counter, a host tensor, with ``item``).
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

STEP_CODE = ("llm_gym.training", "llm_gym.parallel", "llm_gym.models", "llm_gym.optim", "llm_gym.checkpointing",
             "llm_gym.logging_broker")  # fmt: skip
READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostReads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        """``module:method`` of each read, in order."""


@contextmanager
def counting_host_reads() -> Iterator[HostReads]:
    reads = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name: str):
        original = originals[name]

        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith(STEP_CODE):
                reads.calls.append(f"{caller}:{name}")
            return original(tensor, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
