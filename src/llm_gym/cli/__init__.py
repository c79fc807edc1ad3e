"""The ``llm_gym`` command line: one click group, every command a thin shell over the library."""

import os

import click

from llm_gym.cli.group import DEBUG_ENV, CommandGroup
from llm_gym.cli.launcher import exit_with_launcher


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help=f"Show tracebacks for user errors too (or set {DEBUG_ENV}=1).")
@click.version_option(package_name="llm_gym")
def main(debug: bool) -> None:
    """llm_gym: distributed, reproducible pretraining of GPT-style language models from one YAML file."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    exit_with_launcher()


def _register_commands() -> None:
    from llm_gym.cli.compare import compare
    from llm_gym.cli.config_commands import validate
    from llm_gym.cli.data import data
    from llm_gym.cli.evaluate import evaluate
    from llm_gym.cli.export import export_hf
    from llm_gym.cli.generate import generate
    from llm_gym.cli.import_hf import import_hf
    from llm_gym.cli.plot import plot
    from llm_gym.cli.run import run
    from llm_gym.cli.sweep import sweep

    main.add_command(run, name="run")
    main.add_command(validate, name="validate")
    main.add_command(plot, name="plot")
    main.add_command(data, name="data")
    main.add_command(generate, name="generate")
    main.add_command(export_hf, name="export_hf")
    main.add_command(evaluate, name="evaluate")
    main.add_command(import_hf, name="import_hf")
    main.add_command(compare, name="compare")
    main.add_command(sweep, name="sweep")


_register_commands()
