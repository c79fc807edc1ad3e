"""Errors the user can act on. The CLI turns them into one line on stderr and exit status 2; and a run's stop
before its end (``RunStopped``), with the exit status it names."""


class UserError(Exception):
    """A problem the user can fix: a bad config, a missing or malformed input, a refused overwrite."""


class ConfigError(UserError):
    """The configuration cannot be loaded, resolved or validated."""


class RankLocalError(UserError):
    """A problem one rank may meet alone, in its own batch or on its own disk: whichever rank meets it says so."""


class MissingInputError(UserError):
    """An input file that is not on this machine; ``validate`` checks what it can without it."""


class RunStopped(Exception):
    """The run stopped before its end for a reason outside it (preemption) with its state saved: the CLI says
    why on stderr and exits with ``exit_status``, which a job script requeues on."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status
