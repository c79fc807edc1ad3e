"""A real corpus with no download: the Python standard library's own source files on this machine.

One document per ``.py`` file; tests, third-party packages and caches are left out. The split is by a
hash of each file's path relative to the library root, so it does not depend on which files exist.
"""

import contextlib
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from llm_gym.errors import UserError
from llm_gym.outputs import writing

SPLITS = ("train", "val", "test")
# Out of 100 buckets of the path hash: train below 90, val below 95, test the rest.
_SPLIT_BOUNDS = ((90, "train"), (95, "val"), (100, "test"))
_EXCLUDED_DIRECTORIES = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclass
class DemoCorpusSummary:
    source: Path
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    characters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: int = 0
    """Files that are empty or not UTF-8."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "little") % 100
    return next(split for bound, split in _SPLIT_BOUNDS if bucket < bound)


def source_files(root: Path) -> list[Path]:
    """The library's ``.py`` files, sorted by relative path, skipping excluded directories."""
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in _EXCLUDED_DIRECTORIES]
        files.extend(Path(directory, name) for name in names if name.endswith(".py"))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def write_demo_corpus(output_dir: Path, force: bool = False, root: Path | None = None) -> DemoCorpusSummary:
    """Write ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` (``{"text": ..., "path": ...}`` a line)."""
    root = root or stdlib_root()
    outputs = {split: output_dir / f"{split}.jsonl" for split in SPLITS}
    existing = [path for path in outputs.values() if path.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to overwrite it")
    files = source_files(root)
    if not files:
        raise UserError(f"no Python source files under {root}")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = DemoCorpusSummary(root)
    partial = {split: path.with_name(path.name + ".incomplete") for split, path in outputs.items()}
    handles = {split: open(path, "w", encoding="utf-8") for split, path in partial.items()}  # noqa: SIM115
    try:
        with writing(output_dir):
            for path in files:
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    text = ""
                if not text.strip():
                    summary.skipped += 1
                    continue
                relative = path.relative_to(root).as_posix()
                split = split_of(relative)
                handles[split].write(json.dumps({"text": text, "path": relative}, ensure_ascii=False) + "\n")
                summary.documents[split] += 1
                summary.characters[split] += len(text)
            for handle in handles.values():
                handle.close()  # flushes: a full disk can show here
    except BaseException:
        for split, handle in handles.items():
            with contextlib.suppress(OSError):  # flushing fails again on a full disk; the file goes anyway
                handle.close()
            partial[split].unlink(missing_ok=True)
        raise
    for split in SPLITS:
        os.replace(partial[split], outputs[split])
    return summary
