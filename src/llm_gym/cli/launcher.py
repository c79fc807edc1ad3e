"""A rank that torchrun started ends when torchrun does.

torchrun starts every worker in a session of its own, so when torchrun itself is killed (SIGKILL, from an
out-of-memory killer or a scheduler ending a job step) nothing reaches its workers: they were seen running on
with parent PID 1 for minutes, a rank waiting in a collective until the process group's timeout. Two guards:
on Linux the kernel sends SIGTERM when the parent exits (``PR_SET_PDEATHSIG``; torchrun starts its workers
from its main thread, which lives as long as torchrun), and on every platform a thread checks the parent
every second and ends the rank, which also covers a SIGTERM that a Python handler would only see once the
main thread leaves a blocking call.
"""

import ctypes
import os
import signal
import sys
import threading
import time

TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"
"""Set by torchrun (torch.distributed.elastic) in the environment of each worker it starts."""
_PR_SET_PDEATHSIG = 1
_POLL_S = 1.0
_EXIT_STATUS = 1


def exit_with_launcher() -> None:
    """Under torchrun, end this process promptly once the torchrun process that started it has exited."""
    if TORCHRUN_VARIABLE not in os.environ:
        return
    launcher = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # a failure leaves the thread below to do it
    # The launcher may have exited before the request above: the kernel would then never send the signal.
    if os.getppid() != launcher:
        _launcher_gone(launcher)
    threading.Thread(target=_watch, args=(launcher,), name="llm_gym launcher watch", daemon=True).start()


def _watch(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(_POLL_S)
    _launcher_gone(launcher)


def _launcher_gone(launcher: int) -> None:
    rank = os.environ.get("RANK", "?")
    message = f"error (rank {rank}): torchrun (pid {launcher}), which started this rank, has exited; stopping\n"
    os.write(sys.stderr.fileno(), message.encode())
    # From any thread, whatever the main thread is blocked in: nothing is left to report to.
    os._exit(_EXIT_STATUS)
