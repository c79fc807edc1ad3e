"""``llm_gym compare``: final and best evaluation loss, tokens and training time, one line per run."""

from pathlib import Path

import click

from llm_gym.cli.plot import metrics_path_option


@click.command()
@metrics_path_option
@click.option("--split", default="val", show_default=True, help="The evaluation split whose loss is compared.")
def compare(metrics_paths: tuple[Path, ...], split: str) -> None:
    """Compare runs: final and best loss of an evaluation split, tokens and training time, one line per run."""
    from llm_gym.logging_broker.run_summary import comparison_lines, summarize_runs

    for line in comparison_lines(summarize_runs(list(metrics_paths), split), split):
        click.echo(line)
