"""The bad-input corpus: every bad file, value or crafted artefact a user or an attacker can hand llm_gym, as one
table, and what the command line must answer (``tests/cli/test_bad_input_corpus.py`` runs every row).

A row names a command line built in its own empty directory (``Workspace``), a regular expression the ``error:``
message must match, and optionally the paths that must come out byte-identical. Every row must exit 2 with one
``error:`` message and no traceback, and must never create ``Workspace.marker`` (crafted files try to).
New commands add their rows here.
"""

import random
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


# Data loss
def _copy_of(ws: Workspace, path: Path, name: str) -> Path:
    copy = ws.dir / name
    shutil.copyfile(path, copy)
    return copy


def _symlink(ws: Workspace, name: str, target: Path) -> Path:
    (ws.dir / name).symlink_to(target)
    return ws.dir / name


def _export_over(ws: Workspace, output: Callable[[Path], Path]) -> list:
    experiment = ws.experiment()
    return ["export_hf", "--checkpoint_path", experiment, "--output_dir", output(experiment), "--force"]


def _train_tokenizer(source: Path, output: Path, *options: str) -> list:
    return ["data", "train_tokenizer", "--input", source, "--output_path", output, "--vocab_size", "300", *options]


def _run(ws: Workspace, config: Path = TINY_CONFIG, output_dir: Path | None = None, **overrides: object) -> list:
    output_dir = output_dir or ws.dir / "run"
    return ["run", "--config_file_path", config, *tiny_overrides(ws.corpus(), output_dir, **overrides)]


def _tokenize_over_a_linked_input(ws: Workspace) -> list:
    source = _symlink(ws, "in.jsonl", _copy_of(ws, ws.corpus() / "val.jsonl", "out.bin"))
    return ["data", "tokenize", "--input", source, "--tokenizer", "byte", "--output_prefix", ws.dir / "out", "--force"]


def _plot_to(metrics: Path, output: Path) -> list:
    return ["plot", "--metrics_path", metrics, "--output_path", output]


def _without_latest(experiment: Path) -> Path:
    (experiment / "checkpoints" / "latest").unlink()
    return experiment


_OVERLAP = r"output directory .* is, contains or lies inside the checkpoint"
_EXPERIMENT = lambda ws: [ws.dir / "experiment"]  # noqa: E731
CASES += [
    BadInput("export-hf-over-its-experiment", lambda ws: _export_over(ws, lambda exp: exp), _OVERLAP, _EXPERIMENT),
    BadInput(
        "export-hf-over-its-checkpoints-dir",
        lambda ws: _export_over(ws, lambda exp: exp / "checkpoints"),
        _OVERLAP,
        _EXPERIMENT,
    ),
    BadInput(
        "export-hf-over-the-parent-of-its-experiment",
        lambda ws: _export_over(ws, lambda exp: exp.parent),
        _OVERLAP,
        _EXPERIMENT,
    ),
    BadInput(
        "export-hf-inside-its-experiment",
        lambda ws: _export_over(ws, lambda exp: exp / "hf"),
        r"lies inside the checkpoint('s experiment directory| path)",
        _EXPERIMENT,
    ),
    BadInput(
        "export-hf-over-a-symlink-to-its-experiment",
        lambda ws: _export_over(ws, lambda exp: _symlink(ws, "link", exp) / "checkpoints"),
        _OVERLAP,
        _EXPERIMENT,
    ),
    BadInput(
        "train-tokenizer-over-its-input",
        lambda ws: _train_tokenizer(
            _copy_of(ws, ws.corpus() / "val.jsonl", "val.jsonl"), ws.dir / "val.jsonl", "--force"
        ),
        r"val\.jsonl is also an input of this command .*choose another --output_path",
        lambda ws: [ws.dir / "val.jsonl"],
    ),
    BadInput(
        "tokenize-over-its-input-through-a-symlink",
        _tokenize_over_a_linked_input,
        r"out\.bin is also an input of this command .*choose another --output_prefix",
        lambda ws: [ws.dir / "out.bin"],
    ),
    BadInput(
        "plot-over-its-metrics",
        lambda ws: _plot_to(ws.experiment() / "metrics.jsonl", ws.dir / "experiment" / "metrics.jsonl"),
        r"metrics\.jsonl is also an input of this command",
        _EXPERIMENT,
    ),
    BadInput(
        "run-fresh-over-its-own-config-file",
        lambda ws: _run(ws, _copy_of(ws, TINY_CONFIG, "config.yaml"), ws.dir),
        r"config\.yaml is also an input of this command .*choose another experiment\.output_dir",
        lambda ws: [ws.dir / "config.yaml"],
    ),
    BadInput(
        "run-fresh-over-checkpoints-without-latest",
        lambda ws: _run(ws, output_dir=_without_latest(ws.experiment())),
        r"already holds checkpoints of an earlier run",
        _EXPERIMENT,
    ),
]


