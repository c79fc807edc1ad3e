"""Options shared by several commands."""

from pathlib import Path

import click

config_file_option = click.option(
    "--config_file_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="YAML config of the experiment.",
)
overrides_argument = click.argument("overrides", nargs=-1, metavar="[dotted.key=value]...")
checkpoint_path_option = click.option(
    "--checkpoint_path",
    type=click.Path(path_type=Path),
    required=True,
    help="A checkpoint directory (step_<N>), or a checkpoints/ or experiment directory to take its latest.",
)
user_modules_option = click.option(
    "--user_modules",
    multiple=True,
    metavar="MODULE",
    help="A module registering components of your own that the model needs (repeatable). A checkpoint's own "
    "user_modules are never imported.",
)
