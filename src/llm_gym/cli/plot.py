"""``llm_gym plot``: training curves from metrics files, one run or several overlaid."""

from pathlib import Path

import click

metrics_path_option = click.option(
    "--metrics_path",
    "metrics_paths",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="metrics.jsonl of an experiment, or the experiment directory; repeat it to compare runs.",
)


@click.command()
@metrics_path_option
@click.option("--output_path", type=click.Path(path_type=Path, dir_okay=False), required=True, help="PNG to write.")
@click.option(
    "--smoothing",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.0,
    show_default=True,
    help="Exponential moving average weight for the train curves (0.9 is smooth).",
)
def plot(metrics_paths: tuple[Path, ...], output_path: Path, smoothing: float) -> None:
    """Plot loss per split, learning rate, tokens/s (and bits per byte, task accuracy) against the step into a PNG."""
    from llm_gym.logging_broker.plot import plot_metrics

    plot_metrics(list(metrics_paths), output_path, smoothing)
    click.echo(f"wrote {output_path}")
