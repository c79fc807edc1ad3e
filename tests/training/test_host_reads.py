"""An ordinary step (one that neither logs, evaluates nor saves) makes the host wait for the device zero times.

Counted with the shim of ``host_reads`` between the starts of consecutive steps, in the loop with a toy model
and in a real run of the tiny config (FSDP2, one process).
"""

import itertools
from pathlib import Path
from unittest.mock import patch

from test_loop import make_trainer

from distributed import run_on_ranks
from experiment_runs import TINY_CONFIG, tiny_overrides, write_byte_corpus
from host_reads import counting_host_reads
from llm_gym.training import loop
from llm_gym.training.run import run_training


def reads_per_step(train) -> list[list[str]]:
    """The shim's reads from the start of each step to the start of the next (the last: to the end)."""
    starts: list[int] = []
    with counting_host_reads() as reads:
        step = loop.train_step

        def marked_step(*args, **kwargs):
            starts.append(len(reads.calls))
            return step(*args, **kwargs)

        with patch.object(loop, "train_step", marked_step):
            train()
        starts.append(len(reads.calls))
    return [reads.calls[start:end] for start, end in itertools.pairwise(starts)]


def _toy_reads(on_nonfinite: str) -> list[list[str]]:
    trainer, recorder = make_trainer(max_steps=6, log_interval=5, eval_interval=100, on_nonfinite=on_nonfinite)
    recorder.due = lambda step, is_final: is_final
    return reads_per_step(trainer.train)


def test_the_loop_reads_the_device_only_on_the_steps_that_log_or_save():
    per_step = run_on_ranks(_toy_reads, 1, "stop")[0]
    assert per_step[:4] == [[], [], [], []]
    assert per_step[4] and per_step[5]  # step 5 logs; step 6 logs, evaluates and saves
    # Skipping a non-finite step decides on the host whether to update: every step reads.
    assert all(run_on_ranks(_toy_reads, 1, "skip")[0])


def _run_reads(corpus: Path, output_dir: Path) -> list[list[str]]:
    settings = {"training.max_steps": 8, "training.log_interval": 4, "training.eval_interval": 100,
                "checkpointing.every_n_steps": 0}  # fmt: skip
    overrides = tiny_overrides(corpus, output_dir, **settings)
    return reads_per_step(lambda: run_training(TINY_CONFIG, overrides))


def test_a_real_run_reads_the_device_only_on_the_steps_that_log_or_save(tmp_path):
    corpus = write_byte_corpus(tmp_path)
    per_step = run_on_ranks(_run_reads, 1, corpus, tmp_path / "run")[0]
    assert len(per_step) == 8
    ordinary = [per_step[index] for index in (0, 1, 2, 4, 5, 6)]
    assert ordinary == [[]] * 6, per_step
    assert per_step[3] and per_step[7]
