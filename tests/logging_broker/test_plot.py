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
