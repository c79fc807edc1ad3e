"""``llm_gym plot``: a PNG from metrics.jsonl, and exit status 2 with no output for bad input."""

import json

import pytest
from click.testing import CliRunner

from llm_gym.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, steps: int = 20) -> None:
    lines = []
    for step in range(1, steps + 1):
        lr = 1e-3 * min(step / 5, 1.0)
        train = {"loss": 5.0 / step**0.5, "lr": lr, "grad_norm": 1.0, "tokens_seen": 128 * step, "tokens_per_s": 900.0}
        lines.append({"step": step, "split": "train", **train})
        if step % 5 == 0:
            lines += [
                {"step": step, "split": "val", "loss": 5.2 / step**0.5},
                {"step": step, "split": "test", "loss": None},
            ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def plot(metrics_path, output_path):
    return CliRunner().invoke(main, ["plot", "--metrics_path", str(metrics_path), "--output_path", str(output_path)])


def test_plot_writes_a_png(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    output_path = tmp_path / "plots" / "curves.png"
    result = plot(tmp_path / "metrics.jsonl", output_path)
    assert result.exit_code == 0, result.output
    assert output_path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in output_path.parent.iterdir()) == ["curves.png"]


def test_eval_lines_alone_still_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "split": "val", "loss": 2.0}\n\n')
    assert plot(tmp_path / "metrics.jsonl", tmp_path / "curves.png").exit_code == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metrics file not found: {path}"),
        ("", "metrics file is empty: {path}"),
        ("\n  \n", "metrics file is empty: {path}"),
        ('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl\n', "{path}:2: not valid JSON"),
        ('{"step": 1, "split": "train"}\n[1, 2]\n', "{path}:2: expected a JSON object, got list"),
        ('{"split": "train", "loss": 2.0}\n', "{path}:1: a metrics record needs an integer 'step'"),
        ('{"step": "1", "split": "train"}\n', "{path}:1: a metrics record needs an integer 'step'"),
        ('{"step": 1, "split": "train", "lr": "high"}\n', "{path}:1: 'lr' must be a number, got 'high'"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(tmp_path, content, message):
    metrics_path = tmp_path / "metrics.jsonl"
    if content is not None:
        metrics_path.write_text(content)
    result = plot(metrics_path, tmp_path / "out" / "curves.png")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message.format(path=metrics_path) in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_several_runs_overlay_with_evaluator_panels(tmp_path):
    for name in ("run_a", "run_b"):
        (tmp_path / name).mkdir()
        write_metrics(tmp_path / name / "metrics.jsonl")
    with (tmp_path / "run_b" / "metrics.jsonl").open("a") as file:
        file.write(json.dumps({"step": 20, "split": "code_lines", "accuracy": 0.4, "accuracy_norm": 0.35}) + "\n")
        file.write(json.dumps({"step": 20, "split": "val", "loss": 1.0, "bits_per_byte": 1.4}) + "\n")
    args = [
        "plot",
        "--metrics_path",
        str(tmp_path / "run_a"),
        "--metrics_path",
        str(tmp_path / "run_b" / "metrics.jsonl"),
    ]
    result = CliRunner().invoke(main, [*args, "--smoothing", "0.9", "--output_path", str(tmp_path / "overlay.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "overlay.png").read_bytes().startswith(PNG_MAGIC)


def test_smoothing_is_a_debiased_moving_average_that_keeps_gaps():
    from llm_gym.logging_broker.plot import smoothed

    assert smoothed([2.0, float("nan"), 4.0], 0.5)[0] == 2.0
    assert smoothed([2.0, float("nan"), 4.0], 0.5)[2] == pytest.approx((0.25 * 2 + 0.5 * 4) / 0.75)
    assert smoothed([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_overlay_labels_are_experiment_names_or_paths_when_they_clash(tmp_path):
    from llm_gym.logging_broker.plot import run_labels

    assert run_labels([tmp_path / "a" / "metrics.jsonl", tmp_path / "b" / "metrics.jsonl"]) == ["a", "b"]
    clash = [tmp_path / "x" / "run", tmp_path / "y" / "run"]
    for path in clash:
        path.mkdir(parents=True)
    assert run_labels(clash) == [str(path) for path in clash]


def test_train_lines_with_phase_timings_get_a_stacked_panel_of_where_the_time_went(tmp_path, monkeypatch):
    from llm_gym.logging_broker import plot as plotting

    lines = [
        {"step": step, "split": "train", "loss": 2.0, "lr": 1e-3, "tokens_per_s": 900.0, "phase_data_s": 0.1,
         "phase_step_s": 0.5, "phase_checkpoint_s": 0.0}
        for step in range(1, 6)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    stacked = []
    original = plotting._stack_phases
    monkeypatch.setattr(
        plotting, "_stack_phases", lambda axis, records, keys: stacked.append(keys) or original(axis, records, keys)
    )
    result = plot(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert stacked == [["phase_checkpoint_s", "phase_data_s", "phase_step_s"]]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
