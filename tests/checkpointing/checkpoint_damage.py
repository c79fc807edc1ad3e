"""Ways to damage a checkpoint directory on disk, for the tests of what loading refuses."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def shard(checkpoint: Path) -> Path:
    """The largest DCP shard file."""
    return max(checkpoint.glob("*.distcp"), key=lambda path: path.stat().st_size)


def flip_byte_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_meta(checkpoint: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Change ``llm_gym_meta.json`` in place with ``edit(meta)``."""
    path = checkpoint / "llm_gym_meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
