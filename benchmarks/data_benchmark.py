"""Data pipeline throughput, in one run.

1. ``llm_gym data tokenize`` (the whole pipeline: read, parse, tokenize, write) of the same texts as JSON
   Lines, parquet and zstd-compressed JSON Lines, against the bare ``tokenizers`` batch encoding of those
   texts already in memory, on the same cores. Each bare run gets a fresh tokenizer, as each tokenizing
   worker does, so neither side profits from a warm cache.
2. Worker scaling: the pipeline with 1, 2, ... workers; efficiency = speed with W ÷ (W × speed with 1).
3. Training samples per second from the dataloader, against what the demo model's training step
   (``config_files/demo_cpu.yaml``: its model, batch shape and AdamW) consumes on this machine.

Every speed is MB/s of the JSON Lines text, whatever the format read, so ratios compare the same work.

    python benchmarks/data_benchmark.py [--input FILE.jsonl] [--tokenizer tokenizer.json] [--copies 1]
                                        [--formats jsonl parquet jsonl.zst] [--scaling 1 2] [--repeats 3]
                                        [--steps 5]

Without ``--input`` it benchmarks on the demo corpus (this Python's standard library) and trains a
4,096-token BPE tokenizer on it.
"""

import argparse
import os
import platform
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

# Only light imports at the top: tokenizing workers are spawned and re-import this module; torch and the
# modules that need it are imported where used.
from llm_gym.data.demo_corpus import write_demo_corpus
from llm_gym.data.inputs import iter_texts
from llm_gym.data.tokenization import tokenize_files, usable_cpus
from llm_gym.data.tokenizer_training import train_bpe_tokenizer

if TYPE_CHECKING:
    from llm_gym.config.app import TrainingAppConfig

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config_files" / "demo_cpu.yaml"


def bare_encode_seconds(tokenizer_path: Path, texts: list[str], method: str) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    start = time.perf_counter()
    getattr(tokenizer, method)(texts, add_special_tokens=False)
    return time.perf_counter() - start


def write_formats(source: Path, texts: list[str], formats: list[str], work: Path) -> dict[str, Path]:
    """The same documents in each input format: parquet in row groups of 1,000, zstd at its default level."""
    written = {}
    for kind in formats:
        if kind == "jsonl":
            written[kind] = source
        elif kind == "parquet":
            import pyarrow as pa  # the data extra, imported here only: spawned workers re-import this module
            import pyarrow.parquet as pq

            written[kind] = work / "corpus.parquet"
            pq.write_table(pa.table({"text": texts}), written[kind], row_group_size=1000)
        elif kind == "jsonl.zst":
            import zstandard

            written[kind] = work / "corpus.jsonl.zst"
            written[kind].write_bytes(zstandard.ZstdCompressor().compress(source.read_bytes()))
        else:
            raise SystemExit(f"unknown format {kind}")
    return written


def loader_samples_per_s(prefix: Path, sequence_length: int, micro_batch_size: int, num_workers: int) -> float:
    from llm_gym.data.collators import CausalLMCollator
    from llm_gym.data.datasets import PackedDataset, PackedDatasetConfig
    from llm_gym.data.loaders import ResumableDataLoader, ResumableDataLoaderConfig
    from llm_gym.data.samplers import ResumableDistributedSampler, ResumableDistributedSamplerConfig

    dataset = PackedDataset(PackedDatasetConfig(path_prefix=prefix, sequence_length=sequence_length))
    sampler = ResumableDistributedSampler(ResumableDistributedSamplerConfig(seed=0), len(dataset), 0, 1)
    config = ResumableDataLoaderConfig(num_workers=num_workers)
    loader = ResumableDataLoader(config, dataset, sampler, CausalLMCollator(), micro_batch_size)
    batches = iter(loader)
    for _ in islice(batches, 20):  # worker start-up
        pass
    count = 500
    start = time.perf_counter()
    for _ in islice(batches, count):
        pass
    return count * micro_batch_size / (time.perf_counter() - start)


