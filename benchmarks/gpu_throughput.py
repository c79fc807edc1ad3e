"""Training throughput and MFU on one GPU for GPT-2 124M and the Llama-style 1B, bf16, torch.compile, SDPA.

For each model, llm_gym trains through ``run_training`` on the shipped config (``config_files/config.yaml``,
``config_files/llama_1b.yaml``) with overrides: one GPU, the parallelism under test, short run, synthetic
random tokens of the model's vocabulary in a ``.bin/.idx`` written here. Its tokens/s is the step clock's over
the steps after the warm-up (compilation); MFU is computed from it, and the median ``tokens_per_s`` and ``mfu``
of metrics.jsonl are shown next to it. The baseline, measured in the same run, is a plain PyTorch loop on the
same model and batch: bf16 autocast, ``torch.compile`` of the whole model, AdamW, clipping.

    python benchmarks/gpu_throughput.py [--models gpt2_124m llama_1b] [--parallelism FSDP2 NoParallelism]
                                        [--steps 30] [--warmup_steps 10] [--micro_batch_size N]
                                        [--output results.jsonl] [--smoke]

Runs go in order of importance (each model's first parallelism and its baseline, then the other
parallelisms), each result printed and appended to ``--output`` as it comes, so a run cut short keeps what it
measured. A run that fails (out of memory, ...) is reported and the others go on. ``--smoke`` runs tiny
shapes on the CPU without compilation for 3 steps: it checks that the script works, nothing more.
"""

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_gym.models.flops import flops_per_token, peak_flops_per_second
from training_harness import RunFigures, load_run_config, model_of, run_llm_gym, run_plain_loop, write_random_corpus

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "config_files"
PLAIN = "plain PyTorch loop"
PARALLELISMS = ["FSDP2", "NoParallelism"]


@dataclass(frozen=True)
class BenchModel:
    config: str
    """The shipped config in config_files/, composed from its model section there."""
    sequence_length: int
    micro_batch_size: int
    """Sized for one 80 GB H100 without activation checkpointing."""
    target_mfu: float


MODELS = {
    "gpt2_124m": BenchModel("config.yaml", 1024, 16, 0.45),
    "llama_1b": BenchModel("llama_1b.yaml", 2048, 4, 0.55),
}
SMOKE_MODEL = {
    "model.config.n_layer": 1,
    "model.config.dim": 64,
    "model.config.n_head": 2,
    "model.config.n_head_kv": "null",
    "model.config.mlp.config.hidden_dim": 128,
}


def run_overrides(model: BenchModel, args: argparse.Namespace, corpus: Path, parallelism: str) -> list[str]:
    on_gpu = not args.smoke
    overrides = {
        "training.device": "cuda" if on_gpu else "cpu",
        "training.compile": on_gpu,
        "training.activation_checkpointing": "none",
        "training.sequence_length": 32 if args.smoke else model.sequence_length,
        "training.micro_batch_size": 2 if args.smoke else args.micro_batch_size or model.micro_batch_size,
        "training.gradient_accumulation_steps": args.gradient_accumulation_steps,
        "training.global_batch_size": "null",
        "training.max_steps": args.warmup_steps + args.steps,
        "training.log_interval": 1,
        "training.eval_interval": 1_000_000,
        "training.eval_samples": 1,
        "checkpointing.every_n_steps": 0,
        "checkpointing.keep_last": 1,
        "lr_scheduler.config.warmup_steps": 1,
        "parallelism.type_hint": parallelism,
        "data.train_dataset.config.path_prefix": corpus,
        "data.eval_datasets.val.config.path_prefix": corpus,
        **(SMOKE_MODEL if args.smoke else {}),
    }
    if on_gpu:
        overrides["parallelism.config.mixed_precision.param_dtype"] = "bfloat16"
    else:
        overrides["data.dataloader.config.num_workers"] = 0
    return [f"{key}={value}" for key, value in overrides.items()]


