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
@click.option(
    "--suggest_layout",
    is_flag=True,
    help="Also list the layouts (tp, cp, pp, data-parallel, HSDP split) of --world_size ranks that fit "
    "--device_memory_gib, fewest bytes sent per step first (docs/parallelism.md, Choosing a layout).",
)
@click.option(
    "--ranks_per_node", type=click.IntRange(min=1), default=None, help="With --suggest_layout: ranks (GPUs) per node."
)
@click.option(
    "--device_memory_gib",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="With --suggest_layout: memory per device.",
)
@overrides_argument
def validate(
    config_file_path: Path,
    world_size: int | None,
    show_origins: bool,
    suggest_layout: bool,
    ranks_per_node: int | None,
    device_memory_gib: float | None,
    overrides: tuple[str, ...],
) -> None:
    """Compose, load, validate and build a config without training; print it resolved, with model figures."""
    from llm_gym.assembly import make_registry
    from llm_gym.config.app import TrainingAppConfig
    from llm_gym.config.loading import load_config_with_origins
    from llm_gym.training.layout_suggestion import suggest_layouts
    from llm_gym.training.summary import describe_config

    if suggest_layout != (ranks_per_node is not None and device_memory_gib is not None):
        raise click.UsageError("--suggest_layout takes --ranks_per_node and --device_memory_gib, both")
    world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    # ${dist:world_size} resolves as it would on that many ranks; the variable is restored afterwards.
    with _environment(WORLD_SIZE=str(world_size)):
        registry = make_registry()
        config, resolved, origins = load_config_with_origins(
            config_file_path, TrainingAppConfig, overrides, registry=registry
        )
        # Built in full before anything is printed: a config that fails prints its error alone.
        summary = list(describe_config(config, world_size, registry))
        if suggest_layout:
            summary += [
                "---",
                *suggest_layouts(
                    config_file_path, overrides, config, world_size, ranks_per_node, device_memory_gib, registry
                ),
            ]
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
