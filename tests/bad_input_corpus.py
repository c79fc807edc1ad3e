"""The bad-input corpus: every bad file, value or crafted artefact a user or an attacker can hand llm_gym, as one
table, and what the command line must answer (``tests/cli/test_bad_input_corpus.py`` runs every row).

A row names a command line built in its own empty directory (``Workspace``), a regular expression the ``error:``
message must match, and optionally the paths that must come out byte-identical. Every row must exit 2 with one
``error:`` message and no traceback, and must never create ``Workspace.marker`` (crafted files try to).
New commands add their rows here.
"""

import json
import pickle
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from crafted_files import (
    PLANTED_MODULE,
    forge,
    forge_stored_value,
    metadata_hiding_code,
    metadata_running_code,
    record_planted_module,
    torch_save_running_code,
)
from experiment_runs import TINY_CONFIG, llm_gym, tiny_overrides, write_byte_corpus
from llm_gym.data.indexed import IndexedDatasetWriter

_SESSION_CACHE: dict[str, Path] = {}
_TP2 = ("parallelism.config.tensor_parallel_degree=2", "model.config.vocab_size=258")


def _validate_on_ranks(world_size: int, *overrides: str) -> Callable[[Path], list]:
    """The arguments of `validate` planning the tiny config for ``world_size`` ranks with ``overrides``."""
    return lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "--world_size", str(world_size), *overrides]


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
            _text_written(ws.dir / "task.jsonl", '{"context": "a", "choices": ["b", "c"], "gold": 0}\n{oops\n'),
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
            _text_written(ws.dir / "hf" / "config.json", '{"architectures": ["BertModel"]}').parent,
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
    BadInput(
        "import-hf-forced-over-the-model-directory",
        lambda ws: [
            "import_hf",
            "--model_dir",
            _text_written(ws.dir / "hf" / "config.json", '{"architectures": ["GPT2LMHeadModel"]}').parent,
            "--output_dir",
            ws.dir / "hf" / ".." / "hf",
            "--force",
        ],
        r"output directory .*hf is, contains or lies inside the model directory .*hf: choose an --output_dir",
        lambda ws: [ws.dir / "hf"],
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
            _text_written(ws.dir / "run" / "metrics.jsonl", '{"step": 1, "split": "train"}\n'),
        ],
        r"no run has a 'val' line with a loss: name the evaluation split with --split",
    ),
    # ---- the middle layer (issue 13): typed batches, the model contract ---------------------------------------
    BadInput(
        "validate-collator-batch-keys",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "data.collator.config={input_key: tokens}"],
        r"data\.collator\.config: input_key and target_key are gone: .* delete both keys",
    ),
    # Trust: crafted checkpoints
    *[
        BadInput(
            f"{command}-{craft}",
            lambda ws, command=command, craft=craft: _crafted_checkpoint_command(ws, command, craft),
            message,
        )
        for command in ("generate", "export_hf", "evaluate", "resume", "warm_start")
        for craft, message in (
            ("metadata-running-code", r"\.metadata is corrupted: it refers to .*os\.system.*refused"),
            ("metadata-hiding-code", r"\.metadata is corrupted: it refers to .*os\.system.*refused"),
            ("stored-value-running-code", r"could not be loaded: .*Weights only load failed"),
        )
    ],
    *[
        BadInput(
            f"{command}-recorded-user-module",
            lambda ws, command=command: _crafted_checkpoint_command(ws, command, "recorded-user-module"),
            message,
        )
        for command, message in (
            ("generate", rf"needs a component that is not registered: .*pass --user_modules {PLANTED_MODULE}"),
            ("export_hf", rf"needs a component that is not registered: .*pass --user_modules {PLANTED_MODULE}"),
            ("evaluate", rf"needs a component that is not registered: .*pass --user_modules {PLANTED_MODULE}"),
            ("resume", r"differs from the checkpoint's .*\n  model\.type_hint"),
        )
    ],
    *[
        BadInput(
            f"warm-start-{suffix.lstrip('.')}-running-code",
            lambda ws, suffix=suffix: _warm_start_command(
                ws, ws.experiment(), _write(ws.dir / f"weights{suffix}", ws.marker)
            ),
            r"weights\.\w+ could not be read as weights: Weights only load failed",
        )
        for suffix in (".pt", ".pth", ".bin")
    ],
    # A torch.save file that runs code, wherever another path is read: it is read as what the path should hold.
    BadInput(
        "tokenize-tokenizer-pickle",
        lambda ws: _tokenize(ws, _text_file(ws), _write(ws.dir / "t.json", ws.marker)),
        r"t\.json: not a valid Hugging Face tokenizer\.json",
    ),
    BadInput(
        "tokenize-input-pickle",
        lambda ws: _tokenize(ws, _write(ws.dir / "in.jsonl", ws.marker), "byte"),
        r"in\.jsonl:1: invalid UTF-8",
    ),
    BadInput(
        "train-tokenizer-input-pickle",
        lambda ws: ["data", "train_tokenizer", "--input", _write(ws.dir / "in.jsonl", ws.marker), *_VOCAB_300],
        r"in\.jsonl:1: invalid UTF-8",
    ),
    BadInput(
        "inspect-index-pickle",
        lambda ws: ["data", "inspect", "--prefix", _pickled_corpus(ws)],
        r"p\.idx: not a Megatron indexed dataset index",
    ),
    BadInput(
        "generate-recorded-tokenizer-pickle",
        lambda ws: _generate_with_recorded_tokenizer(ws, _write(ws.dir / "tokenizer.json", ws.marker)),
        r"tokenizer\.json: not a valid Hugging Face tokenizer\.json",
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
    # tensor parallelism (issue 14)
    BadInput(
        "validate-tensor-parallel-not-dividing-world",
        _validate_on_ranks(3, *_TP2),
        r"parallelism.config.tensor_parallel_degree \(2\) must divide the world size 3",
    ),
    BadInput(
        "validate-tensor-parallel-heads",
        _validate_on_ranks(4, "parallelism.config.tensor_parallel_degree=4", "model.config.vocab_size=260"),
        r"model.config.n_head_kv \(2\) is not divisible by parallelism.config.tensor_parallel_degree \(4\)",
    ),
    BadInput(
        "validate-tensor-parallel-vocabulary",
        _validate_on_ranks(2, "parallelism.config.tensor_parallel_degree=2"),
        r"model.config.vocab_size \(257\) is not divisible by parallelism.config.tensor_parallel_degree \(2\)",
    ),
    BadInput(
        "validate-tensor-parallel-z-loss",
        _validate_on_ranks(2, *_TP2, "training.z_loss_weight=1e-4"),
        r"training.z_loss_weight cannot run with parallelism.config.tensor_parallel_degree 2",
    ),
    BadInput(
        "validate-tensor-parallel-ddp",
        _validate_on_ranks(2, "parallelism.type_hint=DDP", "parallelism.config.tensor_parallel_degree=2"),
        r"parallelism.config.tensor_parallel_degree",
    ),
    # context parallelism (issue 14)
    BadInput(
        "validate-context-parallel-heads",
        _validate_on_ranks(2, "parallelism.config.context_parallel_degree=2", "model.config.n_head_kv=1"),
        r"model.config.n_head_kv \(1\) is not divisible by parallelism.config.context_parallel_degree \(2\)",
    ),
    BadInput(
        "validate-context-parallel-sequence-length",
        _validate_on_ranks(2, "parallelism.config.context_parallel_degree=2", "training.sequence_length=127"),
        r"training.sequence_length \(127\) is not divisible by parallelism.config.context_parallel_degree 2",
    ),
    BadInput(
        "validate-max-consecutive-skipped-steps-zero",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "training.max_consecutive_skipped_steps=0"],
        r"training\.max_consecutive_skipped_steps: Input should be greater than 0",
    ),
    BadInput(
        "validate-yaml-alias-bomb",
        lambda ws: ["validate", "--config_file_path", _write_text(ws.dir / "bomb.yaml", _alias_bomb(9))],
        r"bomb\.yaml is refused: it is an alias bomb \(billion laughs\): its aliases \(\*name\) expand 22 values to "
        r"2,345,679,022, more than the 10,000 a config may hold",
    ),
    BadInput(
        "validate-yaml-recursive-alias",
        lambda ws: ["validate", "--config_file_path", _write_text(ws.dir / "loop.yaml", "a: &a [1, *a]\n")],
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
    # ---- document masking (issue 15) --------------------------------------------------------------------------
    BadInput(
        "validate-document-positions-unknown",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "model.config.document_positions=sometimes"],
        r"model\.config\.document_positions: Input should be 'continue' or 'restart'",
    ),
    BadInput(
        "validate-document-masking-not-a-bool",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "model.config.document_masking=sometimes"],
        r"model\.config\.document_masking: Input should be a valid boolean",
    ),
    BadInput(
        "validate-document-kernel-unknown",
        lambda ws: [
            "validate",
            "--config_file_path",
            TINY_CONFIG,
            "model.config.attention.config={document_kernel: fast}",
        ],
        r"model\.config\.attention\.config\.document_kernel: Input should be 'auto', 'sdpa' or 'flex'",
    ),
    BadInput(
        "validate-flex-document-kernel-with-attention-dropout",
        lambda ws: [
            "validate",
            "--config_file_path",
            TINY_CONFIG,
            "model.config.dropout=0.1",
            "model.config.attention.config={document_kernel: flex}",
        ],
        r"document_kernel: flex has no attention dropout, but model\.config\.dropout is 0\.1",
    ),
    BadInput(
        "validate-document-masking-with-a-kernel-that-cannot-mask",
        lambda ws: _validate_with_user_kernel(ws, "model.config.document_masking=true"),
        r"model\.config\.document_masking: the attention kernel PlainKernel cannot mask documents \(it has no "
        r"document_mask\(document_ids\)\)",
    ),
    BadInput(
        "run-document-masking-without-its-tokenizer",
        lambda ws: _run(ws, **{"model.config.document_masking": "true", "data.tokenizer": ws.dir / "absent.json"}),
        r"data\.tokenizer: .*absent\.json is not here, and the model reads the documents of packed samples",
        subprocess=True,
    ),
    BadInput(
        "tokenize-output-prefix-ending-in-a-directory",
        lambda ws: _tokenize_into_out_slash(ws),
        r"prefix '.*out/' is refused: it names a directory.*add a name, e\.g\. .*out/corpus for .*out/corpus\.bin",
        unchanged=lambda ws: [ws.dir],
    ),
]


