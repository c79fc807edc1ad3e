"""A rank whose torchrun was killed ends within seconds, with real processes: torchrun's workers, and a child
of a plain parent for each of the two guards alone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment_runs import (
    TINY_CONFIG,
    child_pids,
    is_gone,
    subprocess_env,
    tiny_overrides,
    torchrun_command,
    wait_for_train_line,
)
from llm_gym.cli.launcher import TORCHRUN_VARIABLE

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="follows processes through /proc")

PROMPTLY_S = 10


def wait_until_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + PROMPTLY_S
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"{what} (pid {pid}) still runs {PROMPTLY_S} s after torchrun was killed"
        time.sleep(0.05)


def end(pids: list[int]) -> None:
    """Clean up after a failed assertion: SIGKILL whichever of our own processes still run."""
    for pid in pids:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_every_rank_ends_when_torchrun_is_killed_even_one_waiting_in_a_collective(byte_corpus, tmp_path):
    experiment = tmp_path / "experiment"
    overrides = tiny_overrides(
        byte_corpus,
        experiment,
        **{"training.max_steps": 100_000, "training.eval_interval": 100_000, "checkpointing.every_n_steps": 0,
           "training.micro_batch_size": 2, "model.config.n_layer": 1, "parallelism.type_hint": "DDP"},
    )  # fmt: skip
    with (tmp_path / "torchrun.log").open("w") as log:
        launcher = subprocess.Popen(
            torchrun_command(2, "run", "--config_file_path", str(TINY_CONFIG), *overrides),
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    workers: list[int] = []
    try:
        wait_for_train_line(experiment / "metrics.jsonl", 1, launcher)
        workers = child_pids(launcher.pid)
        assert len(workers) == 2, workers
        stopped, waiting = workers
        os.kill(stopped, signal.SIGSTOP)  # the other rank now waits for it in the step's next collective
        time.sleep(1)
        launcher.kill()
        launcher.wait(timeout=30)
        wait_until_gone(waiting, "the rank waiting in a collective")
        os.kill(stopped, signal.SIGCONT)  # its SIGTERM, pending while it was stopped, now ends it
        wait_until_gone(stopped, "the stopped rank, once continued")
    finally:
        end(workers)
        if launcher.poll() is None:
            launcher.kill()


# A parent that starts CHILD the way torchrun does (its own session, torchrun's variable set), then waits forever.
PARENT = """
import os, subprocess, sys, time
env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RANK": "1"}
subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, start_new_session=True, stderr=open(sys.argv[2], "w"))
time.sleep(600)
"""
ARMED = "armed"


def child_of_a_killed_parent(tmp_path: Path, then: str, before: str = "") -> str:
    """Run ``before``, ``exit_with_launcher()`` and ``then`` in a child of a parent, SIGKILL the parent once the
    child is armed, and return the child's stderr once it has ended."""
    child = "\n".join([
        "import signal, sys", before, "from llm_gym.cli.launcher import exit_with_launcher", "exit_with_launcher()",
        f"print('{ARMED}', file=sys.stderr, flush=True)", then,
    ])  # fmt: skip
    stderr = tmp_path / "child.stderr"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child, str(stderr)], env=subprocess_env())
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (stderr.exists() and ARMED in stderr.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline, "the child was never armed"
            time.sleep(0.05)
        children = child_pids(parent.pid)
        parent.kill()
        parent.wait(timeout=30)
        wait_until_gone(children[0], "the child")
    finally:
        end(children)
        if parent.poll() is None:
            parent.kill()
    return stderr.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_kernel_ends_a_child_whose_parent_died_even_while_it_holds_the_interpreter(tmp_path):
    # sum() over a range runs in C and never lets another thread run: the watch thread cannot, the signal does.
    stderr = child_of_a_killed_parent(tmp_path, then="sum(range(10**15))")
    assert stderr == f"{ARMED}\n"


def test_the_watch_thread_ends_a_child_that_ignores_sigterm_and_says_why(tmp_path):
    stderr = child_of_a_killed_parent(
        tmp_path, before="signal.signal(signal.SIGTERM, signal.SIG_IGN)", then="signal.pause()"
    )
    last = stderr.splitlines()[-1]
    assert last.startswith("error (rank 1): torchrun (pid ")
    assert last.endswith(", which started this rank, has exited; stopping")


def test_nothing_is_armed_outside_torchrun():
    code = "import threading; from llm_gym.cli.launcher import exit_with_launcher; exit_with_launcher(); "
    code += "print(threading.active_count())"
    env = {key: value for key, value in subprocess_env().items() if key != TORCHRUN_VARIABLE}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "1", result.stderr
