"""What the training benchmarks share: corpora written to disk, a step clock, and the plain PyTorch loop
that llm_gym is compared against.

llm_gym is measured through ``run_training``, the path ``llm_gym run`` takes. A ``StepClock`` logger
(registered here the way a user registers their own component) notes the wall-clock time at the end of every
optimizer step, so the steady-state figure includes everything the loop does per step (loading, step,
clipping, metrics, logging) and excludes only start-up, the final evaluation and the final checkpoint.
"""

import contextlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from llm_gym.assembly import make_registry
from llm_gym.config.app import CompileScope, TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.data.indexed import IndexedDatasetWriter, token_dtype
from llm_gym.data.tokenization import tokenize_files
from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import ProgressUpdate
from llm_gym.registry import register_component
from llm_gym.training.run import run_training

LOGGERS = "[{type_hint: MetricsJsonl, config: {}}, {type_hint: StepClock, config: {}}]"


@register_component("logger", "StepClock", injected=("experiment_dir", "resolved_config", "resume_step"))
class StepClock(Subscriber):
    """The time at which the loop announced each finished optimizer step (``ProgressUpdate``)."""

    message_types = (ProgressUpdate,)
    latest: ClassVar["StepClock | None"] = None

    def __init__(self, experiment_dir: Path, resolved_config: dict, resume_step: int | None):
        self.times: dict[int, tuple[float, float]] = {}
        StepClock.latest = self

    def consume(self, message: ProgressUpdate) -> None:
        self.times[message.step] = (time.perf_counter(), time.process_time())


def write_byte_corpus(prefix: Path, source_dir: Path, pattern: str) -> None:
    """A real corpus (the files of ``source_dir`` matching ``pattern``) through ``tokenize_files``, byte tokenizer."""
    jsonl = prefix.with_suffix(".jsonl")
    with jsonl.open("w", encoding="utf-8") as file:
        for path in sorted(source_dir.glob(pattern)):
            file.write(json.dumps({"text": path.read_text(encoding="utf-8")}) + "\n")
    tokenize_files([jsonl], "byte", prefix, num_workers=0)


def write_random_corpus(prefix: Path, vocab_size: int, num_tokens: int, seed: int = 0) -> None:
    """Uniformly random token ids in documents of 4,096 tokens: the throughput does not depend on the text."""
    document_length = 4096
    num_documents = -(-num_tokens // document_length)
    rng = np.random.default_rng(seed)
    writer = IndexedDatasetWriter(prefix, token_dtype(vocab_size))
    writer.add_documents(
        rng.integers(0, vocab_size, num_documents * document_length), np.full(num_documents, document_length)
    )
    writer.finalize()


@dataclass(frozen=True)
class RunFigures:
    """The steps after the warm-up of one run."""

    tokens_per_step: int
    step_times: list[tuple[float, float]]
    """Wall-clock and process CPU seconds of each step (on a GPU only their sum is meaningful for the plain loop,
    which does not wait for the device between steps)."""
    logged_tokens_per_s: float | None = None
    """Median of ``tokens_per_s`` in metrics.jsonl over the same steps (llm_gym only)."""
    logged_mfu: float | None = None
    peak_memory_gib: float | None = None
    first_step_s: float | None = None
    """Wall-clock seconds from the start of the run (building included) to the end of its first step: where
    ``torch.compile`` pays its compilation."""

    @property
    def tokens_per_s(self) -> float:
        """Over the whole measured window."""
        return self.tokens_per_step * len(self.step_times) / sum(wall for wall, _ in self.step_times)

    @property
    def median_step_tokens_per_s(self) -> float:
        """At the median step duration: robust to bursts of other load on the machine."""
        return self.tokens_per_step / statistics.median(wall for wall, _ in self.step_times)

    @property
    def median_step_tokens_per_cpu_s(self) -> float:
        """Per second of this process's CPU time in the median step: the work done, whatever else runs."""
        return self.tokens_per_step / statistics.median(cpu for _, cpu in self.step_times)


def _durations(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(wall - wall0, cpu - cpu0) for (wall0, cpu0), (wall, cpu) in pairwise(stamps)]


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run_llm_gym(config_path: Path, overrides: Sequence[str], output_dir: Path, warmup_steps: int) -> RunFigures:
    """One ``run_training`` of more than ``warmup_steps`` steps; the logged figures are of the train lines after
    the warm-up (every step's with ``training.log_interval=1``)."""
    started = time.perf_counter()
    run_training(config_path, [*overrides, f"experiment.output_dir={output_dir}", f"loggers={LOGGERS}"])
    times = StepClock.latest.times
    rows = {
        row["step"]: row
        for row in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())
        if row["split"] == "train"
    }
    last = max(times)
    if last <= warmup_steps:
        raise ValueError(f"{last} steps leave nothing after {warmup_steps} warm-up steps")
    steady = [row for step, row in rows.items() if step > warmup_steps]
    return RunFigures(
        tokens_per_step=rows[last]["tokens_seen"] // last,
        step_times=_durations([times[step] for step in range(warmup_steps, last + 1)]),
        logged_tokens_per_s=_median([row["tokens_per_s"] for row in steady]),
        logged_mfu=_median([row["mfu"] for row in steady if row.get("mfu") is not None]),
        peak_memory_gib=max((row.get("peak_memory_gib") or 0.0 for row in steady), default=0.0) or None,
        first_step_s=times[1][0] - started,
    )


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def load_run_config(config_path: Path, overrides: Sequence[str]) -> TrainingAppConfig:
    return load_config(config_path, TrainingAppConfig, overrides, registry=make_registry())[0]