def _write(path: Path, marker: Path) -> Path:
    path.write_bytes(torch_save_running_code(marker))
    return path


_VOCAB_300 = ["--vocab_size", "300", "--output_path", "tokenizer.json"]


def _tokenize(ws: Workspace, source: Path, tokenizer: object) -> list:
    return ["data", "tokenize", "--input", source, "--tokenizer", tokenizer, "--output_prefix", ws.dir / "out"]


def _pickled_corpus(ws: Workspace) -> Path:
    """A tokenized-corpus prefix whose ``.bin`` and ``.idx`` are both code-running pickles."""
    for suffix in (".bin", ".idx"):
        _write(ws.dir / f"p{suffix}", ws.marker)
    return ws.dir / "p"


def _text_file(ws: Workspace) -> Path:
    path = ws.dir / "docs.jsonl"
    path.write_text('{"text": "hello"}\n')
    return path


def _generate_with_recorded_tokenizer(ws: Workspace, tokenizer: Path) -> list:
    """``generate`` on a copy of the tiny run whose saved config names ``tokenizer`` as the one it trained with."""
    experiment = ws.experiment()
    meta_path = experiment / "checkpoints" / "step_2" / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["resolved_config"]["data"]["tokenizer"] = str(tokenizer)
    meta_path.write_text(json.dumps(meta))
    return ["generate", "--checkpoint_path", experiment, "--prompt", "x", "--max_new_tokens", "1"]


