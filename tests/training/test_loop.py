"""The loop's own rules: when it logs, evaluates and saves, and what it does with a non-finite loss."""

import itertools
import math
from collections.abc import Callable, Collection
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
    """The broker and the checkpoint saver: a save is due on every step unless ``due`` says otherwise."""

    def __init__(self) -> None:
        self.messages, self.saves = [], []
        self.due: Callable[[int, bool], bool] = lambda step, is_final: True
        self._offered = (0, False)

    def publish(self, message) -> None:
        self.messages.append(message)

    def is_due(self, step: int, is_final: bool) -> bool:
        self._offered = (step, is_final)
        return self.due(step, is_final)

    def save(self, step: int) -> None:
        self.saves.append(self._offered)

    def finish(self) -> None:
        pass


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
    phases = [f"phase_{name}_s" for name in ("checkpoint", "data", "device_wait", "evaluation", "optimizer", "step")]
    assert keys == sorted(["grad_norm", "loss", "loss_step", "lr", "tokens_per_s", "tokens_seen", *phases])
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

    def slow_save(step: int) -> None:
        clock["now"] += 10.0 if step == 2 else 0.0

    trainer.train_batches, trainer.eval_splits, recorder.save = timed_steps(), {"val": slow_evaluation}, slow_save
    with (
        patch("llm_gym.training.loop.time.perf_counter", lambda: clock["now"]),
        patch("llm_gym.training.profiling.time.perf_counter", lambda: clock["now"]),
    ):
        trainer.train()
    return train_lines(recorder)


def test_tokens_per_s_leaves_out_evaluation_and_checkpoint_time():
    lines = run_on_ranks(_throughput_with_slow_evaluations_and_saves, 1)[0]
    assert [line["tokens_per_s"] for line in lines] == [29.0, 29.0]  # 4 × 8 - 3 tokens a step


def test_the_train_lines_say_where_the_time_of_a_step_went():
    first, second = run_on_ranks(_throughput_with_slow_evaluations_and_saves, 1)[0]
    # Steps 1-4: 1 s of data a step, the evaluation at step 2 (5 s) and its save (10 s); the evaluation at the
    # logged step 4 comes after its line, in the next window, with the one at step 6.
    assert first["phase_data_s"] == 1.0 and first["phase_evaluation_s"] == 5 / 4
    assert first["phase_checkpoint_s"] == 10 / 4 and second["phase_checkpoint_s"] == 0.0
    assert second["phase_evaluation_s"] == 2 * 5 / 4
    assert first["phase_step_s"] == first["phase_optimizer_s"] == first["phase_device_wait_s"] == 0.0


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
    assert step == 3 and saves == [(1, False), (2, False)]


def _diverge_between_reads() -> tuple:
    # Step 2 is poisoned; nothing reads the steps until the save due at step 4.
    trainer, recorder = make_trainer(poisoned_steps={2}, max_steps=6, log_interval=5, eval_interval=100)
    recorder.due = lambda step, is_final: step == 4
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    lines = [m for m in recorder.messages if type(m).__name__ == "MetricsRecord"]
    return str(error.value), trainer.progress.step, recorder.saves, lines


def test_a_non_finite_step_between_reads_stops_the_run_at_the_next_save_without_saving():
    message, step, saves, lines = run_on_ranks(_diverge_between_reads, 1)[0]
    assert message.startswith("non-finite loss (nan) and gradient norm (nan) at step 2;")
    assert step == 4 and saves == [] and lines == []


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
    assert describe_non_finite(StepResult(loss, grad_norm, 8, False, loss_sum=loss * 8, z_loss_sum=0.0)) == said


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


def train_lines(recorder: Recorder) -> list[dict]:
    return [m.metrics for m in recorder.messages if type(m).__name__ == "MetricsRecord" and m.split == "train"]


def _train_lines(**settings) -> list[dict]:
    trainer, recorder = make_trainer(**settings)
    trainer.train()
    return train_lines(recorder)


def _train_lines_and_step_losses() -> tuple[list[dict], list[tuple[float, int]]]:
    """Train lines every 3 steps of 7, and every step's (loss, target tokens) from the same run logging every
    step, with unequal token counts."""
    batch = global_batch(4)

    def unequal_batches():
        for step in itertools.count(1):
            targets = batch.targets.clone()
            targets[1, : step % 3 * 2] = -100  # 0, 2 or 4 tokens fewer
            yield Batch(inputs=batch.inputs, targets=targets)

    runs = []
    for log_interval in (3, 1):
        trainer, recorder = make_trainer(log_interval=log_interval, max_steps=7)
        trainer.train_batches = unequal_batches()
        trainer.train()
        runs.append(train_lines(recorder))
    lines, every_step = runs
    tokens = [4 * 8 - 3 - step % 3 * 2 for step in range(1, len(every_step) + 1)]
    return lines, [(line["loss_step"], count) for line, count in zip(every_step, tokens, strict=True)]


def test_the_train_line_loss_is_the_token_weighted_mean_of_its_window():
    lines, steps = run_on_ranks(_train_lines_and_step_losses, 1)[0]
    windows = [steps[0:3], steps[3:6], steps[6:7]]  # lines at steps 3, 6 and the last, 7
    for line, window in zip(lines, windows, strict=True):
        expected = sum(loss * tokens for loss, tokens in window) / sum(tokens for _, tokens in window)
        assert line["loss"] == pytest.approx(expected, rel=1e-12)
        assert line["loss_step"] == window[-1][0]  # the logged step's own loss, unaveraged
    assert lines[-1]["loss"] == lines[-1]["loss_step"]  # a window of one step is that step, to the bit


def _window_over_a_skipped_step() -> tuple[list[dict], list[float]]:
    every_step = _train_lines(poisoned_steps={3}, on_nonfinite="skip", max_steps=4, log_interval=1)
    return _train_lines(poisoned_steps={3}, on_nonfinite="skip", max_steps=4, log_interval=4), [
        line["loss_step"] for line in every_step
    ]


def test_a_skipped_non_finite_step_is_left_out_of_the_window():
    (line,), step_losses = run_on_ranks(_window_over_a_skipped_step, 1)[0]
    assert math.isnan(step_losses[2])
    finite = [step_losses[0], step_losses[1], step_losses[3]]  # the same batch each step: equal token counts
    assert line["loss"] == pytest.approx(sum(finite) / 3, rel=1e-12)


def _z_loss_lines() -> list[dict]:
    return _train_lines(z_loss_weight=1e-2, log_interval=3, max_steps=3)


def test_the_z_loss_is_a_metric_of_its_own_on_train_lines():
    (line,) = run_on_ranks(_z_loss_lines, 1)[0]
    assert line["z_loss"] > 0 and "z_loss" not in run_on_ranks(_schedule, 1)[0][2]