def model_of(config: TrainingAppConfig, device: torch.device | str = "meta") -> torch.nn.Module:
    """The config's model, built on ``device`` (on the meta device: its shapes, for counting)."""
    with torch.device(device):
        return make_registry().build_component_by_config(config.model)


def run_plain_loop(config: TrainingAppConfig, warmup_steps: int, device: torch.device) -> RunFigures:
    """The loop a user writes by hand for the same model, batch shape and AdamW: forward, loss, backward,
    clip, step. On a GPU: bf16 autocast and, with ``training.compile``, ``torch.compile`` of the whole model.

    The model is built from the config's model node with the experiment seed, as llm_gym builds it. Its
    batches are random tokens already on the device, a new batch every micro step, as llm_gym trains on;
    nothing is read back to the host between steps.
    """
    started = time.perf_counter()
    settings = config.training
    torch.set_float32_matmul_precision(settings.float32_matmul_precision)
    model = model_of(config, device)
    torch.manual_seed(config.experiment.seed)
    with torch.no_grad():
        model.init_weights()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **config.optimizer.config.model_dump())
    forward = torch.compile(model) if settings.compile is not CompileScope.NONE else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    vocab_size = config.model.config.vocab_size
    accumulation = settings.gradient_accumulation_steps
    shape = (settings.max_steps * accumulation, settings.micro_batch_size, settings.sequence_length + 1)
    batches = iter(torch.randint(0, vocab_size, shape, device=device))

    def step() -> None:
        for _ in range(accumulation):
            tokens = next(batches)
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            with autocast:
                logits = forward(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            (loss / accumulation).backward()
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    _synchronize(device)
    first_step_s = time.perf_counter() - started
    for _ in range(warmup_steps - 1):
        step()
    _synchronize(device)
    stamps = [_now()]
    for _ in range(settings.max_steps - warmup_steps):
        step()
        stamps.append(_now())
    _synchronize(device)
    stamps[-1] = _now()
    return RunFigures(
        tokens_per_step=settings.micro_batch_size * settings.sequence_length * accumulation,
        step_times=_durations(stamps),
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        first_step_s=first_step_s,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