def _crafted_checkpoint_command(ws: Workspace, command: str, craft: str) -> list:
    """``command`` (generate, export_hf, evaluate, a resume or a warm start) on a copy of the tiny run whose checkpoint
    was crafted to run code (``craft``)."""
    experiment = ws.experiment()
    checkpoint = experiment / "checkpoints" / "step_2"
    if craft == "metadata-running-code":
        forge(checkpoint, ".metadata", metadata_running_code(ws.marker))
    elif craft == "metadata-hiding-code":
        forge(checkpoint, ".metadata", metadata_hiding_code(checkpoint, ws.marker))
    elif craft == "stored-value-running-code":
        # The model's tensors are what inference reads; a resume also reads the loader's plain values.
        forge_stored_value(
            checkpoint, "dataloader." if command == "resume" else "model.", torch_save_running_code(ws.marker)
        )
    else:
        record_planted_module(checkpoint, ws.marker, model_type_hint="PlantedModel")
    if command == "generate":
        return ["generate", "--checkpoint_path", experiment, "--prompt", "x", "--max_new_tokens", "1"]
    if command == "export_hf":
        return ["export_hf", "--checkpoint_path", experiment, "--output_dir", ws.dir / "hf"]
    if command == "evaluate":
        return ["evaluate", "--checkpoint_path", experiment, "--prefix", "val", "--max_samples", "1"]
    if command == "resume":
        return ["run", "--config_file_path", experiment / "config.yaml", f"experiment.output_dir={experiment}",
                "--resume", "auto"]  # fmt: skip
    return _warm_start_command(ws, experiment, checkpoint)


