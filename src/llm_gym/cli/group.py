"""The click group class of ``llm_gym`` and each of its sub-groups (``llm_gym data``)."""

import os
import sys
import traceback

import click

from llm_gym.errors import UserError

DEBUG_ENV = "LLM_GYM_DEBUG"


class CommandGroup(click.Group):
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
