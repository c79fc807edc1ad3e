"""Preemption and hangs, with real processes: SIGTERM or SIGUSR1 saves a checkpoint on every rank and exits
for a requeue, and the run resumes from it bit for bit; a rank stuck forever ends every rank with its stacks.

Test-only components from a user module beside the config: a logger that signals at a step (rank 0's; to its
own process, or to torchrun, which passes SIGTERM on to every rank) and an MLP that sleeps forever on rank 1.
"""

import os
import signal
from pathlib import Path

import pytest

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import llm_gym, read_metrics, tiny_config_with_user_module, tiny_overrides, torchrun
from llm_gym.checkpointing.loading import find_checkpoint
from llm_gym.parallel.distributed import host_group, init_distributed
from llm_gym.training.preemption import PREEMPTED_EXIT_STATUS, REQUEUE_MARKER_ENV, PreemptionWatch
from llm_gym.training.watchdog import HANG_EXIT_STATUS

TEST_COMPONENTS = """
import os
import signal
import time

from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import ProgressUpdate
from llm_gym.models.mlp import GELUMLP, GELUMLPConfig
from llm_gym.registry import register_component


@register_component("logger", "SignalAtStep", injected=("experiment_dir", "resolved_config", "resume_step"))
class SignalAtStep(Subscriber):
    message_types = (ProgressUpdate,)

    def __init__(self, step: int, signal_name: str, to_launcher: bool, experiment_dir, resolved_config, resume_step):
        self.step, self.signal = step, getattr(signal, signal_name)
        self.target = os.getppid() if to_launcher else os.getpid()
        self.fresh = resume_step is None  # a resumed run is not preempted again

    def consume(self, message):
        if self.fresh and message.step == self.step:
            os.kill(self.target, self.signal)


@register_component("mlp", "SleepingMLP", config_model=GELUMLPConfig)
class SleepingMLP(GELUMLP):
    calls = 0

    def forward(self, hidden):
        SleepingMLP.calls += 1
        if os.environ.get("RANK") == "1" and SleepingMLP.calls == 3 * 4:  # step 3's forward, 4 blocks
            time.sleep(3600)
        return super().forward(hidden)
"""

LENGTH = {"training.max_steps": 14, "training.log_interval": 1, "training.eval_interval": 100,
          "checkpointing.every_n_steps": 0}  # fmt: skip


def _one_rank_agreement() -> list[int]:
    env = init_distributed("cpu")
    watch = PreemptionWatch(host_group(env))
    stops = []
    with watch.installed():
        for step in range(1, 8):
            if env.rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            if watch.should_stop():
                stops.append(step)
    return stops


def test_the_ranks_agree_to_stop_after_the_same_step_whichever_was_signalled():
    # Noted during step 3 by rank 1 alone, exchanged after step 3, read after step 4.
    assert run_on_ranks(_one_rank_agreement, 2) == [[4, 5, 6, 7], [4, 5, 6, 7]]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("preemption")
    tiny_config_with_user_module(directory, "test_components", TEST_COMPONENTS)
    return directory


def _args(workspace: Path, output_dir: Path, *extra: str, **settings) -> list[str]:
    overrides = tiny_overrides(workspace, output_dir, **{**LENGTH, **settings})
    return ["run", "--config_file_path", str(workspace / "test_components.yaml"), *overrides, *extra]


def _train_losses(output_dir: Path) -> dict[int, float]:
    return {
        line["step"]: line["loss"] for line in read_metrics(output_dir / "metrics.jsonl") if line["split"] == "train"
    }


def _signalling_logger(signal_name: str, to_launcher: bool) -> str:
    config = f"{{step: 4, signal_name: {signal_name}, to_launcher: {str(to_launcher).lower()}}}"
    return f"[{{type_hint: MetricsJsonl, config: {{}}}}, {{type_hint: SignalAtStep, config: {config}}}]"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ranks", "signal_name"),
    [(1, "SIGUSR1"), pytest.param(2, "SIGTERM", marks=pytest.mark.cross_version)],
    ids=["sigusr1_one_process", "sigterm_to_torchrun_two_ranks"],
)
def test_a_signal_saves_on_every_rank_exits_for_a_requeue_and_the_run_resumes_exactly(
    workspace, monkeypatch, ranks, signal_name
):
    if ranks > 1:
        skip_unless_gloo_sharding_works()
    marker = workspace / f"requeue_{ranks}"
    monkeypatch.setenv(REQUEUE_MARKER_ENV, str(marker))
    uninterrupted_dir, preempted_dir = workspace / f"whole_{ranks}", workspace / f"preempted_{ranks}"
    launch = llm_gym if ranks == 1 else lambda *args, check: torchrun(ranks, *args, check=check)
    launch(*_args(workspace, uninterrupted_dir), check=True)
    assert not marker.exists()
    logger = _signalling_logger(signal_name, to_launcher=ranks > 1)
    stopped = launch(*_args(workspace, preempted_dir, loggers=logger), check=False)
    # torchrun reports a worker's non-zero status as its own 1.
    assert stopped.returncode == (PREEMPTED_EXIT_STATUS if ranks == 1 else 1), stopped.stderr[-3000:]
    assert "stopped: asked to stop (SIGTERM or SIGUSR1): stopped after step" in stopped.stderr
    assert marker.exists()  # what the job script requeues on
    saved = find_checkpoint(preempted_dir / "checkpoints")
    step = int(saved.name.removeprefix("step_"))
    assert 4 <= step < LENGTH["training.max_steps"]  # the signal's step, or the one or two after it
    assert max(_train_losses(preempted_dir)) == step
    launch(*_args(workspace, preempted_dir, "--resume", "auto", loggers=logger), check=True)
    assert _train_losses(preempted_dir) == _train_losses(uninterrupted_dir)


@pytest.mark.slow
def test_a_rank_stuck_forever_ends_every_rank_with_its_stacks_on_disk(workspace, monkeypatch):
    skip_unless_gloo_sharding_works()
    monkeypatch.setenv(REQUEUE_MARKER_ENV, str(workspace / "requeue_hang"))
    output_dir = workspace / "hang"
    mlp = "{type_hint: SleepingMLP, config: {hidden_dim: 352}}"
    args = _args(workspace, output_dir, **{"model.config.mlp": mlp, "training.hang_timeout_s": 3})
    result = torchrun(2, *args, check=False)
    assert result.returncode != 0
    assert f"exitcode  : {HANG_EXIT_STATUS}" in result.stderr
    stuck, waiting = (output_dir / "hangs" / f"rank_{rank}.txt" for rank in (1, 0))
    assert "no step, evaluation or save finished for 3 s (training.hang_timeout_s)" in stuck.read_text()
    assert "test_components.py" in stuck.read_text() and "in forward" in stuck.read_text()
    assert "Thread" in waiting.read_text()  # faulthandler's "Current thread 0x..." or "Thread 0x..."
    assert "training.hang_timeout_s" in result.stderr
    assert (workspace / "requeue_hang").exists()
