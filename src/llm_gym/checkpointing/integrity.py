"""Size and CRC32 of every shard file, recorded at save and checked before a load.

DCP itself does not notice flipped bytes inside tensor data (nor does ``torch.load``), so a damaged
checkpoint would load silently. The work is split across ranks: each hashes every world-size-th file.
"""

import zlib
from pathlib import Path

from llm_gym.parallel import collectives

_CHUNK = 16 * 1024 * 1024


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_fingerprints(directory: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """``{name: {"bytes": size, "crc32": checksum}}`` for ``names`` in ``directory``, computed across ranks."""
    return gather_fingerprints(this_ranks_fingerprints(directory, names))


def this_ranks_fingerprints(directory: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """This rank's share of ``file_fingerprints`` (every world-size-th file); no collective, so a background
    thread may compute it."""
    mine = sorted(names)[collectives.rank() :: collectives.world_size()]
    return {name: {"bytes": (directory / name).stat().st_size, "crc32": _crc32(directory / name)} for name in mine}


def gather_fingerprints(mine: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: value for part in collectives.all_gather_objects(mine) for name, value in part.items()}


def fingerprint_problems(directory: Path, expected: dict[str, dict[str, int]]) -> list[str]:
    """What is wrong with the files in ``directory`` against ``expected``; the same list on every rank."""
    names = sorted(expected)
    problems = []
    for name in names:
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected[name]["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {expected[name]['bytes']} (truncated?)")
    if not problems:
        mine = names[collectives.rank() :: collectives.world_size()]
        problems = [
            f"{name} fails its checksum" for name in mine if _crc32(directory / name) != expected[name]["crc32"]
        ]
    return sorted({problem for part in collectives.all_gather_objects(problems) for problem in part})
