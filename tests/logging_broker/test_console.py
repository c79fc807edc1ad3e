"""The console logger: a progress bar on a terminal, plain lines otherwise."""

import io
import time
from unittest.mock import patch

from rich.console import Console as RichConsole

from llm_gym.logging_broker import MetricsRecord, ProgressUpdate, TextMessage
from llm_gym.logging_broker.console import Console, ConsoleConfig, format_metrics

TRAIN = {"loss": 3.21456, "lr": 3e-4, "grad_norm": 0.8123, "tokens_seen": 40960, "tokens_per_s": 12345.6}


def publish_a_short_run(logger: Console, max_steps: int = 2) -> None:
    for step in range(1, max_steps + 1):
        logger.consume(ProgressUpdate(step, max_steps, {"loss": 3.0 / step, "tokens_per_s": 1000.0 * step}))
        logger.consume(MetricsRecord(step, "train", {**TRAIN, "loss": 3.0 / step}))
    logger.consume(MetricsRecord(max_steps, "val", {"loss": 2.5}))
    logger.consume(TextMessage("resumed from [checkpoints/step_2]"))
    logger.close()


def terminal(width: int = 160) -> RichConsole:
    return RichConsole(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def test_metrics_format_as_one_greppable_line():
    line = format_metrics(MetricsRecord(10, "train", TRAIN), max_steps=100)
    assert line == "step 10/100 train loss 3.2146 lr 3.000e-04 grad_norm 0.8123 tokens_seen 40,960 tokens_per_s 12,346"
    assert format_metrics(MetricsRecord(7, "val", {"loss": float("nan")})) == "step 7 val loss nan"


def test_each_key_keeps_one_format_whatever_its_magnitude():
    lines = [format_metrics(MetricsRecord(1, "train", {"lr": lr, "tokens_per_s": rate})) for lr, rate in
             [(1e-3, 370.69), (7.895e-4, 14172.3), (0.02, 0.5)]]  # fmt: skip
    assert lines == [
        "step 1 train lr 1.000e-03 tokens_per_s 371",
        "step 1 train lr 7.895e-04 tokens_per_s 14,172",
        "step 1 train lr 2.000e-02 tokens_per_s 0",
    ]


def test_without_a_terminal_every_record_is_a_plain_line_and_train_lines_say_the_time_left(tmp_path, capsys):
    clock = {"now": 100.0}
    with patch("llm_gym.logging_broker.console.time.monotonic", lambda: clock["now"]):
        logger = Console(ConsoleConfig(), tmp_path, {}, None)
        for step in (1, 2, 3):
            clock["now"] += 10.0  # the first step also waited 60 s for compilation
            clock["now"] += 60.0 if step == 1 else 0.0
            logger.consume(ProgressUpdate(step, 12, {"loss": 3.0 / step, "tokens_per_s": 1000.0}))
            logger.consume(MetricsRecord(step, "train", {**TRAIN, "loss": 3.0 / step}))
        logger.consume(MetricsRecord(3, "val", {"loss": 2.5}))
        logger.consume(TextMessage("resumed from [checkpoints/step_2]"))
        logger.close()
    assert capsys.readouterr().out.splitlines() == [
        "step 1/12 train loss 3.0000 lr 3.000e-04 grad_norm 0.8123 tokens_seen 40,960 tokens_per_s 12,346"
        " elapsed 0:01:10",
        "step 2/12 train loss 1.5000 lr 3.000e-04 grad_norm 0.8123 tokens_seen 40,960 tokens_per_s 12,346"
        " elapsed 0:01:20 eta 0:01:40",
        "step 3/12 train loss 1.0000 lr 3.000e-04 grad_norm 0.8123 tokens_seen 40,960 tokens_per_s 12,346"
        " elapsed 0:01:30 eta 0:01:30",
        "step 3/12 val loss 2.5000",
        "resumed from [checkpoints/step_2]",
    ]


def test_progress_bar_false_prints_plain_lines_on_a_terminal(tmp_path):
    console = terminal()
    publish_a_short_run(Console(ConsoleConfig(progress_bar=False), tmp_path, {}, None, console=console))
    output = console.file.getvalue()
    assert output.count(" train loss ") == 2 and "step 2/2 val loss 2.5000" in output
    assert "tok/s" not in output and "ETA" not in output


def test_on_a_terminal_the_bar_shows_progress_and_evaluations_print_above_it(tmp_path):
    console = terminal()
    publish_a_short_run(Console(ConsoleConfig(), tmp_path, {}, None, console=console))
    output = console.file.getvalue()
    assert "2/2" in output and "loss 1.5000" in output and "2,000 tok/s" in output and "ETA" in output
    assert "step 2/2 val loss 2.5000" in output
    assert "resumed from [checkpoints/step_2]" in output  # brackets are text, not rich markup
    assert " train loss " not in output  # train records are on the bar, not printed


def test_a_resumed_run_continues_the_bar_at_its_step(tmp_path):
    console = terminal()
    logger = Console(ConsoleConfig(), tmp_path, {}, 40, console=console)
    logger.consume(ProgressUpdate(41, 50, {"loss": 1.0, "tokens_per_s": 10.0}))
    logger.close()
    output = console.file.getvalue()
    assert "41/50" in output and " 0/50" not in output


def test_a_progress_update_costs_microseconds(tmp_path):
    logger = Console(ConsoleConfig(), tmp_path, {}, None, console=terminal())
    updates = [ProgressUpdate(step, 10_000, {"loss": 1.0, "tokens_per_s": 1e5}) for step in range(1, 10_001)]
    start = time.perf_counter()
    for update in updates:
        logger.consume(update)
    per_update = (time.perf_counter() - start) / len(updates)
    logger.close()
    assert per_update < 200e-6, f"{per_update * 1e6:.1f} µs per progress update"


def test_plain_lines_leave_the_phase_timings_to_the_metrics_file():
    record = MetricsRecord(10, "train", {**TRAIN, "phase_data_s": 0.01, "phase_step_s": 0.2, "slowest_rank": 1})
    assert format_metrics(record) == (
        "step 10 train loss 3.2146 lr 3.000e-04 grad_norm 0.8123 tokens_seen 40,960 tokens_per_s 12,346 slowest_rank 1"
    )
