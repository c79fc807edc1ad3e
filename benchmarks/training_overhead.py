"""llm_gym's speed on CPU with its defaults and with its performance switches, against a plain PyTorch loop.

All train the same ``DecoderLM`` (built from the same config node, same seed) with the same batch shape,
AdamW and gradient clipping, in this one process with the same thread count. The plain loop is the one a user
writes by hand: eager, ``torch.optim.AdamW`` as torch picks its implementation, random tokens. llm_gym reads a
real byte-tokenized ``.bin/.idx`` corpus written here and logs as its defaults do (a metrics.jsonl line every
10 steps), with one final evaluation batch and a final checkpoint outside the measured steps. It runs with
its defaults (the shipped configs' FSDP2, on one rank), with ``NoParallelism``, and with each switch: AdamW's
``foreach`` and ``fused`` implementations, ``training.compile`` of each block and of the whole model, and the
best of them together. Runs are interleaved (plain, defaults, ..., plain, ...) after an untimed round, so drift
on the machine hits all alike; the medians over repeats are compared. The untimed round runs on an empty
inductor cache: its time to the first step is what compiling costs a first run, the repeats' what it costs
a run after it.

    python benchmarks/training_overhead.py [--steps 20] [--warmup_steps 3] [--repeats 5] [--threads N]
                                           [--smoke]

Exit status 1 when llm_gym with its defaults is below 0.99 × the plain loop in tokens/s, or with its best
switches below 1.10 × (not with --smoke).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from llm_gym.models.flops import num_parameters
from training_harness import (
    RunFigures,
    load_run_config,
    model_of,
    run_llm_gym,
    run_plain_loop,
    write_byte_corpus,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "config_files" / "tiny_cpu.yaml"
PLAIN = "plain PyTorch loop"
DEFAULTS = "llm_gym defaults"
BEST = "llm_gym best switches"
VARIANTS = {
    PLAIN: {},
    DEFAULTS: {},
    "llm_gym NoParallelism": {"parallelism.type_hint": "NoParallelism"},
    "llm_gym foreach AdamW": {"optimizer.config.foreach": "true"},
    "llm_gym fused AdamW": {"optimizer.config.fused": "true"},
    "llm_gym compile: blocks": {"training.compile": "blocks"},
    "llm_gym compile: model": {"training.compile": "model"},
    BEST: {"training.compile": "model", "optimizer.config.fused": "true"},
}
"""Each variant's overrides on top of the benchmark's shape; the best switches are those measured fastest here."""
TARGETS = {DEFAULTS: 0.99, BEST: 1.10}
"""The least tokens/s, as a ratio to the plain loop's, that passes."""

# Large enough that a step does real work (21 MFLOP per token, 44 GFLOP per step), small enough for a laptop.
SHAPE = {
    "model.config.dim": 256,
    "model.config.n_layer": 4,
    "model.config.n_head": 4,
    "model.config.n_head_kv": 2,
    "model.config.mlp.config.hidden_dim": 704,
    "training.sequence_length": 256,
    "training.micro_batch_size": 8,
}
SMOKE_SHAPE = {
    **SHAPE,
    "model.config.dim": 32,
    "model.config.n_layer": 1,
    "model.config.mlp.config.hidden_dim": 64,
    "training.sequence_length": 16,
    "training.micro_batch_size": 2,
}


