"""``llm_gym evaluate``: a checkpoint's loss, perplexity and bits per byte on corpora, and its accuracy on tasks.

Runs on one process or on every rank under torchrun: each rank holds the whole model (whatever layout wrote the
checkpoint) and scores its share of the samples, and the sums are taken over ranks, so the figures do not
depend on the number of ranks beyond float rounding. The model is rebuilt from the checkpoint's own config.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.config.loading import format_validation_error
from llm_gym.data.collators import CausalLMCollator
from llm_gym.data.datasets import PackedDataset, PackedDatasetConfig
from llm_gym.data.indexed import idx_path
from llm_gym.data.loaders import eval_batches
from llm_gym.errors import UserError
from llm_gym.evaluation.language_modeling import LanguageModelingTotals, language_modeling_totals
from llm_gym.evaluation.multiple_choice import MultipleChoiceResult, score_multiple_choice
from llm_gym.evaluation.task_formats import TASK_FORMATS, load_task
from llm_gym.evaluation.text_bytes import token_byte_lengths
from llm_gym.inference.trained_model import TrainedModel, load_trained_model
from llm_gym.models.contract import reads_document_ids
from llm_gym.parallel.distributed import DistributedEnvironment
from llm_gym.registry import Component, ResolverRegistry

REPORT_FORMAT = "llm_gym.evaluation/1"
EVALUATIONS_DIR = "evaluations"


@dataclass(frozen=True)
class TaskSpec:
    """``--tasks [NAME=][FORMAT:]PATH``: FORMAT defaults to ``jsonl``; NAME to the format, or for ``jsonl`` to
    the file's name without ``.jsonl``."""

    name: str
    format: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "TaskSpec":
        name, has_name, rest = text.partition("=")
        if not has_name:
            name, rest = "", text
        task_format, has_format, path = rest.partition(":")
        if not has_format:
            task_format, path = "jsonl", rest
        if task_format not in TASK_FORMATS:
            raise UserError(f"--tasks {text}: unknown task format '{task_format}'; known: {', '.join(TASK_FORMATS)}")
        if not path:
            raise UserError(f"--tasks {text}: expected [NAME=][FORMAT:]PATH, e.g. code_lines:data/demo/test.jsonl")
        default_name = Path(path).name.removesuffix(".jsonl") if task_format == "jsonl" else task_format
        return cls(name or default_name, task_format, Path(path))


