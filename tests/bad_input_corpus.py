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
    # Misleading behaviour
    BadInput(
        "run-component-with-a-bare-parameter",
        lambda ws: _run_with_user_mlp(ws, "ScaledMLP"),
        r"model: DecoderLM\.init_weights\(\) left blocks\.0\.mlp\.scale \(parameters of ScaledMLP\) without "
        r"values\..*give ScaledMLP a reset_parameters\(\) that fills its own",
        unchanged=lambda ws: [ws.dir / "experiment" / "checkpoints"],
        subprocess=True,
    ),
    BadInput(
        "run-non-finite-gradient-norm-says-which",
        lambda ws: _run_with_user_mlp(ws, "NaNGradientMLP"),
        r"non-finite gradient norm \(nan; the loss, [\d.]+, is finite\) at step 1; lower optimizer\.config\.lr",
        unchanged=lambda ws: [ws.dir / "experiment" / "checkpoints"],
        subprocess=True,
    ),
    BadInput(
        "run-skipping-every-step",
        lambda ws: _run_with_user_mlp(
            ws, "NaNGradientMLP", "training.on_nonfinite=skip", "training.max_consecutive_skipped_steps=3"
        ),
        r"3 steps in a row \(1-3\) had non-finite values and were skipped, the last with non-finite gradient norm "
        r"\(nan; .*\(training\.max_consecutive_skipped_steps: 3\): the run has diverged",
        unchanged=lambda ws: [ws.dir / "experiment" / "checkpoints"],
        subprocess=True,
    ),
    BadInput(
        "validate-max-consecutive-skipped-steps-zero",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "training.max_consecutive_skipped_steps=0"],
        r"training\.max_consecutive_skipped_steps: Input should be greater than 0",
    ),
    BadInput(
        "validate-yaml-alias-bomb",
        lambda ws: ["validate", "--config_file_path", _write(ws.dir / "bomb.yaml", _alias_bomb(9))],
        r"bomb\.yaml is refused: it is an alias bomb \(billion laughs\): its aliases \(\*name\) expand 22 values to "
        r"2,345,679,022, more than the 10,000 a config may hold",
    ),
    BadInput(
        "validate-yaml-recursive-alias",
        lambda ws: ["validate", "--config_file_path", _write(ws.dir / "loop.yaml", "a: &a [1, *a]\n")],
        r"loop\.yaml is refused: the value at line 1, column 4 contains an alias of itself \(a recursive alias\)",
    ),
    BadInput(
        "inspect-idx-that-is-a-directory",
        lambda ws: ["data", "inspect", "--prefix", _corpus_with_idx_directory(ws)],
        r"c\.idx: is a directory, not a file \(expected a tokenized corpus PREFIX\.bin \+ PREFIX\.idx\)",
    ),
    BadInput(
        "inspect-prefix-ending-in-a-directory",
        lambda ws: ["data", "inspect", "--prefix", f"{ws.corpus()}/"],
        r"prefix '.*corpus/' is refused: it names a directory, and a prefix is the start of two file names",
    ),
    BadInput(
        "tokenize-output-prefix-ending-in-a-directory",
        lambda ws: _tokenize_into_out_slash(ws),
        r"prefix '.*out/' is refused: it names a directory.*add a name, e\.g\. .*out/corpus for .*out/corpus\.bin",
        unchanged=lambda ws: [ws.dir],
    ),
]


# Misleading behaviour: helpers of its rows


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tokenize_into_out_slash(ws: Workspace) -> list:
    """``--output_prefix out/``, an existing directory: no ``out.bin`` beside it, no ``out/.bin`` in it."""
    (ws.dir / "out").mkdir()
    return ["data", "tokenize", "--input", ws.corpus() / "val.jsonl", "--tokenizer", "byte",
            "--output_prefix", f"{ws.dir / 'out'}/"]  # fmt: skip


def _alias_bomb(levels: int) -> str:
    """The "billion laughs": each level a list of ten aliases of the level before."""
    lines = ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _corpus_with_idx_directory(ws: Workspace) -> Path:
    shutil.copy(ws.corpus() / "val_byte.bin", ws.dir / "c.bin")
    (ws.dir / "c.idx").mkdir()
    return ws.dir / "c"


USER_MLPS = """
import torch
from torch import nn

from llm_gym.models.mlp import GELUMLP, GELUMLPConfig
from llm_gym.registry import register_component


@register_component("mlp", "ScaledMLP", config_model=GELUMLPConfig)
class ScaledMLP(GELUMLP):
    def __init__(self, dim, hidden_dim, bias, approximate="tanh"):
        super().__init__(dim, hidden_dim, bias, approximate)
        self.scale = nn.Parameter(torch.ones(dim))  # lost on the meta device: no reset_parameters() fills it

    def forward(self, hidden):
        return super().forward(hidden) * self.scale


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden):
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, gradient):
        return gradient * float("nan")


@register_component("mlp", "NaNGradientMLP", config_model=GELUMLPConfig)
class NaNGradientMLP(GELUMLP):
    def forward(self, hidden):
        return _NaNGradient.apply(super().forward(hidden))
"""


def _run_with_user_mlp(ws: Workspace, mlp: str, *overrides: str) -> list:
    """``llm_gym run`` of a one-block tiny model whose MLP is ``mlp`` from a user module beside the config."""
    (ws.dir / "user_mlps.py").write_text(USER_MLPS)
    config = _write(ws.dir / "tiny.yaml", TINY_CONFIG.read_text())
    settings = {"user_modules": "[user_mlps]", "model.config.n_layer": 1, "checkpointing.every_n_steps": 0,
                "model.config.mlp": f"{{type_hint: {mlp}, config: {{hidden_dim: 64}}}}"}  # fmt: skip
    return ["run", "--config_file_path", config, *tiny_overrides(ws.corpus(), ws.dir / "experiment", **settings),
            *overrides]  # fmt: skip