def measure(name: str, variant: str, path: Path, overrides: list[str], args, work: Path) -> dict:
    config = load_run_config(path, overrides)
    device = torch.device(config.training.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if variant == PLAIN:
        figures = run_plain_loop(config, args.warmup_steps, device)
    else:
        output_dir = work / f"{name}_{variant}"
        figures = run_llm_gym(path, overrides, output_dir, args.warmup_steps)
        shutil.rmtree(output_dir)  # the 1B model's checkpoint alone is ~15 GB
    return _row(name, variant, config, figures, device, time.perf_counter() - start)


def _row(name: str, variant: str, config, figures: RunFigures, device: torch.device, seconds: float) -> dict:
    peak = peak_flops_per_second(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    flops = flops_per_token(model_of(config), config.training.sequence_length)
    return {
        "model": name,
        "variant": variant,
        "tokens_per_s": figures.tokens_per_s,
        "mfu": figures.tokens_per_s * flops / peak if peak else None,
        "logged_tokens_per_s": figures.logged_tokens_per_s,
        "logged_mfu": figures.logged_mfu,
        "peak_memory_gib": figures.peak_memory_gib,
        "tokens_per_step": figures.tokens_per_step,
        "seconds": seconds,
    }


def _release_memory() -> None:
    """Compiled graphs, cached blocks and the last run's tensors, so each run starts alike."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], models: dict[str, BenchModel]) -> None:
    print(
        f"\n{'model':<11}{'variant':<22}{'tokens/s':>11}{'vs plain':>9}{'MFU':>7}{'target':>10}"
        f"{'logged tok/s':>14}{'logged MFU':>11}{'peak GiB':>10}"
    )
    baselines = {row["model"]: row["tokens_per_s"] for row in rows if row["variant"] == PLAIN and "error" not in row}
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<11}{row['variant']:<22}  failed: {row['error']}")
            continue
        baseline = baselines.get(row["model"])
        target = models[row["model"]].target_mfu
        verdict = "-" if row["mfu"] is None else f"{target:.0%} " + ("PASS" if row["mfu"] >= target else "FAIL")
        if row["variant"] == PLAIN:
            verdict = ""
        print(
            f"{row['model']:<11}{row['variant']:<22}{row['tokens_per_s']:>11,.0f}"
            f"{_figure(baseline and row['tokens_per_s'] / baseline, '.3f'):>9}{_figure(row['mfu'], '.1%'):>7}"
            f"{verdict:>10}{_figure(row['logged_tokens_per_s'], ',.0f'):>14}"
            f"{_figure(row['logged_mfu'], '.1%'):>11}{_figure(row['peak_memory_gib'], '.1f'):>10}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--parallelism", nargs="+", choices=PARALLELISMS, help=f"default: {' '.join(PARALLELISMS)} (smoke: the first)"
    )
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps per run")
    parser.add_argument("--warmup_steps", type=int, default=10, help="steps before the measurement (compilation)")
    parser.add_argument("--micro_batch_size", type=int, default=None, help="default: per model, for 80 GB")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="append one JSON line per run here")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, no compile, 3 steps")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup_steps = 2, 1
        args.parallelism = args.parallelism or PARALLELISMS[:1]
    elif not torch.cuda.is_available():
        print("error: no CUDA device (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2

    device_name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(
        f"device: {device_name}; torch {torch.__version__}; "
        f"{'float32, eager, tiny shapes' if args.smoke else 'bf16, torch.compile, SDPA'}; "
        f"{args.warmup_steps} warm-up + {args.steps} measured steps per run",
        flush=True,
    )
    first, *others = args.parallelism or PARALLELISMS
    jobs = [(name, variant) for name in args.models for variant in (first, PLAIN)]
    jobs += [(name, variant) for variant in others for name in args.models]
    models = {name: MODELS[name] for name in args.models}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        prepared: dict[str, tuple[Path, Path]] = {}
        for name, variant in jobs:
            model = models[name]
            if name not in prepared:
                path, corpus = CONFIGS / model.config, work / f"{name}_tokens"
                config = load_run_config(path, run_overrides(model, args, corpus, first))
                settings = config.training
                samples = (settings.max_steps + 1) * settings.gradient_accumulation_steps * settings.micro_batch_size
                write_random_corpus(corpus, config.model.config.vocab_size, samples * settings.sequence_length + 1)
                prepared[name] = (path, corpus)
            path, corpus = prepared[name]
            overrides = run_overrides(model, args, corpus, first if variant == PLAIN else variant)
            try:
                row = measure(name, variant, path, overrides, args, work)
            except Exception as error:
                traceback.print_exc()
                row = {"model": name, "variant": variant, "error": f"{type(error).__name__}: {error}"[:300]}
            finally:
                _release_memory()
            row["device"] = device_name
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.output:
                with args.output.open("a") as file:
                    file.write(json.dumps(row) + "\n")
    print_table(rows, models)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
