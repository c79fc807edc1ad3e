"""The click group class of ``llm_gym`` and each of its sub-groups (``llm_gym data``)."""

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click

from llm_gym.errors import RankLocalError, RunStopped, UserError

DEBUG_ENV = "LLM_GYM_DEBUG"


def _exit_with_message(message: str, same_on_every_rank: bool) -> NoReturn:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()
    rank = int(os.environ.get("RANK", 0))
    # Under torchrun most problems (the config, a checkpoint) are met alike on every rank, and rank 0 says them
    # once. One rank's own problem (its batch, its disk) must be said by that rank, or nobody will.
    if rank == 0:
        click.echo(f"error: {message}", err=True)
    elif not same_on_every_rank:
        click.echo(f"error (rank {rank}): {message}", err=True)
    sys.exit(2)


def _file_error_message(error: OSError) -> str:
    reason = error.strerror or str(error)
    if isinstance(error, FileExistsError) and not Path(error.filename).is_dir():
        reason = "it exists and is not a directory"  # mkdir(exist_ok=True) met a file
    paths = f"{error.filename} or {error.filename2}" if error.filename2 else error.filename
    return f"cannot use {paths}: {reason}"


class CommandGroup(click.Group):
    """Turns user errors into one line on stderr and exit status 2, a run stopped before its end into its own
    status (``RunStopped``); internal errors exit 1.

    A failed file operation on a named path (a missing directory, a file where a directory should be, no
    permission, a full disk) is the user's to fix too, whichever command met it.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            _exit_with_message(str(error), same_on_every_rank=not isinstance(error, RankLocalError))
        except RunStopped as stop:
            if int(os.environ.get("RANK", 0)) == 0:
                click.echo(f"stopped: {stop}", err=True)
            sys.exit(stop.exit_status)
        except OSError as error:
            if error.filename is None:
                raise
            _exit_with_message(_file_error_message(error), same_on_every_rank=False)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each purpose to fit one terminal line ("..."); show the whole first sentence, wrapped.
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=200)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
