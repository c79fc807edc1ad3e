"""Stopping a run cleanly when the scheduler asks: SIGTERM or SIGUSR1 (SLURM's ``--signal=USR1@120``).

The signal reaches the ranks at different moments, maybe in different steps, so a rank that received it only
notes it; after every step the ranks exchange what they noted, and all of them stop after the same step, save
a checkpoint and exit with ``PREEMPTED_EXIT_STATUS``. The exchange runs on the host (a gloo group) and in the
background: step N's notes are read after step N + 1, so it never makes a step wait for the device, and a run
stops at most two steps after the signal.
"""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch
import torch.distributed as dist

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_STATUS = 75
"""sysexits' EX_TEMPFAIL: the run stopped for a reason outside it, its checkpoint saved; run it again."""


REQUEUE_MARKER_ENV = "LLM_GYM_REQUEUE_MARKER"
"""A path a job script sets: a run that stops to be run again (preempted, or hung) creates the file there, since
torchrun reports every failing worker as its own status 1."""


def request_requeue() -> None:
    """Create the file ``$LLM_GYM_REQUEUE_MARKER`` names, if it names one (scripts/slurm_train.sbatch does)."""
    marker = os.environ.get(REQUEUE_MARKER_ENV)
    if marker:
        with open(marker, "a", encoding="utf-8"):
            pass


class PreemptionWatch:
    """Notes ``PREEMPTION_SIGNALS`` while installed (``installed``); ``should_stop`` agrees on the step."""

    def __init__(self, host_group: dist.ProcessGroup | None) -> None:
        """``host_group``: the ranks' group for the exchange, on the host (gloo); None for one process."""
        self._group = host_group
        self.received: signal.Signals | None = None
        self._sent = torch.zeros(1, dtype=torch.int32)
        self._exchange: dist.Work | None = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    @contextmanager
    def installed(self) -> Iterator["PreemptionWatch"]:
        previous = {signum: signal.signal(signum, self._note) for signum in PREEMPTION_SIGNALS}
        try:
            yield self
        finally:
            if self._exchange is not None:
                self._exchange.wait()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def should_stop(self) -> bool:
        """Called after every step, on every rank: True on all ranks after the same step once a rank was
        signalled (the signal noted before the previous exchange started)."""
        noted = self.received is not None
        if self._group is None:
            return noted
        agreed = False
        if self._exchange is not None:
            self._exchange.wait()
            agreed = bool(self._sent[0])
        self._sent = torch.tensor([int(noted)], dtype=torch.int32)
        self._exchange = dist.all_reduce(self._sent, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return agreed
