"""``llm_gym sweep``: one run per point of a grid (or of a list of points), each in its own experiment directory.

A point is a list of ``key=value`` overrides. ``--grid key=v1,v2`` takes the cartesian product of its values
with every other grid key; ``--point "k=v k2=v2"`` adds an explicit point, and with both, every point is
combined with the whole grid. Each point's directory is named by its values (``lr=0.001,n_layer=4``: each
key by the shortest tail of its dotted name that tells it from the sweep's other keys). Every point's config is
loaded and validated before anything runs or is written, and written resolved to ``<dir>/config.yaml``; the
plan goes to ``sweep.json``. Runs start with ``--resume auto``, so a sweep launched again continues its
unfinished runs and a requeued SLURM task its own.
"""

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError, UserError

OUTPUT_DIR_KEY = "experiment.output_dir"
PLAN_FILE = "sweep.json"
SLURM_SCRIPT = "sweep.sbatch"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class SweepPoint:
    name: str
    overrides: tuple[str, ...]
    """The point's own ``key=value`` overrides, in the order given."""
    output_dir: Path


@dataclass(frozen=True)
class SweepPlan:
    config_file_path: Path
    overrides: tuple[str, ...]
    """Overrides of every point, applied before the point's own."""
    points: tuple[SweepPoint, ...]
    output_dir: Path

    def run_arguments(self, point: SweepPoint) -> list[str]:
        """``llm_gym`` arguments that run the point."""
        return [
            "run", "--config_file_path", str(self.config_file_path), "--resume", "auto", *self.overrides,
            *point.overrides, f"{OUTPUT_DIR_KEY}={point.output_dir}",
        ]  # fmt: skip


def split_values(text: str) -> list[str]:
    """``a,[1,2],'x,y'`` → ``a``, ``[1,2]``, ``'x,y'``: commas inside brackets, braces or quotes stay."""
    values, current, depth, quote = [], "", 0, ""
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
        elif character == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += character
    return [*values, current]


def _assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or key.startswith("~") or any(not part for part in key.split(".")):
        raise UserError(f"{option} {text}: expected dotted.key=value")
    if key == OUTPUT_DIR_KEY:
        raise UserError(f"{option} {text}: the sweep sets {OUTPUT_DIR_KEY} of each point (under --output_dir)")
    return key, value


def parse_grid(text: str) -> tuple[str, list[str]]:
    key, values = _assignment(text, "--grid")
    split = split_values(values)
    if any(not value for value in split) or len(set(split)) != len(split):
        raise UserError(f"--grid {text}: expected distinct, non-empty values separated by commas")
    return key, split


def parse_point(text: str) -> list[tuple[str, str]]:
    try:
        assignments = [_assignment(part, "--point") for part in shlex.split(text)]
    except ValueError as error:
        raise UserError(f"--point {text}: {error}") from None
    if not assignments:
        raise UserError("--point needs at least one key=value")
    return assignments


