"""``llm_gym validate``: everything a run does before its first step, and a summary of the result."""

import contextlib
import os
from collections.abc import Iterator
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
@click.option(
    "--show_origins",
    is_flag=True,
    help="Also print which file (or the command line, or the schema's defaults) set each key: per top-level "
    "key, or per key below it where files share a section.",
)
@overrides_argument
def validate(config_file_path: Path, world_size: int | None, show_origins: bool, overrides: tuple[str, ...]) -> None:
    """Compose, load, validate and build a config without training; print it resolved, with model figures."""
    from llm_gym.assembly import make_registry
    from llm_gym.config.app import TrainingAppConfig
    from llm_gym.config.loading import load_config_with_origins
    from llm_gym.training.summary import describe_config

    world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    # ${dist:world_size} resolves as it would on that many ranks; the variable is restored afterwards.
    with _environment(WORLD_SIZE=str(world_size)):
        registry = make_registry()
        config, resolved, origins = load_config_with_origins(
            config_file_path, TrainingAppConfig, overrides, registry=registry
        )
        # Built in full before anything is printed: a config that fails prints its error alone.
        summary = list(describe_config(config, world_size, registry))
        click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
        click.echo("---")
        for line in summary:
            click.echo(line)
        if show_origins:
            click.echo("---\nwhere each key was set (by the last layer to set it):")
            for line in origins.lines(resolved):
                click.echo(f"  {line}")


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
