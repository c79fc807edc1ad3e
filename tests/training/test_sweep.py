"""``llm_gym sweep``: point names, grid × points, configs only, the SLURM script, local runs compared and overlaid."""

import json
import shlex

import pytest
import yaml
from click.testing import CliRunner

from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides, write_byte_corpus
from llm_gym.cli import main
from llm_gym.errors import UserError
from llm_gym.training.sweep import split_values, sweep_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_points_are_named_by_their_values(tmp_path):
    grid = [("optimizer.config.lr", ["1e-3", "3e-3"]), ("model.config.n_layer", ["2", "4"])]
    points = sweep_points(grid, [], tmp_path)
    assert [point.name for point in points] == [
        "lr=1e-3,n_layer=2", "lr=1e-3,n_layer=4", "lr=3e-3,n_layer=2", "lr=3e-3,n_layer=4",
    ]  # fmt: skip
    assert points[1].overrides == ("optimizer.config.lr=1e-3", "model.config.n_layer=4")
    assert points[1].output_dir == tmp_path / "lr=1e-3,n_layer=4"


def test_keys_with_the_same_last_part_keep_enough_of_their_names(tmp_path):
    grid = [
        ("model.config.dropout", ["0.0", "0.1"]),
        ("other.dropout", ["0.5"]),
        ("optimizer.config.betas", ["[0.9,0.95]"]),
    ]
    names = [point.name for point in sweep_points(grid, [], tmp_path)]
    assert names == [
        "config.dropout=0.0,other.dropout=0.5,betas=0.9_0.95",
        "config.dropout=0.1,other.dropout=0.5,betas=0.9_0.95",
    ]


def test_explicit_points_combine_with_the_grid(tmp_path):
    points = sweep_points(
        [("experiment.seed", ["1", "2"])],
        [[("optimizer.config.lr", "0.01")], [("optimizer.config.lr", "0.1")]],
        tmp_path,
    )
    assert [point.name for point in points] == ["lr=0.01,seed=1", "lr=0.01,seed=2", "lr=0.1,seed=1", "lr=0.1,seed=2"]
    assert [point.name for point in sweep_points([], [[("a.b", "x"), ("c", "y")]], tmp_path)] == ["b=x,c=y"]


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert split_values("1,[0.9,0.95],{a: 1, b: 2},'x,y'") == ["1", "[0.9,0.95]", "{a: 1, b: 2}", "'x,y'"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "training.max_steps=5,5"], "distinct, non-empty values"),
        (["--grid", "max_steps"], "--grid max_steps: expected dotted.key=value"),
        (["--grid", "experiment.output_dir=a,b"], "the sweep sets experiment.output_dir of each point"),
        (["--point", "training.max_steps=5 training.max_steps=6"], "sets a key twice"),
        (["--grid", "training.max_steps=1,2", "--grid", "training.max_steps=3"], "a --grid key is given twice"),
        (["--grid", "training.max_steps=10,x"], r"sweep point max_steps=x: invalid config"),
        ([], "a sweep needs --grid"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_is_written(args, message, tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--config_file_path", str(TINY_CONFIG), *args,
                                       "--output_dir", str(tmp_path / "sweep")])  # fmt: skip
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "sweep").exists()


def _sweep(tmp_path, *args):
    grid = ["--grid", "optimizer.config.lr=0.001,0.003", "--grid", "model.config.n_layer=1,2"]
    output = ["--output_dir", str(tmp_path / "sweep")]
    result = CliRunner().invoke(
        main, ["sweep", "--config_file_path", str(TINY_CONFIG), *grid, *output, *args, "training.max_steps=7"]
    )
    assert result.exit_code == 0, result.output
    return result


