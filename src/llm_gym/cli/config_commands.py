"""``llm_gym validate``: everything a run does before its first step, and a summary of the result."""

import os
from pathlib import Path

import click
import yaml

from llm_gym.cli.options import config_file_option, overrides_argument


@click.command()
@config_file_option
@click.option(
    "--world_size",
    type=click.IntRange(min=1),
    default=None,
    help="Check batch sizes as if launched on this many ranks (default: $WORLD_SIZE or 1).",
)
@overrides_argument
def validate(config_file_path: Path, world_size: int | None, overrides: tuple[str, ...]) -> None:
    """Load, validate and build a config without training; print it resolved, with model figures."""
    from llm_gym.config.app import TrainingAppConfig
    from llm_gym.config.loading import load_config
    from llm_gym.training.summary import describe_config

    if world_size is not None:
        os.environ["WORLD_SIZE"] = str(world_size)
    config, resolved = load_config(config_file_path, TrainingAppConfig, overrides)
    click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    click.echo("---")
    for line in describe_config(config, int(os.environ.get("WORLD_SIZE", 1))):
        click.echo(line)