def demo_step_samples_per_s(steps: int) -> tuple[float, "TrainingAppConfig"]:
    """Forward, backward, clipping and AdamW step of the demo model (``config_files/demo_cpu.yaml``'s model node,
    built through the registry with its seed, optimizer settings and batch shape), in this process.

    Returns samples per second at the median step time and the loaded config.
    """
    import torch

    from training_harness import load_run_config, run_plain_loop

    # The scheduler's warm-up must fit in the few steps timed here; the plain loop does not use it.
    overrides = [f"training.max_steps={steps + 1}", "lr_scheduler.config.warmup_steps=0"]
    config = load_run_config(DEMO_CONFIG, overrides)
    figures = run_plain_loop(config, warmup_steps=1, device=torch.device("cpu"))
    return figures.median_step_tokens_per_s / config.training.sequence_length, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="a .jsonl file (default: the demo corpus's train split)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json (default: train a 4,096-token BPE)")
    parser.add_argument("--copies", type=int, default=1, help="tokenize this many copies of the input, one file")
    parser.add_argument("--num_workers", type=int, default=usable_cpus())
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet", "jsonl.zst"])
    parser.add_argument("--scaling", type=int, nargs="+", help="worker counts to compare (default: 1 to --num_workers)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps of the demo model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        source = args.input
        if source is None:
            write_demo_corpus(work / "demo")
            source = work / "demo" / "train.jsonl"
        tokenizer_path = args.tokenizer
        if tokenizer_path is None:
            tokenizer_path = work / "tokenizer.json"
            start = time.perf_counter()
            train_bpe_tokenizer([source], 4096, tokenizer_path)
            print(f"trained a 4,096-token BPE tokenizer in {time.perf_counter() - start:.1f} s")
        if args.copies > 1:
            copies = work / "copies.jsonl"
            copies.write_bytes(source.read_bytes() * args.copies)
            source = copies
        texts = list(iter_texts([source], "text"))
        megabytes = source.stat().st_size / 1e6
        print(f"input: {source} ({megabytes:.1f} MB, {len(texts):,} documents); cores: {usable_cpus()}")

        inputs = write_formats(source, texts, args.formats, work)
        scaling = args.scaling or list(range(1, args.num_workers + 1))
        runs = [(kind, args.num_workers) for kind in args.formats]
        runs += [("jsonl", workers) for workers in scaling if ("jsonl", workers) not in runs]
        times: dict[object, list[float]] = {"encode_batch": [], "encode_batch_fast": [], **{run: [] for run in runs}}
        for _ in range(args.repeats):  # interleaved, so a busy moment on the machine hits all alike
            for method in ("encode_batch", "encode_batch_fast"):
                times[method].append(bare_encode_seconds(tokenizer_path, texts, method))
            for kind, workers in runs:
                summary = tokenize_files(
                    [inputs[kind]], str(tokenizer_path), work / "corpus", num_workers=workers, force=True
                )
                times[kind, workers].append(summary.seconds)
        best = {name: min(values) for name, values in times.items()}
        print(f"\ntokenize, best of {args.repeats} (MB/s of the JSON Lines text):")
        for method in ("encode_batch", "encode_batch_fast"):
            print(f"  {'bare ' + method:<50} {best[method]:6.2f} s  {megabytes / best[method]:7.2f} MB/s")
        print(f"  {'':<50} {'':>8}  {'':>12}  ratio to bare encode_batch, encode_batch_fast (target ≥ 0.90)")
        for kind in args.formats:
            seconds = best[kind, args.num_workers]
            ratios = ", ".join(f"{best[method] / seconds:.2f}" for method in ("encode_batch", "encode_batch_fast"))
            label = f"llm_gym data tokenize {kind}, --num_workers {args.num_workers}"
            print(f"  {label:<50} {seconds:6.2f} s  {megabytes / seconds:7.2f} MB/s  {ratios}")
        one_worker = megabytes / best["jsonl", scaling[0]] / scaling[0]
        print("\nworker scaling (jsonl): efficiency = speed with W workers / (W × speed with 1)")
        for workers in scaling:
            speed = megabytes / best["jsonl", workers]
            print(f"  --num_workers {workers:<3} {speed:7.2f} MB/s  efficiency {speed / (workers * one_worker):.2f}")

        step_rate, config = demo_step_samples_per_s(args.steps)
        shape = config.training
        model = config.model.config
        print(
            f"\ntraining batches of the demo model (sequence_length {shape.sequence_length}, micro_batch_size "
            f"{shape.micro_batch_size}; DecoderLM {model.n_layer} layers, width {model.dim}, vocab {model.vocab_size}):"
        )
        print(f"  training step (forward, backward, clip, AdamW): {step_rate:12,.1f} samples/s")
        for num_workers in (0, 2):
            rate = loader_samples_per_s(work / "corpus", shape.sequence_length, shape.micro_batch_size, num_workers)
            ratio = rate / step_rate
            print(f"  dataloader, num_workers {num_workers}: {rate:21,.0f} samples/s  ({ratio:,.0f}× the step)")
        import torch

        print(
            f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}; "
            f"load average during the run: {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
