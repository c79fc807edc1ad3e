"""Several tokenized corpora named at once: lists and glob patterns of prefixes, and the shards of a tokenize job.

A glob pattern of prefixes matches ``PATTERN.idx`` files, relative to the working directory like every other
path, and its matches are read in sorted order (Python's string order: name shards with zero-padded numbers,
as ``tokenize --num_shards`` does). A pattern that matches nothing, or matches some but not all shards of one
sharded tokenize run, is refused: a cluster job whose task failed must not train on a silently smaller corpus
(a subset is named shard by shard).
"""

import glob
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from llm_gym.data.indexed import checked_prefix
from llm_gym.errors import UserError

_GLOB_CHARACTERS = re.compile(r"[*?[]")
_SHARD_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5,})-of-(?P<count>\d{5,})$")


def shard_prefix(prefix: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """``PREFIX-00003-of-00064``: zero-padded, so the shards of a run sort in order."""
    width = max(5, len(str(num_shards)))
    return Path(f"{checked_prefix(prefix)}-{shard_index:0{width}d}-of-{num_shards:0{width}d}")


def resolve_prefixes(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Prefixes in the order given, each glob pattern replaced by its matches, sorted.

    ``PREFIX.bin`` or ``PREFIX.idx`` names ``PREFIX``, so a shell glob that matches both files of a pair gives
    the prefix once. Any other prefix named twice is refused.
    """
    if not patterns:
        raise UserError("no tokenized corpus given")
    prefixes: list[Path] = []
    previous_entry = None
    for entry in map(os.fspath, patterns):
        prefix = entry[: -len(".idx")] if entry.endswith((".bin", ".idx")) else entry
        if previous_entry is not None and {entry, previous_entry} == {f"{prefix}.bin", f"{prefix}.idx"}:
            previous_entry = None  # the other file of the pair just named
            continue
        previous_entry = entry
        if _GLOB_CHARACTERS.search(prefix):
            matches = sorted(match[: -len(".idx")] for match in glob.glob(f"{prefix}.idx"))
            if not matches:
                raise UserError(f"no tokenized corpus matches {prefix!r} (no file matches {prefix}.idx)")
            _check_whole_shard_sets(prefix, matches)
            prefixes.extend(Path(match) for match in matches)
        else:
            prefixes.append(Path(checked_prefix(prefix)))
    seen: set[Path] = set()
    for prefix in prefixes:
        if prefix.absolute() in seen:
            raise UserError(f"{prefix} is named twice; each corpus is read once")
        seen.add(prefix.absolute())
    return prefixes


def _check_whole_shard_sets(pattern: str, matches: list[str]) -> None:
    shards: dict[tuple[str, str], set[int]] = defaultdict(set)
    for match in matches:
        if name := _SHARD_NAME.match(match):
            shards[name["stem"], name["count"]].add(int(name["index"]))
    for (stem, count), indices in shards.items():
        missing = sorted(set(range(int(count))) - indices)
        if missing:
            listed = ", ".join(str(index) for index in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise UserError(
                f"{pattern!r} matches {len(indices)} of the {int(count)} shards of {stem}: shard {listed} missing "
                "(a tokenize task that failed or has not finished? To read a subset, name the shards one by one)"
            )
