"""The bad-input corpus: every bad file, value or crafted artefact a user or an attacker can hand llm_gym, as one
table, and what the command line must answer (``tests/cli/test_bad_input_corpus.py`` runs every row).

A row names a command line built in its own empty directory (``Workspace``), a regular expression the ``error:``
message must match, and optionally the paths that must come out byte-identical. Every row must exit 2 with one
``error:`` message and no traceback, and must never create ``Workspace.marker`` (crafted files try to).
New commands add their rows here.
"""

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from experiment_runs import TINY_CONFIG, llm_gym, tiny_overrides, write_byte_corpus

_SESSION_CACHE: dict[str, Path] = {}


def _cached(name: str, make: Callable[[Path], Path], root: Path) -> Path:
    if name not in _SESSION_CACHE:
        directory = root / name
        directory.mkdir(parents=True)
        _SESSION_CACHE[name] = make(directory)
    return _SESSION_CACHE[name]


@dataclass
class Workspace:
    """A case's own directory (also the working directory while it runs), and copies of shared artefacts."""

    dir: Path
    shared: Path
    """Session-wide directory where expensive artefacts are built once."""

    @property
    def marker(self) -> Path:
        """A crafted file that manages to run code writes this file; the runner asserts it never appears."""
        return self.dir / "PWNED"

    def corpus(self) -> Path:
        """A byte-tokenized corpus: ``train_byte``/``val_byte`` prefixes and the ``train/val.jsonl`` texts."""
        return _cached("corpus", write_byte_corpus, self.shared)

    def experiment(self) -> Path:
        """A copy of a finished two-step tiny run's experiment directory (checkpoints/step_2, latest, config)."""

        def train(directory: Path) -> Path:
            overrides = tiny_overrides(
                self.corpus(),
                directory / "experiment",
                **{"training.max_steps": 2, "training.eval_interval": 2, "checkpointing.every_n_steps": 0,
                   "model.config.n_layer": 2, "lr_scheduler.config.warmup_steps": 1},
            )  # fmt: skip
            llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides)
            return directory / "experiment"

        source = _cached("experiment", train, self.shared)
        copy = self.dir / "experiment"
        shutil.copytree(source, copy)
        return copy

    def checkpoint(self) -> Path:
        """``step_2`` of a copy of the tiny run (see ``experiment``)."""
        return self.experiment() / "checkpoints" / "step_2"


@dataclass(frozen=True)
class BadInput:
    id: str
    """Unique, kebab-case: the pytest id."""
    argv: Callable[[Workspace], Sequence[str]]
    """Prepares the case's files in the workspace; returns the command line after ``llm_gym``."""
    message: str
    """A regular expression ``re.search``-ed in stderr."""
    unchanged: Callable[[Workspace], Sequence[Path]] = field(default=lambda ws: ())
    """Files or directories that must be byte-identical before and after the command."""
    subprocess: bool = False
    """Run ``python -m llm_gym`` in a subprocess instead of in-process (aborts, signals, torch state)."""


CASES: list[BadInput] = [
    BadInput(
        "validate-missing-config",
        lambda ws: ["validate", "--config_file_path", ws.dir / "absent.yaml"],
        r"config file not found: .*absent\.yaml",
    ),
    BadInput(
        "inspect-missing-prefix",
        lambda ws: ["data", "inspect", "--prefix", ws.dir / "absent"],
        r"absent",
    ),
]


# The pretraining recipe: schedules, parameter groups, Muon, z-loss, cooldown branches.
def _tiny(ws: Workspace, command: str, **overrides: object) -> list[str]:
    settings = {"model.config.n_layer": 2, "lr_scheduler.config.warmup_steps": 1, **overrides}
    return [command, "--config_file_path", TINY_CONFIG, *tiny_overrides(ws.corpus(), ws.dir / "run", **settings)]


def _damaged_checkpoint(ws: Workspace) -> Path:
    checkpoint = ws.checkpoint()
    shard = next(checkpoint.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    return checkpoint


CASES += [
    BadInput(
        "wsd-decay-steps-and-fraction",
        lambda ws: _tiny(
            ws,
            "validate",
            **{
                "lr_scheduler.type_hint": "WarmupStableDecay",
                "lr_scheduler.config.decay_steps": 2,
                "lr_scheduler.config.decay_fraction": 0.5,
            },
        ),
        r"lr_scheduler\.config: give exactly one of decay_steps \(a count\) and decay_fraction",
    ),
    BadInput(
        "sequential-milestones-count",
        lambda ws: _tiny(
            ws,
            "validate",
            lr_scheduler="{type_hint: Sequential, config: {milestones: [], schedules: "
            "[{type_hint: ConstantLR}, {type_hint: ConstantLR}]}}",
        ),
        r"lr_scheduler\.config: .*2 schedules need 1 milestones, got 0",
    ),
    BadInput(
        "parameter-group-matches-nothing",
        lambda ws: _tiny(ws, "validate", parameter_groups="[{match: 'embedding.*', lr_multiplier: 0.1}]"),
        r"parameter_groups\[0\]\.match: 'embedding\.\*' matches no parameter of the model",
    ),
    BadInput(
        "muon-without-adamw-settings",
        lambda ws: _tiny(ws, "validate", **{"optimizer.type_hint": "Muon"}),
        r"optimizer\.config\.adamw: missing required key",
    ),
    BadInput(
        "negative-z-loss-weight",
        lambda ws: _tiny(ws, "validate", **{"training.z_loss_weight": -1e-4}),
        r"training\.z_loss_weight: .*greater than or equal to 0",
    ),
    BadInput(
        "branch-and-warm-start",
        lambda ws: _tiny(
            ws, "validate", **{"checkpointing.branch_from": ws.dir / "a", "checkpointing.warm_start_from": ws.dir / "b"}
        ),
        r"set branch_from .* or warm_start_from .*, not both",
    ),
    BadInput(
        "branch-from-missing-checkpoint",
        lambda ws: _tiny(ws, "run", **{"checkpointing.branch_from": ws.dir / "absent"}),
        r"checkpointing\.branch_from: checkpoint directory .*absent does not exist",
        subprocess=True,
    ),
    BadInput(
        "branch-from-damaged-checkpoint",
        lambda ws: _tiny(ws, "run", **{"checkpointing.branch_from": _damaged_checkpoint(ws)}),
        r"checkpoint .*step_2 is corrupted: .*\.distcp",
        unchanged=lambda ws: [ws.dir / "experiment"],
        subprocess=True,
    ),
]
