"""Pretraining recipes on the demo corpus: AdamW + cosine (what ``make demo`` trains) against Muon + WSD, the
same model, steps, tokens and data order; the validation loss and tokens/s of each, measured in one invocation.

    python benchmarks/recipe_comparison.py [--steps 500] [--nproc 2] [--output_dir DIR] [--smoke]

Needs the demo corpus (``make demo``, or the commands at the top of ``config_files/demo_cpu.yaml``). Each
recipe is ``config_files/demo_cpu.yaml`` with overrides (``RECIPES``), run as the demo runs it: ``llm_gym run``
under torchrun on ``--nproc`` CPU processes (gloo, FSDP2). The recipes run one after the other and the load
average is printed beside each, so a ratio can be judged against what else the machine was doing.
``--smoke`` trains a tiny model for a few steps on a byte-tokenized corpus written here: it checks the script.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from training_harness import write_byte_corpus

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "config_files" / "demo_cpu.yaml"

# Each recipe: the overrides of the demo config. Swapping a type_hint keeps the settings the new type takes
# (the demo's warmup_steps and total_steps: ${training.max_steps} carry over to WarmupStableDecay).
RECIPES = {
    "AdamW + cosine (demo)": [],
    "Muon + WSD": [
        "optimizer.type_hint=Muon",
        "optimizer.config.lr=0.02",
        "optimizer.config.weight_decay=0.0",
        "optimizer.config.adamw.lr=3.0e-3",
        "lr_scheduler.type_hint=WarmupStableDecay",
        "lr_scheduler.config.decay_fraction=0.2",
        "lr_scheduler.config.decay_shape=1-sqrt",
        "lr_scheduler.config.min_lr_ratio=0.0",
    ],
}
# Each recipe again with attention kept inside each document of a packed sample.
RECIPES.update(
    {
        f"{name.split(' (')[0]} + masking": [*overrides, "model.config.document_masking=true"]
        for name, overrides in list(RECIPES.items())
    }
)

SMOKE = [
    "model.config.n_layer=1",
    "model.config.dim=32",
    "model.config.n_head=2",
    "model.config.mlp.config.hidden_dim=64",
    "training.sequence_length=16",
    "training.micro_batch_size=2",
    "training.eval_interval=2",
    "training.eval_samples=4",
    "training.log_interval=1",
    "data.tokenizer=byte",
    "lr_scheduler.config.warmup_steps=1",
    "evaluation.evaluators=[]",  # the demo's task reads the demo corpus, which the smoke run does without
]


def run_recipe(overrides: list[str], output_dir: Path, steps: int, nproc: int) -> dict:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(ROOT / "src" / "llm_gym" / "__main__.py"), "run", "--config_file_path", str(DEMO_CONFIG),
        *overrides, f"training.max_steps={steps}", f"experiment.output_dir={output_dir}",
        "checkpointing.every_n_steps=0", "loggers=[{type_hint: MetricsJsonl, config: {}}]",
    ]  # fmt: skip
    load_before, started = os.getloadavg()[0], time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    return {
        "val": {line["step"]: line["loss"] for line in lines if line["split"] == "val"},
        "train_loss": train[-1]["loss"],
        "tokens_seen": train[-1]["tokens_seen"],
        # The first line's window holds the first steps' one-off costs.
        "tokens_per_s": statistics.median(line["tokens_per_s"] for line in train[1:] or train),
        "seconds": time.perf_counter() - started,
        "load": (load_before, os.getloadavg()[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps of each recipe (the demo's 500)")
    parser.add_argument("--nproc", type=int, default=2, help="CPU processes under torchrun (the demo's 2)")
    parser.add_argument("--output_dir", type=Path, default=None, help="keep each run's experiment directory here")
    parser.add_argument("--smoke", action="store_true", help="a tiny model for 3 steps on 1 process")
    args = parser.parse_args()
    steps, nproc = (3, 1) if args.smoke else (args.steps, args.nproc)
    with tempfile.TemporaryDirectory() as workdir:
        work = args.output_dir or Path(workdir)
        extra = []
        if args.smoke:
            corpus = Path(workdir) / "corpus"
            write_byte_corpus(corpus, Path(os.__file__).parent, "a*.py")
            paths = ("data.train_dataset.config.path_prefix", "data.eval_datasets.val.config.path_prefix")
            extra = [*SMOKE, *(f"{key}={corpus}" for key in paths)]
        results = {}
        for name, overrides in RECIPES.items():
            directory = work / name.split(" (")[0].replace(" + ", "_").replace(" ", "_").lower()
            results[name] = run_recipe([*overrides, *extra], directory, steps, nproc)
            figures = results[name]
            print(
                f"  {name:<24} val loss {figures['val'][steps]:.4f}, {figures['tokens_per_s']:,.0f} tokens/s, "
                f"{figures['seconds']:.0f} s (load {figures['load'][0]:.1f} → {figures['load'][1]:.1f})",
                flush=True,
            )

    processes = f"{nproc} CPU process{'es' if nproc > 1 else ''}"
    print(
        f"\n{steps} steps × {next(iter(results.values()))['tokens_seen'] // steps:,} tokens per step on {processes}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    checkpoints = sorted(next(iter(results.values()))["val"])
    shown = [step for step in checkpoints if step % max(1, steps // 5) == 0 or step == steps]
    print(f"{'recipe':<26}" + "".join(f"{f'val@{step}':>10}" for step in shown) + f"{'tokens/s':>11}{'ratio':>7}")
    baseline = next(iter(results.values()))
    for name, figures in results.items():
        ratio = figures["tokens_per_s"] / baseline["tokens_per_s"]
        values = "".join(f"{figures['val'][step]:>10.4f}" for step in shown)
        print(f"{name:<26}{values}{figures['tokens_per_s']:>11,.0f}{ratio:>7.3f}")
    print("val: mean loss per token (nats) on the validation samples the config evaluates; tokens/s: median of the")
    print("train lines; ratio: tokens/s against the first recipe, in this invocation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