def test_without_run_only_the_configs_are_written(tmp_path):
    _sweep(tmp_path)
    sweep = tmp_path / "sweep"
    assert sorted(path.name for path in sweep.iterdir()) == [
        "lr=0.001,n_layer=1", "lr=0.001,n_layer=2", "lr=0.003,n_layer=1", "lr=0.003,n_layer=2", "sweep.json",
    ]  # fmt: skip
    config = yaml.safe_load((sweep / "lr=0.003,n_layer=2" / "config.yaml").read_text())
    assert config["optimizer"]["config"]["lr"] == 0.003 and config["model"]["config"]["n_layer"] == 2
    assert config["training"]["max_steps"] == 7 and config["experiment"]["output_dir"] == str(
        sweep / "lr=0.003,n_layer=2"
    )
    assert sorted(path.name for path in (sweep / "lr=0.003,n_layer=2").iterdir()) == ["config.yaml"]
    plan = json.loads((sweep / "sweep.json").read_text())
    assert plan["overrides"] == ["training.max_steps=7"] and len(plan["points"]) == 4


def test_the_slurm_script_runs_one_point_per_array_task(tmp_path):
    result = _sweep(tmp_path, "--run", "slurm")
    script = (tmp_path / "sweep" / "sweep.sbatch").read_text()
    assert "sweep.sbatch: submit it with sbatch" in result.output
    assert script.startswith("#!/bin/bash\n") and "#SBATCH --array=0-3\n" in script
    assert "set -euo pipefail\n" in script and "cd " in script
    point = shlex.join(["optimizer.config.lr=0.003", "model.config.n_layer=1",
                        f"experiment.output_dir={tmp_path / 'sweep' / 'lr=0.003,n_layer=1'}"])  # fmt: skip
    assert f"  2) POINT=({point}) ;;\n" in script
    run_line = next(line for line in script.splitlines() if line.startswith("srun torchrun"))
    assert run_line == (
        'srun torchrun --standalone --nproc_per_node "$GPUS_PER_NODE" -m llm_gym run --config_file_path '
        f'{TINY_CONFIG} --resume auto training.max_steps=7 "${{POINT[@]}}"'
    )
    assert f"#SBATCH --output={tmp_path / 'sweep' / 'slurm-%A_%a.out'}" in script


@pytest.mark.slow
def test_local_runs_then_compare_and_an_overlay_plot(tmp_path):
    corpus = write_byte_corpus(tmp_path)
    common = [item for item in tiny_overrides(corpus, tmp_path / "unused", **{"training.max_steps": 2,
              "training.eval_interval": 2, "checkpointing.every_n_steps": 0, "lr_scheduler.config.warmup_steps": 1,
              "model.config.n_layer": 1}) if not item.startswith("experiment.output_dir")]  # fmt: skip
    llm_gym("sweep", "--config_file_path", str(TINY_CONFIG), "--grid", "optimizer.config.lr=0.001,0.01",
            "--output_dir", str(tmp_path / "sweep"), "--run", "local", *common)  # fmt: skip
    runs = [tmp_path / "sweep" / "lr=0.001", tmp_path / "sweep" / "lr=0.01"]
    for run in runs:
        assert [line["step"] for line in read_metrics(run / "metrics.jsonl") if line["split"] == "val"] == [2]
        assert (run / "checkpoints" / "latest").is_file()
    comparison = llm_gym("compare", *(arg for run in runs for arg in ("--metrics_path", str(run)))).stdout
    header, *rows = comparison.splitlines()
    assert header.split()[:4] == ["run", "steps", "final", "val"] and [row.split()[0] for row in rows] == [
        "lr=0.001",
        "lr=0.01",
    ]
    assert all(" @ 2" in row and row.split()[-1] == "s" for row in rows)
    llm_gym("plot", "--metrics_path", str(runs[0]), "--metrics_path", str(runs[1] / "metrics.jsonl"),
            "--smoothing", "0.5", "--output_path", str(tmp_path / "overlay.png"))  # fmt: skip
    assert (tmp_path / "overlay.png").read_bytes().startswith(PNG_MAGIC)


def test_sweep_points_are_unique(tmp_path):
    with pytest.raises(UserError, match="both named lr=1e-3"):
        sweep_points([], [[("optimizer.config.lr", "1e-3")], [("optimizer.config.lr", "1e-3")]], tmp_path)
