"""The bad-input corpus: every bad file, value or crafted artefact a user or an attacker can hand llm_gym, as one
table, and what the command line must answer (``tests/cli/test_bad_input_corpus.py`` runs every row).

A row names a command line built in its own empty directory (``Workspace``), a regular expression the ``error:``
message must match, and optionally the paths that must come out byte-identical. Every row must exit 2 with one
``error:`` message and no traceback, and must never create ``Workspace.marker`` (crafted files try to).
New commands add their rows here.
"""

import json
import pickle
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
    # evaluate (issue 17)
    BadInput(
        "evaluate-unknown-prefix",
        lambda ws: ["evaluate", "--checkpoint_path", ws.experiment(), "--prefix", "absent_split"],
        r"--prefix absent_split: not a split of the run \(its data.eval_datasets: val\)",
    ),
    BadInput(
        "evaluate-unknown-task-format",
        lambda ws: ["evaluate", "--checkpoint_path", ws.experiment(), "--tasks", "mmlu:questions.jsonl"],
        r"unknown task format 'mmlu'; known: jsonl, hellaswag",
    ),
    BadInput(
        "evaluate-missing-task-file",
        lambda ws: ["evaluate", "--checkpoint_path", ws.experiment(), "--tasks", ws.dir / "absent.jsonl"],
        r"task file .*absent\.jsonl does not exist",
    ),
    BadInput(
        "evaluate-malformed-task-line",
        lambda ws: [
            "evaluate",
            "--checkpoint_path",
            ws.experiment(),
            "--tasks",
            _written(ws.dir / "task.jsonl", '{"context": "a", "choices": ["b", "c"], "gold": 0}\n{oops\n'),
        ],
        r"task\.jsonl:2: not valid JSON",
    ),
    BadInput(
        "evaluate-same-task-name-twice",
        lambda ws: [
            "evaluate",
            "--checkpoint_path",
            ws.experiment(),
            "--tasks",
            "arc:a/test.jsonl",
            "--tasks",
            "arc:b/test.jsonl",
        ],
        r"two --tasks are both named arc",
    ),
    BadInput(
        "evaluate-checkpoint-outside-an-experiment",
        lambda ws: [
            "evaluate",
            "--checkpoint_path",
            _moved(ws.checkpoint(), ws.dir / "loose_checkpoint"),
            "--prefix",
            "val",
        ],
        r"not inside an experiment's checkpoints/ directory: .*--output_path",
    ),
    # import_hf (issue 17)
    BadInput(
        "import-hf-unsupported-architecture",
        lambda ws: [
            "import_hf",
            "--model_dir",
            _written(ws.dir / "hf" / "config.json", '{"architectures": ["BertModel"]}').parent,
            "--output_dir",
            ws.dir / "out",
        ],
        r"llm_gym imports GPT2LMHeadModel and LlamaForCausalLM; this model is \['BertModel'\]",
    ),
    BadInput(
        "import-hf-pickled-weights-only",
        lambda ws: [
            "import_hf",
            "--model_dir",
            _pickled_hf_dir(ws),
            "--output_dir",
            ws.dir / "out",
        ],
        r"pytorch_model\.bin, a pickle, which can run code when loaded: import_hf reads safetensors only",
    ),
    # sweep, compare (issue 17)
    BadInput(
        "sweep-sets-the-output-dir-of-its-points",
        lambda ws: [
            "sweep",
            "--config_file_path",
            TINY_CONFIG,
            "--grid",
            "experiment.seed=1,2",
            "--output_dir",
            ws.dir / "sweep",
            "experiment.output_dir=elsewhere",
        ],
        r"the sweep sets experiment\.output_dir of each point",
    ),
    BadInput(
        "compare-without-the-split",
        lambda ws: [
            "compare",
            "--metrics_path",
            _written(ws.dir / "run" / "metrics.jsonl", '{"step": 1, "split": "train"}\n'),
        ],
        r"no run has a 'val' line with a loss: name the evaluation split with --split",
    ),
]


def _pickled_hf_dir(ws: Workspace) -> Path:
    """A GPT-2 config.json beside a pytorch_model.bin whose unpickling would write the marker."""
    config = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 8, "n_positions": 4, "n_embd": 8, "n_layer": 1,
              "n_head": 2}  # fmt: skip
    directory = _written(ws.dir / "hf" / "config.json", json.dumps(config)).parent
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(ws.marker)))
    return directory


class _WritesMarker:
    """Unpickling it creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _written(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _moved(source: Path, target: Path) -> Path:
    shutil.move(source, target)
    return target
