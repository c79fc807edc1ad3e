"""Where a run's time goes: the host's time per phase of each step, and torch profiler traces of chosen steps.

``PhaseClock`` times what the loop does, on the host: waiting for the data, queueing the step (forward,
backward, clipping), the optimizer, waiting for the device when the loop reads the steps' results, evaluating
and saving. On a CPU these are the phases' own times. On an accelerator the host runs ahead of the device, so
the queueing phases are short and ``device_wait`` holds what the device took beyond them: a run whose time is
mostly ``device_wait`` keeps its accelerator busy, one whose time is mostly ``data`` starves it.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PHASES = ("data", "step", "optimizer", "device_wait", "evaluation", "checkpoint")


class PhaseClock:
    """Seconds per phase over a log window; ``per_step`` averages them over the window's steps."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def per_step(self) -> dict[str, float]:
        """``phase_<name>_s``: seconds per step of each phase in the window."""
        return {f"phase_{name}_s": seconds / max(self.steps, 1) for name, seconds in self._seconds.items()}

    def step_seconds(self) -> float:
        """The training time of a step in the window (evaluation and checkpoints left out)."""
        training = sum(self._seconds[name] for name in ("data", "step", "optimizer", "device_wait"))
        return training / max(self.steps, 1)

    def start_window(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0


class StepTrace:
    """A torch profiler trace of steps ``first`` to ``last`` on this rank, written as a Chrome trace (Perfetto,
    chrome://tracing; TensorBoard's profiler plugin reads the same file) to ``path``."""

    def __init__(self, first: int, last: int, path: Path) -> None:
        self.first, self.last, self.path = first, last, path
        self._profile: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        if step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
            self._profile.__enter__()

    def after_step(self, step: int) -> None:
        if step == self.last:
            self.close()

    def close(self) -> None:
        """Write the trace of the steps recorded so far (a run that stops inside the range)."""
        if self._profile is None:
            return
        profile, self._profile = self._profile, None
        profile.__exit__(None, None, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        profile.export_chrome_trace(str(self.path))


class MemorySnapshots:
    """CUDA memory snapshots (pytorch.org/memory_viz): every allocation with its stack, recorded from the first
    step; dumped after step ``step`` and, with ``on_out_of_memory``, when a step runs out of device memory."""

    MAX_ENTRIES = 100_000
    """Allocations kept in the history: enough for a few steps of a large model, a bounded cost."""

    def __init__(self, step: int | None, on_out_of_memory: bool, directory: Path, rank: int) -> None:
        self.step, self.on_out_of_memory, self.directory, self.rank = step, on_out_of_memory, directory, rank

    @contextmanager
    def recording(self) -> Iterator["MemorySnapshots"]:
        torch.cuda.memory._record_memory_history(max_entries=self.MAX_ENTRIES)
        try:
            yield self
        except torch.cuda.OutOfMemoryError:
            if self.on_out_of_memory:
                self._dump("oom")
            raise
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)

    def after_step(self, step: int) -> None:
        if step == self.step:
            self._dump(f"step{step}")

    def _dump(self, moment: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(self.directory / f"memory_rank{self.rank}_{moment}.pickle"))