def _warm_start_command(ws: Workspace, experiment: Path, source: Path) -> list:
    """A new run of the tiny run's config whose weights come from ``source``."""
    return ["run", "--config_file_path", experiment / "config.yaml", f"experiment.output_dir={ws.dir / 'new'}",
            f"checkpointing.warm_start_from={source}"]  # fmt: skip


# Corpus-scale data: inputs as published (parquet, zstd, Hugging Face datasets, directories), shards, merge, globs.
def _parquet(path: Path, column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: ["one", "two"]}), path)
    return path


def _truncated_zstd(path: Path) -> Path:
    data = zstandard.ZstdCompressor().compress(
        b"".join(b'{"text": "line %d %d"}\n' % (i, i * 7919) for i in range(9999))
    )
    path.write_bytes(data[: len(data) // 2])
    return path


def _hf_dataset_escaping(directory: Path) -> Path:
    directory.mkdir()
    (directory / "state.json").write_text('{"_data_files": [{"filename": "../outside.arrow"}]}')
    return directory


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _corpus(prefix: Path, dtype: str = "uint16") -> Path:
    writer = IndexedDatasetWriter(prefix, np.dtype(dtype))
    writer.add_documents(np.array([1, 2, 3]), np.array([3]))
    writer.finalize()
    return prefix


def _tokenize_bytes(ws: Workspace, source: Path, *options: str) -> list:
    return ["data", "tokenize", "--input", source, "--tokenizer", "byte", "--output_prefix", ws.dir / "out", *options]


def _merge(ws: Workspace, *prefixes: Path, output: str = "merged", force: bool = False) -> list:
    return ["data", "merge", "--input", *prefixes, "--output_prefix", ws.dir / output, *(["--force"] if force else [])]


def _shards(ws: Workspace, indices: Sequence[int], count: int) -> Path:
    for index in indices:
        _corpus(ws.dir / f"train-{index:05d}-of-{count:05d}")
    return ws.dir / "train-*"


CASES += [
    BadInput(
        "tokenize-parquet-without-the-text-column",
        lambda ws: _tokenize_bytes(ws, _parquet(ws.dir / "in.parquet", column="content")),
        r"in\.parquet: row 1: no column 'text' \(set --text_key; the columns are content\)",
    ),
    BadInput(
        "tokenize-damaged-parquet",
        lambda ws: _tokenize_bytes(ws, _written(ws.dir / "in.parquet", b"PAR1 damaged PAR1")),
        r"in\.parquet: not a readable parquet file",
    ),
    BadInput(
        "tokenize-truncated-zstd",
        lambda ws: _tokenize_bytes(ws, _truncated_zstd(ws.dir / "in.jsonl.zst"), "--on_error", "skip"),
        r"in\.jsonl\.zst:\d+: cannot decompress \(the file ends inside a zstd frame: truncated\)",
    ),
    BadInput(
        "tokenize-hf-dataset-state-escapes-its-directory",
        lambda ws: _tokenize_bytes(ws, _hf_dataset_escaping(ws.dir / "dataset")),
        r"state\.json: data file '\.\./outside\.arrow' is not the name of a file in",
    ),
    BadInput(
        "tokenize-directory-without-inputs",
        lambda ws: _tokenize_bytes(ws, _directory(ws.dir / "empty")),
        r"empty: no input files in this directory ending in \.jsonl\.zst",
    ),
    BadInput(
        "tokenize-pattern-matches-nothing",
        lambda ws: _tokenize_bytes(ws, _parquet(ws.dir / "corpus" / "a.parquet").parent, "--pattern", "*.jsonl"),
        r"no input files in this directory matching --pattern '\*\.jsonl'",
    ),
    BadInput(
        "tokenize-shard-index-out-of-range",
        lambda ws: _tokenize_bytes(ws, _parquet(ws.dir / "in.parquet"), "--num_shards", "8", "--shard_index", "8"),
        r"--shard_index 8 is out of range for --num_shards 8",
    ),
    BadInput(
        "merge-corpora-of-different-dtypes",
        lambda ws: _merge(ws, _corpus(ws.dir / "a"), _corpus(ws.dir / "b", "int32")),
        r"b holds int32 tokens but .*a holds uint16: corpora of different tokenizers cannot be merged",
    ),
    BadInput(
        "merge-into-one-of-its-inputs",
        lambda ws: _merge(ws, _corpus(ws.dir / "a"), _corpus(ws.dir / "b"), output="b", force=True),
        r"the output .*b is also an input",
        unchanged=lambda ws: [ws.dir / "a.bin", ws.dir / "a.idx", ws.dir / "b.bin", ws.dir / "b.idx"],
    ),
    BadInput(
        "merge-glob-missing-a-shard",
        lambda ws: _merge(ws, _shards(ws, (0, 2), 3)),
        r"matches 2 of the 3 shards of .*train: shard 1 missing",
    ),
    BadInput(
        "inspect-glob-matches-nothing",
        lambda ws: ["data", "inspect", "--prefix", ws.dir / "shards-*"],
        r"no tokenized corpus matches '.*shards-\*'",
    ),
    BadInput(
        "run-path-prefix-glob-matches-nothing",
        lambda ws: [
            "run",
            "--config_file_path",
            TINY_CONFIG,
            *tiny_overrides(
                ws.corpus(), ws.dir / "experiment", **{"data.train_dataset.config.path_prefix": ws.dir / "train-*"}
            ),
        ],
        r"no tokenized corpus matches '.*train-\*'",
    ),
    # Config composition
    BadInput(
        "compose-missing-default",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: [common.yaml, absent.yaml]\n", "common.yaml": "{}"}),
        r"run\.yaml: defaults\[1\]: config file not found: .*absent\.yaml$",
    ),
    BadInput(
        "compose-cycle",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: [a.yaml]\n", "a.yaml": "defaults: [run.yaml]\n"}),
        r"a\.yaml: defaults\[0\]: the defaults include each other in a cycle: .*run\.yaml → .*a\.yaml → .*run\.yaml",
    ),
    BadInput(
        "compose-default-not-a-mapping",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: [list.yaml]\n", "list.yaml": "[1, 2]\n"}),
        r"run\.yaml: defaults\[0\]: .*list\.yaml must hold a mapping at the top level",
    ),
    BadInput(
        "compose-defaults-not-a-list",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: common.yaml\n"}),
        r"run\.yaml: defaults must be a list of YAML files",
    ),
    BadInput(
        "compose-default-not-a-path",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: [{model: tiny}]\n"}),
        r"run\.yaml: defaults\[0\] must be the path of a YAML file, not \{'model': 'tiny'\}",
    ),
    BadInput(
        "compose-default-yaml-syntax",
        lambda ws: _validate_composed(ws, {"run.yaml": "defaults: [bad.yaml]\n", "bad.yaml": "a: [1,\n"}),
        r"run\.yaml: defaults\[0\]: YAML syntax error in .*bad\.yaml at line",
    ),
    BadInput(
        "compose-default-crafted-python-tag",
        lambda ws: _validate_composed(
            ws,
            {
                "run.yaml": "defaults: [crafted.yaml]\n",
                "crafted.yaml": "a: !!python/object/apply:os.system [touch PWNED]\n",
            },
        ),
        r"run\.yaml: defaults\[0\]: YAML syntax error in .*crafted\.yaml",
    ),
    BadInput(
        "override-append-to-a-scalar",
        lambda ws: ["validate", "--config_file_path", TINY_CONFIG, "training.max_steps+=[1]"],
        r"bad override 'training\.max_steps\+=\[1\]': training\.max_steps is 50, not a list; \+= appends to a list",
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
        lambda ws: _run(ws, _write_text(ws.dir / "config.yaml", f"defaults: [{TINY_CONFIG}]\n"), ws.dir),
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


def _validate_composed(ws: Workspace, files: dict[str, str]) -> list:
    """``llm_gym validate`` of ``run.yaml`` among ``files``, written into the case's directory."""
    for name, text in files.items():
        (ws.dir / name).write_text(text)
    return ["validate", "--config_file_path", ws.dir / "run.yaml"]


# Misleading behaviour: helpers of its rows


def _write_text(path: Path, text: str) -> Path:
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
    def __init__(self, config: GELUMLPConfig, dim: int, bias: bool):
        super().__init__(config, dim, bias)
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
    config = _write_text(ws.dir / "tiny.yaml", f"defaults: [{TINY_CONFIG}]\n")
    settings = {"user_modules": "[user_mlps]", "model.config.n_layer": 1, "checkpointing.every_n_steps": 0,
                "model.config.mlp": f"{{type_hint: {mlp}, config: {{hidden_dim: 64}}}}"}  # fmt: skip
    return ["run", "--config_file_path", config, *tiny_overrides(ws.corpus(), ws.dir / "experiment", **settings),
            *overrides]  # fmt: skip


USER_KERNELS = """
import torch.nn.functional as F
from torch import nn

from llm_gym.models.attention import AttentionKernelConfig
from llm_gym.registry import register_component


@register_component("attention", "PlainKernel", config_model=AttentionKernelConfig)
class PlainKernel(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()

    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value, is_causal=True)
"""


def _validate_with_user_kernel(ws: Workspace, *overrides: str) -> list:
    """``llm_gym validate`` of the tiny config whose attention kernel is a user module's, knowing no documents."""
    (ws.dir / "user_kernels.py").write_text(USER_KERNELS)
    config = _write_text(ws.dir / "tiny.yaml", f"defaults: [{TINY_CONFIG}]\nuser_modules: [user_kernels]\n")
    return ["validate", "--config_file_path", config, "model.config.attention={type_hint: PlainKernel}", *overrides]


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


def _pickled_hf_dir(ws: Workspace) -> Path:
    """A GPT-2 config.json beside a pytorch_model.bin whose unpickling would write the marker."""
    config = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 8, "n_positions": 4, "n_embd": 8, "n_layer": 1,
              "n_head": 2}  # fmt: skip
    directory = _text_written(ws.dir / "hf" / "config.json", json.dumps(config)).parent
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(ws.marker)))
    return directory


class _WritesMarker:
    """Unpickling it creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _text_written(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _moved(source: Path, target: Path) -> Path:
    shutil.move(source, target)
    return target


# The pretraining recipe: schedules, parameter groups, Muon, z-loss, cooldown branches.
def _damaged_checkpoint(ws: Workspace) -> Path:
    checkpoint = ws.checkpoint()
    shard = next(checkpoint.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    return checkpoint


_AS_THE_WORKSPACE_RUN = {"model.config.n_layer": 2, "lr_scheduler.config.warmup_steps": 1}
"""The settings of ``Workspace.experiment``'s run, for a branch from it to be refused for what is wrong alone."""
CASES += [
    BadInput(
        "wsd-decay-steps-and-fraction",
        lambda ws: _validate(
            ws,
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
        lambda ws: _validate(
            ws,
            lr_scheduler="{type_hint: Sequential, config: {milestones: [], schedules: "
            "[{type_hint: ConstantLR}, {type_hint: ConstantLR}]}}",
        ),
        r"lr_scheduler\.config: .*2 schedules need 1 milestones, got 0",
    ),
    BadInput(
        "parameter-group-matches-nothing",
        lambda ws: _validate(ws, parameter_groups="[{match: 'embedding.*', lr_multiplier: 0.1}]"),
        r"parameter_groups\[0\]\.match: 'embedding\.\*' matches no parameter of the model",
    ),
    BadInput(
        "muon-adamw-beta-of-one",
        lambda ws: _validate(
            ws, **{"optimizer.type_hint": "Muon", "optimizer.config.adamw": "{lr: 1.0e-3, betas: [1.0, 0.95]}"}
        ),
        r"optimizer\.config\.adamw\.betas\[0\]: Input should be less than 1",
    ),
    BadInput(
        "muon-without-adamw-settings",
        lambda ws: _validate(ws, **{"optimizer.type_hint": "Muon"}),
        r"optimizer\.config\.adamw: missing required key",
    ),
    BadInput(
        "negative-z-loss-weight",
        lambda ws: _validate(ws, **{"training.z_loss_weight": -1e-4}),
        r"training\.z_loss_weight: .*greater than or equal to 0",
    ),
    BadInput(
        "branch-and-warm-start",
        lambda ws: _validate(
            ws, **{"checkpointing.branch_from": ws.dir / "a", "checkpointing.warm_start_from": ws.dir / "b"}
        ),
        r"set branch_from .* or warm_start_from .*, not both",
    ),
    BadInput(
        "branch-from-missing-checkpoint",
        lambda ws: _run(ws, **{"checkpointing.branch_from": ws.dir / "absent"}),
        r"checkpointing\.branch_from: checkpoint directory .*absent does not exist",
        subprocess=True,
    ),
    BadInput(
        "branch-from-damaged-checkpoint",
        lambda ws: _run(ws, **{"checkpointing.branch_from": _damaged_checkpoint(ws), **_AS_THE_WORKSPACE_RUN}),
        r"checkpoint .*step_2 is corrupted: .*\.distcp",
        unchanged=lambda ws: [ws.dir / "experiment"],
        subprocess=True,
    ),
]