# Values and files that crashed
def _full_disk(path: Path) -> Path:
    """``path`` made /dev/full: every write fails with ENOSPC, as on a full disk, and without a file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/full")
    return path


def _tokenize_onto_a_full_disk(ws: Workspace, workers: int) -> list:
    _full_disk(ws.dir / "out.bin.incomplete")
    return ["data", "tokenize", "--input", ws.corpus() / "val.jsonl", "--tokenizer", "byte",
            "--output_prefix", ws.dir / "out", "--num_workers", str(workers)]  # fmt: skip


def _validate(ws: Workspace, **overrides: object) -> list:
    return ["validate", "--config_file_path", TINY_CONFIG, *tiny_overrides(ws.corpus(), ws.dir / "run", **overrides)]


def _generate(ws: Workspace, *options: str, prompt: str = "def ") -> list:
    return ["generate", "--checkpoint_path", ws.experiment(), "--prompt", prompt, *options]


def _plot(ws: Workspace, metrics: bytes) -> list:
    (ws.dir / "metrics.jsonl").write_bytes(metrics)
    return _plot_to(ws.dir / "metrics.jsonl", ws.dir / "curves.png")


def _latest_not_utf8(experiment: Path) -> Path:
    (experiment / "checkpoints" / "latest").write_bytes(b"\xffstep_2\n")
    return experiment


_NOTHING_WRITTEN = lambda ws: [ws.dir]  # noqa: E731 (files only: the /dev/full symlinks are not files)
_NO_SPACE = r"cannot write .*{}: No space left on device"
_TOO_SHORT = r"data\.train_dataset has 2 samples, fewer than one global batch \(4\)"
CASES += [
    BadInput(
        "tokenize-onto-a-full-disk",
        lambda ws: _tokenize_onto_a_full_disk(ws, workers=0),
        _NO_SPACE.format(r"out\.bin"),
        _NOTHING_WRITTEN,
    ),
    BadInput(
        "tokenize-with-workers-onto-a-full-disk",
        lambda ws: _tokenize_onto_a_full_disk(ws, workers=2),
        _NO_SPACE.format(r"out\.bin"),
        _NOTHING_WRITTEN,
        subprocess=True,
    ),
    BadInput(
        "demo-corpus-onto-a-full-disk",
        lambda ws: [
            "data",
            "demo_corpus",
            "--output_dir",
            _full_disk(ws.dir / "demo" / "train.jsonl.incomplete").parent,
        ],
        _NO_SPACE.format("demo"),
        _NOTHING_WRITTEN,
    ),
    BadInput(
        "train-tokenizer-onto-a-full-disk",
        lambda ws: _train_tokenizer(
            ws.corpus() / "val.jsonl", _full_disk(ws.dir / "tok.json.incomplete").with_suffix("")
        ),
        _NO_SPACE.format(r"tok\.json"),
        _NOTHING_WRITTEN,
    ),
    BadInput(
        "train-tokenizer-vocabulary-of-a-billion",
        lambda ws: _train_tokenizer(ws.corpus() / "val.jsonl", ws.dir / "tok.json", "--vocab_size", "1000000000"),
        r"--vocab_size 1,000,000,000 is beyond the 16,777,216 this trainer allows",
        _NOTHING_WRITTEN,
        subprocess=True,  # it was an abort of the whole process
    ),
    BadInput(
        "validate-seed-beyond-64-bits",
        lambda ws: _validate(ws, **{"experiment.seed": 2**64}),
        r"experiment\.seed: Input should be less than or equal to 9223372036854775807",
    ),
    BadInput(
        "validate-beta-of-one",
        lambda ws: _validate(ws, **{"optimizer.config.betas": "[1.0, 0.95]"}),
        r"optimizer\.config\.betas\[0\]: Input should be less than 1",
    ),
    BadInput(
        "validate-negative-beta",
        lambda ws: _validate(ws, **{"optimizer.config.betas": "[0.9, -0.1]"}),
        r"optimizer\.config\.betas\[1\]: Input should be greater than or equal to 0",
    ),
    BadInput(
        "validate-lr-beyond-float32",
        lambda ws: _validate(ws, **{"optimizer.config.lr": "1e39"}),
        r"lr = 1e\+39 is beyond the largest float32",
    ),
    BadInput(
        "validate-lr-whose-first-adam-step-overflows",
        lambda ws: _validate(ws, **{"optimizer.config.lr": "1e38"}),
        r"lr / \(1 - betas\[0\]\), the first step's size = 1e\+39 is beyond the largest float32",
    ),
    BadInput(
        "validate-infinite-lr",
        lambda ws: _validate(ws, **{"optimizer.config.lr": ".inf"}),
        r"optimizer\.config\.lr: Input should be a finite number",
    ),
    BadInput(
        "validate-vocabulary-beyond-memory",
        lambda ws: _validate(ws, **{"model.config.vocab_size": 10**9, "model.config.dim": 4096}),
        r"model: its weights alone need [\d,.]+ GiB on cpu, more than the [\d,.]+ GiB available",
    ),
    BadInput(
        "validate-vocabulary-beyond-64-bits",
        lambda ws: _validate(ws, **{"model.config.vocab_size": 10**26}),
        r"model: a tensor of this size cannot exist",
    ),
    BadInput(
        "validate-dataset-sequence-longer-than-training",
        lambda ws: _validate(ws, **{"data.train_dataset.config.sequence_length": 64}),
        r"data\.train_dataset\.config\.sequence_length \(64\) differs from training\.sequence_length \(32\)",
    ),
    BadInput(
        "validate-dataset-sequence-shorter-than-training",
        lambda ws: _validate(ws, **{"data.eval_datasets.val.config.sequence_length": 16}),
        r"data\.eval_datasets\.val\.config\.sequence_length \(16\) differs from training\.sequence_length \(32\)",
    ),
    BadInput(
        "validate-sequence-longer-than-the-data",
        lambda ws: _validate(ws, **{"training.sequence_length": 1_000_000}),
        r"train_byte: \d+ tokens are too few for one sample of sequence_length 1000000",
    ),
    BadInput(
        "validate-data-short-of-one-global-batch",
        lambda ws: _validate(ws, **{"training.sequence_length": 100_000}),
        _TOO_SHORT,
    ),
    BadInput(
        "run-data-short-of-one-global-batch",
        lambda ws: _run(ws, **{"training.sequence_length": 100_000}),
        _TOO_SHORT,
        subprocess=True,
    ),
    BadInput(
        "generate-temperature-nan",
        lambda ws: _generate(ws, "--temperature", "nan"),
        r"temperature must be at least 0 \(0 = greedy\) and finite, got nan",
    ),
    BadInput(
        "generate-seed-beyond-64-bits",
        lambda ws: _generate(ws, "--seed", str(2**64)),
        r"the seed must be between 0 and 2\^64 - 1",
    ),
    BadInput(
        "generate-prompt-not-utf8",
        lambda ws: _generate(ws, prompt=b"caf\xe9".decode("utf-8", "surrogateescape")),
        r"the prompt is not valid UTF-8 text \(at character 3\)",
    ),
    BadInput(
        "generate-latest-not-utf8",
        lambda ws: ["generate", "--prompt", "def ", "--checkpoint_path", _latest_not_utf8(ws.experiment())],
        r"latest is corrupted: it should name a checkpoint directory, found bytes that are not UTF-8 text",
    ),
    BadInput(
        "plot-random-bytes",
        lambda ws: _plot(ws, bytes(random.Random(0).randrange(256) for _ in range(4096))),
        r"metrics\.jsonl:1: not UTF-8 text",
        _NOTHING_WRITTEN,
    ),
    BadInput(
        "plot-step-of-ten-to-the-400",
        lambda ws: _plot(ws, b'{"step": 1%s, "split": "train", "loss": 1}\n' % (b"0" * 400)),
        r"metrics\.jsonl:1: 'step' must be between 0 and 2\^63 - 1",
        _NOTHING_WRITTEN,
    ),
]
