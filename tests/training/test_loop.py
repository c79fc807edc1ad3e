"""The loop's own rules: when it logs, evaluates and saves, and what it does with a non-finite loss."""

import itertools
from collections.abc import Collection
from unittest.mock import patch

import pytest
import torch
from test_step import VOCAB, ToyLM, global_batch

from distributed import run_on_ranks
from llm_gym.config.app import TrainingSettings
from llm_gym.data.collators import Batch
from llm_gym.errors import RankLocalError
from llm_gym.parallel.distributed import init_distributed
from llm_gym.parallel.strategies import NoParallelism, NoParallelismConfig
from llm_gym.training.loop import NonFiniteLossError, Trainer, describe_non_finite
from llm_gym.training.step import StepResult


class Recorder:
    def __init__(self) -> None:
        self.messages, self.saves = [], []

    def publish(self, message) -> None:
        self.messages.append(message)

    def maybe_save(self, step: int, is_final: bool) -> None:
        self.saves.append((step, is_final))


def make_trainer(poisoned_steps: Collection[int] = (), **settings) -> tuple[Trainer, Recorder]:
    strategy = NoParallelism(NoParallelismConfig(), init_distributed("cpu"))
    torch.manual_seed(0)
    model = ToyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = global_batch(4)
    poisoned = {"now": False}
    model.head.register_forward_hook(lambda module, args, out: out * float("nan") if poisoned["now"] else out)

    def batches():
        for step in itertools.count(1):
            poisoned["now"] = step in poisoned_steps
            yield batch

    recorder = Recorder()
    defaults = {"max_steps": 6, "sequence_length": 8, "micro_batch_size": 4, "eval_interval": 3, "log_interval": 2}
    trainer = Trainer(
        settings=TrainingSettings(**{**defaults, **settings}),
        model=model,
        parallelism=strategy,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
        train_batches=batches(),
        eval_splits={"val": lambda: [batch]},
        broker=recorder,
        checkpointer=recorder,
    )
    return trainer, recorder


def records(recorder: Recorder) -> list[tuple[int, str]]:
    return [(m.step, m.split) for m in recorder.messages if type(m).__name__ == "MetricsRecord"]


def _schedule() -> tuple:
    trainer, recorder = make_trainer()
    trainer.train()
    train_line = next(m for m in recorder.messages if type(m).__name__ == "MetricsRecord")
    return records(recorder), recorder.saves, sorted(train_line.metrics), trainer.progress.tokens_seen


def test_logs_evaluates_and_offers_a_checkpoint_on_schedule():
    lines, saves, keys, tokens_seen = run_on_ranks(_schedule, 1)[0]
    assert lines == [(2, "train"), (3, "val"), (4, "train"), (6, "train"), (6, "val")]
    assert saves == [(step, step == 6) for step in range(1, 7)]
    assert keys == ["grad_norm", "loss", "lr", "tokens_per_s", "tokens_seen"]
    assert tokens_seen == 6 * (4 * 8 - 3)


def _schedule_with_initial_evaluation() -> list:
    trainer, recorder = make_trainer(eval_at_start=True, max_steps=3)
    trainer.train()
    return records(recorder)


def test_can_evaluate_before_the_first_step():
    assert run_on_ranks(_schedule_with_initial_evaluation, 1)[0] == [(0, "val"), (2, "train"), (3, "train"), (3, "val")]


def _throughput_with_slow_evaluations_and_saves() -> list[float]:
    """A fake clock: every step takes 1 s, every evaluation 5 s, the save after step 2 10 s."""
    clock = {"now": 0.0}
    trainer, recorder = make_trainer(log_interval=4, eval_interval=2, max_steps=8)
    steps = trainer.train_batches

    def timed_steps():
        for batch in steps:
            clock["now"] += 1.0
            yield batch

    def slow_evaluation():
        clock["now"] += 5.0
        return []

    def slow_save(step: int, is_final: bool) -> None:
        clock["now"] += 10.0 if step == 2 else 0.0

    trainer.train_batches, trainer.eval_splits, recorder.maybe_save = timed_steps(), {"val": slow_evaluation}, slow_save
    with patch("llm_gym.training.loop.time.perf_counter", lambda: clock["now"]):
        trainer.train()
    return [
        m.metrics["tokens_per_s"]
        for m in recorder.messages
        if type(m).__name__ == "MetricsRecord" and m.split == "train"
    ]


def test_tokens_per_s_leaves_out_evaluation_and_checkpoint_time():
    assert run_on_ranks(_throughput_with_slow_evaluations_and_saves, 1)[0] == [29.0, 29.0]  # 4 × 8 - 3 tokens a step


