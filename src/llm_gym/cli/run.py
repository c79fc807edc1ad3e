"""``llm_gym run``: train from one YAML, alone or under torchrun."""

from pathlib import Path

import click

from llm_gym.cli.options import config_file_option, overrides_argument


@click.command()
@config_file_option
@click.option(
    "--resume",
    default="none",
    show_default=True,
    metavar="auto|none|CHECKPOINT_DIR",
    help="auto: continue from checkpoints/latest if there is one; or a checkpoint directory.",
)
@click.option(
    "--allow_config_change",
    is_flag=True,
    help="Resume (or branch, checkpointing.branch_from) even if the config differs from the checkpoint's in ways "
    "that break an exact continuation.",
)
@overrides_argument
def run(config_file_path: Path, resume: str, allow_config_change: bool, overrides: tuple[str, ...]) -> None:
    """Train a model from a YAML config (one process, or every rank under torchrun)."""
    from llm_gym.training.run import run_training

    run_training(config_file_path, overrides, resume, allow_config_change)
