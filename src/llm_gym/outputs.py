"""Where commands write: never over what they read or what the user keeps, and a failed write said in one line."""

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_gym.errors import UserError


def _resolved(path: str | os.PathLike) -> Path:
    # Symlinks are followed, also for an output that does not exist yet (its existing parents are).
    return Path(path).resolve()


def is_same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """One file under two names: the same path once symlinks are resolved, or hard links to one inode."""
    if _resolved(first) == _resolved(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist
        return False


def overlap(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """One path is, contains or lies inside the other, symlinks resolved."""
    first, second = _resolved(first), _resolved(second)
    return first == second or first.is_relative_to(second) or second.is_relative_to(first)


def refuse_writing_over_inputs(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike], option: str) -> None:
    """An output that is one of the command's inputs would replace the data it is made from, even with --force."""
    inputs = list(inputs)
    for output in outputs:
        for source in inputs:
            if is_same_file(output, source):
                raise UserError(
                    f"{output} is also an input of this command ({source}): writing it would destroy that input; "
                    f"choose another {option}"
                )


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """A write that fails (a full disk, a read-only file system, a quota) as one line naming ``path`` and the cause.

    A failed ``write()`` raises an ``OSError`` without a file name, which would otherwise say nothing of where.
    """
    try:
        yield
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from error
