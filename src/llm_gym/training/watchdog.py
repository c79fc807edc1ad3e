"""A run that stops making progress ends itself, with every rank's Python stacks on disk.

A rank stuck in a collective (another rank died, or waits forever in its own code) holds its allocation until
the collective's timeout, and says nothing of where it is stuck. The watchdog is a thread that the loop tells
of each finished step, evaluation and save (``beat``); when ``timeout_s`` pass without one, it writes every
thread's stack to ``<experiment dir>/hangs/rank_<rank>.txt`` and ends the process with ``HANG_EXIT_STATUS``
(creating ``$LLM_GYM_REQUEUE_MARKER``), so that the job can be requeued instead of burning its time. It starts
counting at the first beat: the first step (compilation, the first gathers) may take long.
"""

import faulthandler
import os
import threading
import time
from pathlib import Path

from llm_gym.training.preemption import request_requeue

HANG_EXIT_STATUS = 124
"""As ``timeout(1)`` exits when its command ran out of time."""
HANG_DIRECTORY = "hangs"


class HangWatchdog:
    def __init__(self, timeout_s: float, experiment_dir: Path, rank: int) -> None:
        self.timeout_s = timeout_s
        self.dump_path = experiment_dir / HANG_DIRECTORY / f"rank_{rank}.txt"
        self._rank = rank
        self._last_beat: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="llm_gym hang watchdog", daemon=True)

    def __enter__(self) -> "HangWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def _watch(self) -> None:
        while not self._stopped.wait(min(self.timeout_s / 10, 5.0)):
            last = self._last_beat
            if last is not None and time.monotonic() - last > self.timeout_s:
                self._dump_and_exit()

    def _dump_and_exit(self) -> None:
        self.dump_path.parent.mkdir(parents=True, exist_ok=True)
        with self.dump_path.open("w", encoding="utf-8") as file:
            file.write(f"rank {self._rank}: no step, evaluation or save finished for {self.timeout_s:g} s "
                       "(training.hang_timeout_s); the stack of every thread:\n\n")  # fmt: skip
            file.flush()
            faulthandler.dump_traceback(file=file, all_threads=True)
        message = (
            f"error (rank {self._rank}): no progress for {self.timeout_s:g} s (training.hang_timeout_s); every "
            f"thread's stack is in {self.dump_path}; stopping\n"
        )
        os.write(2, message.encode())
        request_requeue()
        # From the watchdog's thread, whatever the main thread is stuck in.
        os._exit(HANG_EXIT_STATUS)
