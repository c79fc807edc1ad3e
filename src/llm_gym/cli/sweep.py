"""``llm_gym sweep``: a grid (or list) of runs of one config, written, run locally or as a SLURM array."""

from pathlib import Path

import click

from llm_gym.cli.options import config_file_option, overrides_argument


@click.command()
@config_file_option
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="A key and its values; the sweep runs every combination of all --grid keys. Repeatable.",
)
@click.option(
    "--point",
    "points",
    multiple=True,
    metavar="'KEY=V KEY2=V2'",
    help="An explicit point (space-separated overrides), combined with the grid if there is one. Repeatable.",
)
@click.option(
    "--output_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where each point's experiment directory goes, named by its values.",
)
@click.option(
    "--run",
    "launch",
    type=click.Choice(["local", "slurm"]),
    default=None,
    help="local: run the points one after another here; slurm: write a SLURM array script. "
    "Without it: only write the configs.",
)
@click.option(
    "--nproc_per_node",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With --run local: ranks per run (torchrun when more than 1).",
)
@overrides_argument
def sweep(
    config_file_path: Path,
    grid: tuple[str, ...],
    points: tuple[str, ...],
    output_dir: Path,
    launch: str | None,
    nproc_per_node: int,
    overrides: tuple[str, ...],
) -> None:
    """Sweep a config over a grid of values: one validated config and experiment directory per point."""
    from llm_gym.training.sweep import PLAN_FILE, plan_sweep, run_locally, write_slurm_script

    plan = plan_sweep(config_file_path, grid, points, output_dir, overrides)
    for point in plan.points:
        click.echo(f"{point.output_dir}: {' '.join(point.overrides)}")
    click.echo(f"wrote {len(plan.points)} configs and {output_dir / PLAN_FILE}")
    if launch == "slurm":
        click.echo(f"wrote {write_slurm_script(plan, Path.cwd())}: submit it with sbatch")
    elif launch == "local":
        run_locally(plan, nproc_per_node, echo=click.echo)
        click.echo(f"compare them: llm_gym compare {' '.join(f'--metrics_path {p.output_dir}' for p in plan.points)}")
