"""The ``llm_gym`` command line: one click group, every command a thin shell over the library."""

import os
import sys
import traceback

import click

from llm_gym.errors import UserError

DEBUG_ENV = "LLM_GYM_DEBUG"


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit status 2; internal errors exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            # Under torchrun every rank fails the same way; one message is enough.
            if int(os.environ.get("RANK", 0)) == 0:
                click.echo(f"error: {error}", err=True)
            sys.exit(2)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each purpose to fit one terminal line ("..."); show the whole first sentence, wrapped.
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=200)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help=f"Show tracebacks for user errors too (or set {DEBUG_ENV}=1).")
@click.version_option(package_name="llm_gym")
def main(debug: bool) -> None:
    """llm_gym: distributed, reproducible pretraining of GPT-style language models from one YAML file."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _register_commands() -> None:
    from llm_gym.cli.config_commands import validate
    from llm_gym.cli.data import data
    from llm_gym.cli.export import export_hf
    from llm_gym.cli.generate import generate
    from llm_gym.cli.plot import plot
    from llm_gym.cli.run import run

    main.add_command(run, name="run")
    main.add_command(validate, name="validate")
    main.add_command(plot, name="plot")
    main.add_command(data, name="data")
    main.add_command(generate, name="generate")
    main.add_command(export_hf, name="export_hf")


_register_commands()
