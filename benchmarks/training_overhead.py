"""llm_gym's speed on CPU with its defaults and with its performance switches, against a plain PyTorch loop.

All train the same ``DecoderLM`` (built from the same config node, same seed) with the same batch shape,
AdamW and gradient clipping, in this one process with the same thread count. The plain loop is the one a user
writes by hand: eager, float32, ``torch.optim.AdamW`` as torch picks its implementation, random tokens.
llm_gym reads a real byte-tokenized ``.bin/.idx`` corpus written here and logs as its defaults do (a
metrics.jsonl line every 10 steps), with one final evaluation batch and a final checkpoint outside the
measured steps. It runs with its defaults (the shipped configs' FSDP2, on one rank) and with each switch:
AdamW's ``foreach`` and ``fused`` implementations, ``training.compile`` of each block and of the whole model,
``training.float32_matmul_precision: medium`` (bfloat16 products, as TF32 is on GPUs: it changes the rounding),
the best switches that keep float32 products, and the best of all.

A shared machine's speed drifts by more than the differences measured here, so every llm_gym run is compared
with the plain runs just before and after it (one plain run for every two llm_gym runs; their geometric mean),
and each round starts at another variant. The ratios reported are the medians over rounds of those paired
ratios. The untimed first round runs on an empty inductor cache: its time to the first step is what compiling
costs a first run; the rounds' medians, what it costs a run after it.

    python benchmarks/training_overhead.py [--steps 12] [--warmup_steps 3] [--repeats 5] [--threads N]
                                           [--variants NAME ...] [--smoke]

Exit status 1 when llm_gym with its defaults is below 0.99 × the plain loop in tokens/s, or with its best
switches below 1.10 × (not with --smoke).
"""