def _refused_token_id(eval_at_start: bool, negative: bool) -> str:
    trainer, _ = make_trainer(eval_at_start=eval_at_start)
    if negative:  # e.g. an int32 corpus written by another tool
        batch = global_batch(4)
        batch = Batch(batch.inputs.clone(), batch.targets)
        batch.inputs[1, 2] = -7
        trainer.train_batches, trainer.vocab_size = itertools.repeat(batch), VOCAB
    else:
        trainer.vocab_size = 10  # the batches hold ids up to 31
    with pytest.raises(RankLocalError) as error:
        trainer.train()
    return str(error.value)


@pytest.mark.parametrize(
    ("eval_at_start", "negative", "expected"),
    [(False, False, "token id 31 in a train batch"), (True, False, "token id 31 in a val batch"),
     (False, True, "token id -7 in a train batch")],
)  # fmt: skip
def test_token_ids_outside_the_vocabulary_are_refused_before_the_model_sees_them(eval_at_start, negative, expected):
    message = run_on_ranks(_refused_token_id, 1, eval_at_start, negative)[0]
    vocabulary = VOCAB if negative else 10
    assert message.startswith(f"{expected} is outside the model's vocabulary of {vocabulary} (model.config.vocab_size)")


def _diverge(action: str) -> tuple:
    trainer, recorder = make_trainer(poisoned_steps={3}, on_nonfinite=action, max_steps=4)
    try:
        trainer.train()
    except NonFiniteLossError as error:
        return "stopped", str(error), trainer.progress.step, recorder.saves
    finite = all(torch.isfinite(p).all() for p in trainer.model.parameters())
    return "finished", trainer.progress.skipped_steps, trainer.progress.step, finite


def test_non_finite_loss_stops_the_run_before_anything_is_saved():
    outcome, message, step, saves = run_on_ranks(_diverge, 1, "stop")[0]
    assert outcome == "stopped"
    assert "non-finite loss" in message and "at step 3" in message and "on_nonfinite=skip" in message
    assert step == 2 and saves == [(1, False), (2, False)]


def test_non_finite_loss_can_skip_the_update_instead():
    outcome, skipped, step, weights_finite = run_on_ranks(_diverge, 1, "skip")[0]
    assert outcome == "finished" and step == 4 and skipped == 1 and weights_finite


def _skip_streaks(poisoned_steps: set[int], limit: int) -> tuple:
    trainer, recorder = make_trainer(poisoned_steps, on_nonfinite="skip", max_consecutive_skipped_steps=limit)
    try:
        trainer.train()
    except NonFiniteLossError as error:
        return "stopped", str(error), trainer.progress.step, recorder.saves
    return "finished", trainer.progress.skipped_steps, trainer.progress.step, recorder.saves


def test_skipping_stops_the_run_after_too_many_consecutive_skipped_steps():
    # Steps 2-3 and 5-6 are skipped: two streaks of 2 under a limit of 3 do not stop the run ...
    outcome, skipped, step, _ = run_on_ranks(_skip_streaks, 1, {2, 3, 5, 6}, 3)[0]
    assert (outcome, skipped, step) == ("finished", 4, 6)
    # ... a streak of 3 does, before the step is saved.
    outcome, message, step, saves = run_on_ranks(_skip_streaks, 1, {2, 3, 4}, 3)[0]
    assert outcome == "stopped" and step == 3 and saves == [(1, False), (2, False), (3, False)]
    assert message.startswith(
        "3 steps in a row (2-4) had non-finite values and were skipped, the last with non-finite loss (nan) and "
        "gradient norm (nan) (training.max_consecutive_skipped_steps: 3): the run has diverged"
    )


@pytest.mark.parametrize(
    ("loss", "grad_norm", "said"),
    [(float("nan"), float("nan"), "non-finite loss (nan) and gradient norm (nan)"),
     (float("inf"), 2.5, "non-finite loss (inf; gradient norm 2.5)"),
     (5.549, float("nan"), "non-finite gradient norm (nan; the loss, 5.549, is finite)")],
)  # fmt: skip
def test_the_stop_message_says_which_value_is_not_finite(loss, grad_norm, said):
    assert describe_non_finite(StepResult(loss, grad_norm, tokens=8, finite=False)) == said


@pytest.mark.parametrize(("micro", "accumulation", "world", "global_batch"), [(2, 2, 2, 8), (4, 2, 2, 8), (4, 1, 1, 8)])
def test_global_batch_must_equal_micro_times_accumulation_times_ranks(micro, accumulation, world, global_batch):
    settings = TrainingSettings(
        max_steps=1,
        sequence_length=8,
        micro_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        global_batch_size=global_batch,
        eval_interval=1,
    )
    if micro * accumulation * world == global_batch:
        settings.check_batch_sizes(world)
    else:
        derived = micro * accumulation * world
        with pytest.raises(ValueError, match=rf"global_batch_size \(8\) must equal .* = {derived}$"):
            settings.check_batch_sizes(world)
