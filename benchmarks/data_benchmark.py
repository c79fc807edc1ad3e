"""Data pipeline throughput, in one run.

1. ``llm_gym data tokenize`` (the whole pipeline: read, parse, tokenize, write) against the bare
   ``tokenizers`` batch encoding of the same texts already in memory, on the same cores. Each bare run
   gets a fresh tokenizer, as each tokenizing worker does, so neither side profits from a warm cache.
2. Training batches per second from the dataloader, against what a small GPT-style model's training
   step consumes on this machine.

    python benchmarks/data_benchmark.py [--input FILE.jsonl] [--tokenizer tokenizer.json] [--copies 1]
                                        [--repeats 3]

Without ``--input`` it benchmarks on the demo corpus (this Python's standard library) and trains a
4,096-token BPE tokenizer on it.
"""

import argparse
import os
import tempfile
import time
from itertools import islice
from pathlib import Path

# Only light imports at the top: tokenizing workers are spawned and re-import this module; torch and the
# modules that need it are imported where used.
from llm_gym.data.demo_corpus import write_demo_corpus
from llm_gym.data.documents import iter_texts
from llm_gym.data.tokenization import tokenize_files, usable_cpus
from llm_gym.data.tokenizer_training import train_bpe_tokenizer
from llm_gym.data.tokenizers import load_tokenizer


def bare_encode_seconds(tokenizer_path: Path, texts: list[str], method: str) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    start = time.perf_counter()
    getattr(tokenizer, method)(texts, add_special_tokens=False)
    return time.perf_counter() - start


def loader_samples_per_s(prefix: Path, sequence_length: int, micro_batch_size: int, num_workers: int) -> float:
    from llm_gym.data.collators import CausalLMCollator
    from llm_gym.data.datasets import PackedDataset
    from llm_gym.data.loaders import ResumableDataLoader
    from llm_gym.data.samplers import ResumableDistributedSampler

    dataset = PackedDataset(prefix, sequence_length)
    sampler = ResumableDistributedSampler(len(dataset), dp_rank=0, dp_world_size=1, seed=0)
    loader = ResumableDataLoader(dataset, sampler, CausalLMCollator(), micro_batch_size, num_workers=num_workers)
    batches = iter(loader)
    for _ in islice(batches, 20):  # worker start-up
        pass
    count = 500
    start = time.perf_counter()
    for _ in islice(batches, count):
        pass
    return count * micro_batch_size / (time.perf_counter() - start)


def train_step_samples_per_s(vocab_size: int, sequence_length: int, micro_batch_size: int) -> float:
    """Forward, backward and AdamW step of a stand-in for the demo model: 4 pre-norm layers, width 256."""
    import torch
    from torch import nn

    from llm_gym.data.collators import CausalLMCollator

    width = 256
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    embedding, blocks = nn.Embedding(vocab_size, width), nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    head = nn.Linear(width, vocab_size, bias=False)
    model = nn.ModuleList([embedding, blocks, head])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = CausalLMCollator()(list(torch.randint(0, vocab_size, (micro_batch_size, sequence_length + 1))))
    mask = nn.Transformer.generate_square_subsequent_mask(sequence_length)

    def step() -> None:
        logits = head(blocks(embedding(batch["input_ids"]), mask=mask, is_causal=True))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["target_ids"].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    count = 5
    start = time.perf_counter()
    for _ in range(count):
        step()
    return count * micro_batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="a .jsonl file (default: the demo corpus's train split)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json (default: train a 4,096-token BPE)")
    parser.add_argument("--copies", type=int, default=1, help="tokenize this many copies of the input, one file")
    parser.add_argument("--num_workers", type=int, default=usable_cpus())
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    parser.add_argument("--sequence_length", type=int, default=256)
    parser.add_argument("--micro_batch_size", type=int, default=8)
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

        times: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": [], "pipeline": []}
        for _ in range(args.repeats):  # interleaved, so a busy moment on the machine hits all alike
            for method in ("encode_batch", "encode_batch_fast"):
                times[method].append(bare_encode_seconds(tokenizer_path, texts, method))
            summary = tokenize_files(
                [source], str(tokenizer_path), work / "corpus", num_workers=args.num_workers, force=True
            )
            times["pipeline"].append(summary.seconds)
        best = {name: min(values) for name, values in times.items()}
        print(f"\ntokenize, best of {args.repeats} (MB/s of input):")
        for name, seconds in best.items():
            label = f"llm_gym data tokenize --num_workers {args.num_workers}" if name == "pipeline" else f"bare {name}"
            print(f"  {label:<42} {seconds:6.2f} s  {megabytes / seconds:7.2f} MB/s")
        for method in ("encode_batch", "encode_batch_fast"):
            print(f"  ratio pipeline / bare {method:<20} {best[method] / best['pipeline']:.2f}")

        print(f"\ntraining batches (sequence_length {args.sequence_length}, micro_batch_size {args.micro_batch_size}):")
        prefix = work / "corpus"
        for num_workers in (0, 2):
            rate = loader_samples_per_s(prefix, args.sequence_length, args.micro_batch_size, num_workers)
            print(f"  dataloader, num_workers {num_workers}: {rate:12,.0f} samples/s")
        vocab_size = load_tokenizer(tokenizer_path).vocab_size
        step_rate = train_step_samples_per_s(vocab_size, args.sequence_length, args.micro_batch_size)
        print(f"  training step of a 4-layer, width-256 GPT:   {step_rate:12,.0f} samples/s")
        print(f"  (load average during the run: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