import argparse
import math
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
BEST_FLOAT32 = "llm_gym best float32 switches"
BEST = "llm_gym best switches"
COMPILE_MODEL = {"training.compile": "model"}
FUSED = {"optimizer.config.fused": "true"}
MEDIUM_PRECISION = {"training.float32_matmul_precision": "medium"}
VARIANTS = {
    PLAIN: {},
    DEFAULTS: {},
    "llm_gym foreach AdamW": {"optimizer.config.foreach": "true"},
    "llm_gym fused AdamW": FUSED,
    "llm_gym compile: blocks": {"training.compile": "blocks"},
    "llm_gym compile: model": COMPILE_MODEL,
    "llm_gym matmul precision medium": MEDIUM_PRECISION,
    BEST_FLOAT32: {**COMPILE_MODEL, **FUSED},
    BEST: {**COMPILE_MODEL, **FUSED, **MEDIUM_PRECISION},
}
"""Each variant's overrides on top of the benchmark's shape; the best switches are those measured fastest here."""
TARGETS = {DEFAULTS: 0.99, BEST: 1.10}
"""The least tokens/s, as a ratio to the plain loop's, that passes."""
RUNS_PER_PLAIN_RUN = 2
RATIOS = {"tokens/s": "median_step_tokens_per_s", "tokens/CPU s": "median_step_tokens_per_cpu_s"}

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
    parser.add_argument("--steps", type=int, default=12, help="measured optimizer steps per run")
    parser.add_argument("--warmup_steps", type=int, default=3, help="steps per run before the measurement (≥ 1)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of runs of every variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--variants", nargs="+", choices=[variant for variant in VARIANTS if variant != PLAIN], metavar="VARIANT",
        help="the llm_gym variants to run, by name (default: all); the verdict covers those run",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps, 1 round: checks it runs")
    args = parser.parse_args()
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    steps, warmup_steps, repeats = (2, 1, 1) if args.smoke else (args.steps, args.warmup_steps, args.repeats)
    if warmup_steps < 1:
        parser.error("--warmup_steps must be at least 1: the first step is timed apart")
    if args.threads:
        torch.set_num_threads(args.threads)

    compared = [variant for variant in VARIANTS if variant != PLAIN and variant in (args.variants or VARIANTS)]
    results: dict[str, list[RunFigures]] = {variant: [] for variant in [PLAIN, *compared]}
    paired: dict[str, dict[str, list[float]]] = {variant: {name: [] for name in RATIOS} for variant in compared}
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
            return run_llm_gym(TINY_CONFIG, overrides, work / f"{name}_variant_{compared.index(variant)}", warmup_steps)

        def measured(variant: str, repeat: int) -> RunFigures:
            figures = run(variant, warmup_steps + steps, f"repeat_{repeat}")
            results[variant].append(figures)
            print(
                f"  round {repeat + 1}/{repeats} {variant:<34}{figures.median_step_tokens_per_s:8,.0f} tokens/s"
                f" ({figures.median_step_tokens_per_cpu_s:,.0f} per CPU s, first step after"
                f" {figures.first_step_s:.1f} s)",
                flush=True,
            )
            return figures

        # One untimed round first: the first use of each path in a process pays one-off costs.
        for variant in [PLAIN, *compared] if not args.smoke else ():
            cold[variant] = run(variant, warmup_steps + 1, "untimed")
        for repeat in range(repeats):
            shift = repeat % len(compared)
            order = compared[shift:] + compared[:shift]
            before = measured(PLAIN, repeat)
            for start in range(0, len(order), RUNS_PER_PLAIN_RUN):
                group = [(variant, measured(variant, repeat)) for variant in order[start : start + RUNS_PER_PLAIN_RUN]]
                after = measured(PLAIN, repeat)
                for name, figure in RATIOS.items():
                    reference = math.sqrt(getattr(before, figure) * getattr(after, figure))
                    for variant, figures in group:
                        paired[variant][name].append(getattr(figures, figure) / reference)
                before = after
        config = load_run_config(TINY_CONFIG, run_overrides(shape, corpus, warmup_steps + steps, {}))

    model, parameters = config.model.config, num_parameters(model_of(config))
    print(
        f"\nmodel: DecoderLM width {model.dim}, {model.n_layer} layers, {model.n_head} heads ({model.n_head_kv} kv),"
        f" SwiGLU {model.mlp.config.hidden_dim}, vocab {model.vocab_size}: {parameters:,} parameters"
    )
    print(
        f"batch: {config.training.micro_batch_size} × {config.training.sequence_length} tokens; {steps} measured"
        f" steps after {warmup_steps} warm-up, {repeats} rounds"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, Python {platform.python_version()}"
    )
    print(
        "tokens/s: at the median step time of a run, the median over its runs; CPU s: per second of this process's"
        " CPU time in the median step. 'vs plain': the median over rounds of the ratio to the plain runs before and"
        " after it. first step: seconds from the start of a run to the end of its first step, on an empty inductor"
        " cache (the untimed round) and on the cache it left (the median over rounds).\n"
        f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print(
        f"{'variant':<34}"
        + "".join(f"{name:>14}{'vs plain':>10}" for name in RATIOS)
        + f"{'first step, cold' if cold else '':>18}{'first step':>12}"
    )
    ratios = {
        variant: {name: statistics.median(values) for name, values in paired[variant].items()} for variant in compared
    }
    for variant in results:
        line = f"{variant:<34}"
        for name, figure in RATIOS.items():
            value = statistics.median(getattr(figures, figure) for figures in results[variant])
            line += f"{value:>14,.0f}{ratios[variant][name] if variant in ratios else 1.0:>10.3f}"
        first = statistics.median(figures.first_step_s for figures in results[variant])
        print(line + f"{f'{cold[variant].first_step_s:.1f} s' if cold else '':>18}{first:>10.1f} s")
    # The verdict is on wall-clock tokens/s, what a user waits for; on a busy machine read the CPU-time column.
    print()
    passed = True
    for variant, target in TARGETS.items():
        if variant not in ratios:
            continue
        ratio = ratios[variant]["tokens/s"]
        verdict = "PASS" if ratio >= target else "FAIL"
        passed &= verdict == "PASS"
        switches = ", ".join(f"{key}={value}" for key, value in VARIANTS[variant].items()) or "none"
        print(
            f"{verdict}: {variant} (switches: {switches}): {ratio:.3f} × the plain loop's tokens/s (target: ≥ {target})"
        )
    return 0 if passed or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