def _key_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each key by the shortest tail of its dotted name that no other key ends in."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for length in range(1, len(parts) + 1):
            label = ".".join(parts[-length:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def sweep_points(
    grid: Sequence[tuple[str, list[str]]], points: Sequence[list[tuple[str, str]]], output_dir: Path
) -> list[SweepPoint]:
    if not grid and not points:
        raise UserError("a sweep needs --grid key=v1,v2 or --point 'key=value ...'")
    if len({key for key, _ in grid}) != len(grid):
        raise UserError("a --grid key is given twice: list all its values in one --grid")
    combinations = [list(zip([key for key, _ in grid], values, strict=True)) for values in
                    itertools.product(*(values for _, values in grid))]  # fmt: skip
    assignments = [[*point, *combination] for point in (points or [[]]) for combination in combinations]
    labels = _key_labels(list(dict.fromkeys(key for assignment in assignments for key, _ in assignment)))
    result, names = [], set()
    for assignment in assignments:
        if len({key for key, _ in assignment}) != len(assignment):
            raise UserError(f"a sweep point sets a key twice: {' '.join(f'{k}={v}' for k, v in assignment)}")
        name = ",".join(f"{labels[key]}={_UNSAFE.sub('_', value).strip('_') or '_'}" for key, value in assignment)
        if name in names:
            raise UserError(f"two sweep points are both named {name}: make their values differ")
        names.add(name)
        result.append(SweepPoint(name, tuple(f"{key}={value}" for key, value in assignment), output_dir / name))
    return result


def plan_sweep(
    config_file_path: Path,
    grid: Sequence[str],
    points: Sequence[str],
    output_dir: Path,
    overrides: Sequence[str] = (),
) -> SweepPlan:
    """Validate every point's config, then write each resolved config and ``sweep.json``; nothing runs."""
    for override in overrides:
        if override.partition("=")[0] == OUTPUT_DIR_KEY:
            raise UserError(f"{override}: the sweep sets {OUTPUT_DIR_KEY} of each point (under --output_dir)")
    plan = SweepPlan(
        Path(config_file_path),
        tuple(overrides),
        tuple(sweep_points([parse_grid(text) for text in grid], [parse_point(text) for text in points], output_dir)),
        output_dir,
    )
    resolved_configs = []
    registry = make_registry()
    for point in plan.points:
        try:
            _, resolved = load_config(
                plan.config_file_path,
                TrainingAppConfig,
                [*plan.overrides, *point.overrides, f"{OUTPUT_DIR_KEY}={point.output_dir}"],
                registry=registry,
            )
        except ConfigError as error:
            raise ConfigError(f"sweep point {point.name}: {error}") from None
        resolved_configs.append(resolved)
    for point, resolved in zip(plan.points, resolved_configs, strict=True):
        point.output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(point.output_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    described = {
        "config_file_path": str(plan.config_file_path.resolve()),
        "overrides": list(plan.overrides),
        "points": [
            {"name": point.name, "overrides": list(point.overrides), "output_dir": str(point.output_dir)}
            for point in plan.points
        ],
    }
    _write_atomically(output_dir / PLAN_FILE, json.dumps(described, indent=2) + "\n")
    return plan


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def local_command(plan: SweepPlan, point: SweepPoint, nproc_per_node: int) -> list[str]:
    launcher = [sys.executable]
    if nproc_per_node > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    return [*launcher, "-m", "llm_gym", *plan.run_arguments(point)]


def run_locally(plan: SweepPlan, nproc_per_node: int = 1, echo=print) -> None:
    """Run the points one after another; one that fails does not stop the others, and is named at the end."""
    failed = []
    for index, point in enumerate(plan.points, start=1):
        echo(f"sweep run {index}/{len(plan.points)}: {point.name}")
        status = subprocess.run(local_command(plan, point, nproc_per_node), check=False).returncode
        if status != 0:
            failed.append(f"{point.name} (exit {status})")
    if failed:
        raise UserError(f"{len(failed)} of {len(plan.points)} sweep runs failed: {', '.join(failed)}")


def slurm_script(plan: SweepPlan, working_dir: Path) -> str:
    """A SLURM array job: task ``i`` runs point ``i`` with torchrun on one node, from ``working_dir``."""
    cases = "\n".join(
        f"  {index}) POINT=({shlex.join([*point.overrides, f'{OUTPUT_DIR_KEY}={point.output_dir}'])}) ;;"
        for index, point in enumerate(plan.points)
    )
    common = shlex.join(["--config_file_path", str(plan.config_file_path), "--resume", "auto", *plan.overrides])
    log = shlex.quote(str(plan.output_dir.resolve() / "slurm-%A_%a.out"))
    return f"""#!/bin/bash
# llm_gym sweep of {plan.config_file_path}: {len(plan.points)} runs, one per array task, each a torchrun on one node.
# Submit with: sbatch {plan.output_dir / SLURM_SCRIPT}  (sbatch options on that command line override these).
#SBATCH --job-name=llm_gym_sweep
#SBATCH --array=0-{len(plan.points) - 1}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output={log}

set -euo pipefail
cd {shlex.quote(str(working_dir))}
case "$SLURM_ARRAY_TASK_ID" in
{cases}
  *) echo "sweep has no point $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
GPUS_PER_NODE=${{SLURM_GPUS_ON_NODE:-8}}
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-8}}

# --resume auto makes a requeued task continue from its checkpoints/latest.
srun torchrun --standalone --nproc_per_node "$GPUS_PER_NODE" -m llm_gym run {common} "${{POINT[@]}}"
"""


def write_slurm_script(plan: SweepPlan, working_dir: Path) -> Path:
    path = plan.output_dir / SLURM_SCRIPT
    _write_atomically(path, slurm_script(plan, working_dir))
    path.chmod(0o755)
    return path