@dataclass(frozen=True)
class EvaluationRequest:
    prefixes: Sequence[str] = ()
    """Split names of the run's ``data.eval_datasets``, or paths of tokenized corpora (``PREFIX.bin/.idx``);
    empty with no tasks: every split of the run."""
    tasks: Sequence[TaskSpec] = ()
    harness_tasks: Sequence[str] = ()
    harness_include_path: Path | None = None
    """A directory of lm-evaluation-harness task YAML files of one's own."""
    max_samples: int | None = None
    """Per corpus, its first samples; None = all."""
    max_examples: int | None = None
    """Per task (harness tasks too), its first examples; None = all."""
    micro_batch_size: int | None = None
    """Samples (or choices) per forward pass; None = the run's ``training.micro_batch_size``."""

    def fingerprint(self) -> str:
        """Names the report file: the same request on the same checkpoint writes the same file."""
        described = {
            "prefixes": list(self.prefixes),
            "tasks": [[task.name, task.format, str(task.path)] for task in self.tasks],
            "harness_tasks": list(self.harness_tasks),
            "harness_include_path": str(self.harness_include_path) if self.harness_include_path else None,
            "max_samples": self.max_samples,
            "max_examples": self.max_examples,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class EvaluationReport:
    checkpoint_dir: Path
    step: int
    config_fingerprint: str
    tokenizer: str
    sequence_length: int
    max_samples: int | None
    corpora: dict[str, tuple[str, int, LanguageModelingTotals]] = field(default_factory=dict)
    """name → (what was read, samples, totals)."""
    tasks: dict[str, tuple[TaskSpec, MultipleChoiceResult]] = field(default_factory=dict)
    harness: dict[str, dict[str, float]] = field(default_factory=dict)
    """lm-evaluation-harness task → its metrics."""
    path: Path | None = None
    """Where the JSON goes."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "checkpoint": str(self.checkpoint_dir),
            "step": self.step,
            "config_fingerprint": self.config_fingerprint,
            "tokenizer": self.tokenizer,
            "sequence_length": self.sequence_length,
            "max_samples": self.max_samples,
            "language_modeling": {
                name: {
                    "source": source,
                    "samples": samples,
                    "tokens": totals.tokens,
                    "bytes": totals.bytes,
                    **totals.metrics(),
                }
                for name, (source, samples, totals) in self.corpora.items()
            },
            "tasks": {
                name: {
                    "format": spec.format,
                    "path": str(spec.path),
                    "examples": result.examples,
                    **result.metrics(),
                    "chance": result.chance,
                }
                for name, (spec, result) in self.tasks.items()
            },
            "harness": self.harness,
        }


def config_fingerprint(resolved_config: dict[str, Any]) -> str:
    """``sha256:`` and 16 hex digits of the run's resolved config, canonical JSON: equal configs, equal prints."""
    canonical = json.dumps(resolved_config, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _DatasetNode(BaseModel):
    dataset: Component("dataset")


def _corpus(
    trained: TrainedModel, prefix: str, sequence_length: int, registry: ResolverRegistry
) -> tuple[str, torch.utils.data.Dataset]:
    """``(what is read, dataset)`` for a split name of the run or a corpus path prefix."""
    splits = trained.resolved_config.get("data", {}).get("eval_datasets") or {}
    if prefix in splits:
        section = {"dataset": splits[prefix]}
        try:
            node = registry.validate(_DatasetNode, section).dataset
        except ValidationError as error:
            raise UserError(
                f"the run's data.eval_datasets.{prefix} cannot be built here: "
                f"{format_validation_error(error, _DatasetNode, section, registry)}"
            ) from None
        path_prefix = getattr(node.config, "path_prefix", None)
        source = f"data.eval_datasets.{prefix}" + (f" ({path_prefix})" if path_prefix else "")
        return source, registry.build_component_by_config(node)
    if not idx_path(prefix).is_file():
        known = ", ".join(splits) or "none"
        raise UserError(
            f"--prefix {prefix}: not a split of the run (its data.eval_datasets: {known}) "
            f"and no tokenized corpus {idx_path(prefix)}"
        )
    return prefix, PackedDataset(PackedDatasetConfig(path_prefix=prefix, sequence_length=sequence_length))


def _unique_names(names: Sequence[str], what: str) -> None:
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"two {what} are both named {duplicates[0]}: name them apart ({what} NAME=...)")


def evaluate_checkpoint(
    checkpoint_path: Path,
    request: EvaluationRequest,
    env: DistributedEnvironment,
    output_path: Path | None = None,
    harness: Callable[..., dict[str, dict[str, float]]] | None = None,
    user_modules: Sequence[str] = (),
) -> EvaluationReport:
    """Every rank calls this; every rank returns the same report. ``output_path`` (default
    ``default_report_path``) is only recorded in the report: ``evaluation_report.write_report`` writes it.
    ``harness`` is ``harness.run_harness_tasks`` when lm-evaluation-harness is installed. ``user_modules``: see
    ``load_trained_model``; they also register the run's datasets of the user's own."""
    if request.harness_tasks and harness is None:
        raise UserError("--harness_tasks needs lm-evaluation-harness: pip install 'llm_gym[harness]'")
    if request.harness_tasks and env.world_size > 1:
        raise UserError("--harness_tasks runs on one process: launch it without torchrun")
    trained = load_trained_model(checkpoint_path, env.device, user_modules)
    registry = make_registry()  # with what user_modules declared
    path = output_path or default_report_path(trained.checkpoint_dir, trained.step, request)
    resolved = trained.resolved_config
    tokenizer = trained.load_tokenizer()
    training = resolved.get("training", {})
    sequence_length = int(training.get("sequence_length") or trained.model.sequence_length)
    micro_batch_size = request.micro_batch_size or int(training.get("micro_batch_size") or 8)
    prefixes = list(request.prefixes)
    if not prefixes and not request.tasks and not request.harness_tasks:
        prefixes = list(resolved.get("data", {}).get("eval_datasets") or {})
        if not prefixes:
            raise UserError("the run has no data.eval_datasets: name what to evaluate with --prefix or --tasks")
    corpora = {prefix: _corpus(trained, prefix, sequence_length, registry) for prefix in prefixes}
    names = {prefix: Path(prefix).name if source == prefix else prefix for prefix, (source, _) in corpora.items()}
    _unique_names(list(names.values()), "--prefix")
    _unique_names([task.name for task in request.tasks], "--tasks")
    tasks = [(spec, load_task(spec.format, spec.path, request.max_examples)) for spec in request.tasks]
    report = EvaluationReport(
        trained.checkpoint_dir,
        trained.step,
        config_fingerprint(resolved),
        str(resolved.get("data", {}).get("tokenizer", "byte")),
        sequence_length,
        request.max_samples,
        path=path,
    )
    token_bytes = token_byte_lengths(tokenizer, trained.model.vocab_size)
    # A model that trained on the documents of its samples is evaluated on them too, as its run's validation was.
    collator = CausalLMCollator(tokenizer.eos_id if reads_document_ids(trained.model) else None)
    for prefix, (source, dataset) in corpora.items():
        batches = eval_batches(dataset, collator, micro_batch_size, env.rank, env.world_size, request.max_samples)
        totals = language_modeling_totals(trained.model, batches, token_bytes, env.device)
        samples = len(dataset) if request.max_samples is None else min(len(dataset), request.max_samples)
        report.corpora[names[prefix]] = (source, samples, totals)
    for spec, examples in tasks:
        result = score_multiple_choice(
            trained.model,
            tokenizer,
            examples,
            trained.model.sequence_length,
            micro_batch_size,
            env.device,
            rank=env.rank,
            world_size=env.world_size,
        )
        report.tasks[spec.name] = (spec, result)
    if request.harness_tasks:
        report.harness = harness(
            trained, request.harness_tasks, micro_batch_size, request.harness_include_path, request.max_examples
        )
    return report


def default_report_path(checkpoint_dir: Path, step: int, request: EvaluationRequest) -> Path:
    """``<experiment>/evaluations/step_<N>_<request>.json`` for a checkpoint inside an experiment directory."""
    if checkpoint_dir.parent.name != "checkpoints":
        raise UserError(
            f"{checkpoint_dir} is not inside an experiment's checkpoints/ directory: say where the results go "
            "with --output_path"
        )
    return checkpoint_dir.parent.parent / EVALUATIONS_DIR / f"step_{step}_{request.fingerprint()}.json"