def run_overrides(shape: dict, corpus: Path, max_steps: int, switches: dict) -> list[str]:
    overrides = {
        **shape,
        "training.max_steps": max_steps,
        "training.gradient_accumulation_steps": 1,
        "training.eval_interval": 1_000_000,
        "training.eval_samples": 1,
        "training.device": "cpu",
        "checkpointing.every_n_steps": 0,
        "checkpointing.keep_last": 1,
        "lr_scheduler.config.warmup_steps": 1,
        "data.train_dataset.config.path_prefix": corpus,
        "data.eval_datasets.val.config.path_prefix": corpus,
        **switches,
    }
    return [f"{key}={value}" for key, value in overrides.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per run")
    parser.add_argument("--warmup_steps", type=int, default=3, help="steps per run before the measurement (≥ 1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps, 1 repeat: checks it runs")
    args = parser.parse_args()
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    steps, warmup_steps, repeats = (2, 1, 1) if args.smoke else (args.steps, args.warmup_steps, args.repeats)
    if warmup_steps < 1:
        parser.error("--warmup_steps must be at least 1: the first step is timed apart")
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, list[RunFigures]] = {variant: [] for variant in VARIANTS}
    cold: dict[str, RunFigures] = {}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        # An empty inductor cache: the untimed round compiles as a first run on a machine does.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor_cache")
        corpus = work / "corpus"
        write_byte_corpus(corpus, Path(os.__file__).parent, "a*.py")

        def run(variant: str, max_steps: int, name: str) -> RunFigures:
            # Each run compiles anew, as a new process would; what inductor wrote to its cache stays.
            torch._dynamo.reset()
            overrides = run_overrides(shape, corpus, max_steps, VARIANTS[variant])
            if variant == PLAIN:
                return run_plain_loop(load_run_config(TINY_CONFIG, overrides), warmup_steps, torch.device("cpu"))
            return run_llm_gym(TINY_CONFIG, overrides, work / f"{name}_variant_{list(VARIANTS).index(variant)}", warmup_steps)

        # One untimed round first: the first use of each path in a process pays one-off costs.
        for variant in VARIANTS if not args.smoke else ():
            cold[variant] = run(variant, warmup_steps + 1, "untimed")
        for repeat in range(repeats):
            for variant in VARIANTS:
                figures = run(variant, warmup_steps + steps, f"repeat_{repeat}")
                results[variant].append(figures)
                print(
                    f"  repeat {repeat + 1}/{repeats} {variant:<26}{figures.median_step_tokens_per_s:10,.0f} tokens/s"
                    f" (window {figures.tokens_per_s:,.0f}, {figures.median_step_tokens_per_cpu_s:,.0f} per CPU s,"
                    f" first step after {figures.first_step_s:.1f} s)",
                    flush=True,
                )
        config = load_run_config(TINY_CONFIG, run_overrides(shape, corpus, warmup_steps + steps, {}))

    model, parameters = config.model.config, num_parameters(model_of(config))
    print(
        f"\nmodel: DecoderLM width {model.dim}, {model.n_layer} layers, {model.n_head} heads ({model.n_head_kv} kv),"
        f" SwiGLU {model.mlp.config.hidden_dim}, vocab {model.vocab_size}: {parameters:,} parameters"
    )
    print(
        f"batch: {config.training.micro_batch_size} × {config.training.sequence_length} tokens; {steps} measured"
        f" steps after {warmup_steps} warm-up, {repeats} interleaved repeats, median"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, Python {platform.python_version()}"
    )

    def median(variant: str, figure: str) -> float:
        return statistics.median(getattr(figures, figure) for figures in results[variant])

    columns = {
        "tokens/s": "median_step_tokens_per_s",
        "window tokens/s": "tokens_per_s",
        "tokens/CPU s": "median_step_tokens_per_cpu_s",
    }
    print(
        "tokens/s: at the median step time of a run; window: over all measured steps of a run; CPU s: per second"
        " of this process's CPU time in the median step. Each the median over repeats; 'vs plain' the ratio.\n"
        "first step: seconds from the start of a run to the end of its first step, on an empty inductor cache"
        " (the untimed round) and on the cache it left (median over repeats).\n"
        f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    cold_column = "first step, cold" if cold else ""
    print(
        f"{'variant':<28}"
        + "".join(f"{name:>17}{'vs plain':>10}" for name in columns)
        + f"{cold_column:>18}{'first step':>12}"
    )
    ratios: dict[str, float] = {}
    for variant in VARIANTS:
        line = f"{variant:<28}"
        for figure in columns.values():
            ratio = median(variant, figure) / median(PLAIN, figure)
            line += f"{median(variant, figure):>17,.0f}{ratio:>10.3f}"
            ratios.setdefault(variant, ratio)  # the first column's: tokens/s
        cold_first = f"{cold[variant].first_step_s:.1f} s" if cold else ""
        print(line + f"{cold_first:>18}{median(variant, 'first_step_s'):>10.1f} s")
    # The verdict is on wall-clock tokens/s, what a user waits for; on a busy machine read the CPU-time column.
    print()
    passed = True
    for variant, target in TARGETS.items():
        verdict = "PASS" if ratios[variant] >= target else "FAIL"
        passed &= verdict == "PASS"
        switches = ", ".join(f"{key}={value}" for key, value in VARIANTS[variant].items()) or "none"
        print(
            f"{verdict}: {variant} (switches: {switches}): {ratios[variant]:.3f} × the plain loop's tokens/s"
            f" (target: ≥ {target})"
        )
    return 0 if passed or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
