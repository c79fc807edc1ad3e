"""Cooldown branches (``checkpointing.branch_from``): a new run from another run's checkpoint with its whole state
and a schedule of its own, continuing exactly where the schedules agree, refusing what breaks equivalence.

The source run trains 12 steps under warmup–stable–decay, decaying over its last 4: steps 1-8 are warmup and
stable, the same for any run whose decay starts at step 8 or later.
"""

import json
from pathlib import Path

import pytest
import yaml

from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides

RECORDED = ("step", "split", "loss", "loss_step", "lr", "grad_norm", "tokens_seen")


def wsd(total_steps: int, decay_steps: int) -> dict[str, object]:
    """The tiny config's schedule swapped for WSD: its warmup and ``total_steps: ${training.max_steps}`` carry over."""
    return {
        "training.max_steps": total_steps,
        "lr_scheduler.type_hint": "WarmupStableDecay",
        "lr_scheduler.config.warmup_steps": 2,
        "lr_scheduler.config.decay_steps": decay_steps,
    }


def run(corpus: Path, output_dir: Path, *options: str, check: bool = True, **overrides: object):
    settings = {
        "training.eval_interval": 2,
        "training.log_interval": 2,
        "checkpointing.every_n_steps": 2,
        "checkpointing.keep_last": -1,
        "loggers": "[{type_hint: Console, config: {progress_bar: false}}, {type_hint: MetricsJsonl, config: {}}]",
        **overrides,
    }
    arguments = [
        "run",
        "--config_file_path",
        str(TINY_CONFIG),
        *options,
        *tiny_overrides(corpus, output_dir, **settings),
    ]
    return llm_gym(*arguments, check=check)


def recorded(experiment_dir: Path, after_step: int = 0) -> list[tuple]:
    lines = read_metrics(experiment_dir / "metrics.jsonl")
    return [tuple(line.get(key) for key in RECORDED) for line in lines if line["step"] > after_step]


@pytest.fixture(scope="module")
def source(byte_corpus, tmp_path_factory) -> Path:
    """The 12-step source run, every even step's checkpoint kept."""
    directory = tmp_path_factory.mktemp("source")
    run(byte_corpus, directory, **wsd(12, 4))
    return directory


@pytest.mark.slow
def test_a_branch_with_the_source_schedule_takes_the_source_run_s_own_steps(byte_corpus, source, tmp_path):
    branch = tmp_path / "branch"

    result = run(byte_corpus, branch, **wsd(12, 4), **{"checkpointing.branch_from": source / "checkpoints" / "step_4"})

    assert recorded(branch) == recorded(source, after_step=4)  # steps 5-12 to the bit, evaluations included
    assert f"branched from {source / 'checkpoints' / 'step_4'} at step 4" in result.stdout
    meta = json.loads((branch / "checkpoints" / "step_12" / "llm_gym_meta.json").read_text())
    assert meta["branched_from"] == {"checkpoint": str((source / "checkpoints" / "step_4").resolve()), "step": 4}
    config = yaml.safe_load((branch / "config.yaml").read_text())
    assert config["checkpointing"]["branch_from"] == str(source / "checkpoints" / "step_4")
    assert sorted(path.name for path in (branch / "checkpoints").iterdir()) == [
        "latest", "step_10", "step_12", "step_6", "step_8",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_cooldown_branch_decays_from_the_stable_phase_like_a_shorter_run(byte_corpus, source, tmp_path):
    shorter, cooldown = tmp_path / "shorter", tmp_path / "cooldown"
    run(byte_corpus, shorter, **wsd(8, 2))  # decays over steps 7-8, stable through step 6 like the source
    assert [line for line in recorded(shorter) if line[0] <= 6] == [line for line in recorded(source) if line[0] <= 6]

    branch_from = {"checkpointing.branch_from": source / "checkpoints" / "step_6", "checkpointing.every_n_steps": 1}
    run(byte_corpus, cooldown, **wsd(8, 2), **branch_from)

    assert recorded(cooldown) == recorded(shorter, after_step=6)
    # Resumed from its own checkpoint, as a requeued job would be: a resume, which keeps the lineage.
    result = run(
        byte_corpus, cooldown, "--resume", str(cooldown / "checkpoints" / "step_7"), **wsd(8, 2), **branch_from
    )
    assert (
        "branched from" not in result.stdout and f"resumed from {cooldown / 'checkpoints' / 'step_7'}" in result.stdout
    )
    assert recorded(cooldown) == recorded(shorter, after_step=6)
    meta = json.loads((cooldown / "checkpoints" / "step_8" / "llm_gym_meta.json").read_text())
    assert meta["branched_from"]["step"] == 6


@pytest.mark.slow
def test_a_branch_that_would_not_continue_the_source_exactly_is_refused(byte_corpus, source, tmp_path):
    branch = tmp_path / "branch"
    step_4 = source / "checkpoints" / "step_4"

    changed = run(
        byte_corpus, branch, check=False, **wsd(12, 4), **{"checkpointing.branch_from": step_4, "experiment.seed": 7}
    )
    too_short = run(byte_corpus, branch, check=False, **wsd(4, 1), **{"checkpointing.branch_from": step_4})

    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "break an exact branch" in changed.stderr and "experiment.seed: checkpoint 42, now 7" in changed.stderr
    assert "pass --allow_config_change to branch anyway" in changed.stderr
    assert too_short.returncode == 2 and "is at step 4, and training.max_steps (4) must be later" in too_short.stderr
    assert not branch.exists()
