"""``llm_gym plot``: training curves from a metrics file."""

from pathlib import Path

import click


@click.command()
@click.option("--metrics_path", type=click.Path(path_type=Path), required=True, help="metrics.jsonl of an experiment.")
@click.option("--output_path", type=click.Path(path_type=Path, dir_okay=False), required=True, help="PNG to write.")
def plot(metrics_path: Path, output_path: Path) -> None:
    """Plot loss per split, learning rate and tokens/s against the step into a PNG."""
    from llm_gym.logging_broker.plot import plot_metrics

    plot_metrics(metrics_path, output_path)
    click.echo(f"wrote {output_path}")
