"""The cost of document masking: training tokens/s with masking against plain causal attention, same run.

One ``DecoderLM`` (``config_files/tiny_cpu.yaml`` widened, ``training_overhead.py``'s shape: width 256,
4 layers, 4 query / 2 key-value heads, SwiGLU 704, sequence length 256, micro batch 8) trains on random
tokens with an end-of-document token every ``--document_length`` tokens on average (exponential lengths).
Each step is forward, cross-entropy, backward and an AdamW step. Variants, interleaved round by round after
one untimed round: ``causal`` (no document ids: today's attention), ``sdpa`` (a boolean block-diagonal mask)
and ``flex`` (FlexAttention block masks, compiled), the last only where it compiles on this device.
Positions restart at each document in the masked variants (what a masked run would use).

    python benchmarks/document_masking.py [--steps 20] [--repeats 3] [--document_length 64] [--threads N]
                                          [--device cpu|cuda] [--smoke]

Prints each variant's median tokens/s (wall clock, and per CPU second of this process, which other load on
the machine barely moves) and its ratio to ``causal``.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from llm_gym.data.collators import document_ids
from training_harness import load_run_config, model_of
from training_overhead import SHAPE, TINY_CONFIG

END_OF_DOCUMENT = 256  # the byte tokenizer's

SMOKE_SHAPE = {**SHAPE, "model.config.dim": 32, "model.config.n_layer": 1, "model.config.mlp.config.hidden_dim": 64,
               "training.sequence_length": 32, "training.micro_batch_size": 2}  # fmt: skip
VARIANTS = {"causal": None, "sdpa": "sdpa", "flex": "flex"}


def packed_tokens(batch: int, length: int, document_length: float, seed: int = 0) -> torch.Tensor:
    """Random byte ids ``[batch, length + 1]`` with an end-of-document token after each document."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, END_OF_DOCUMENT, size=(batch, length + 1))
    for row in tokens:
        position = int(rng.exponential(document_length))
        while position < length + 1:
            row[position] = END_OF_DOCUMENT
            position += 1 + int(rng.exponential(document_length))
    return torch.from_numpy(tokens)


class Variant:
    def __init__(self, name: str, shape: dict, tokens: torch.Tensor, device: torch.device):
        kernel = VARIANTS[name]
        overrides = [f"{key}={value}" for key, value in shape.items()]
        if kernel is not None:
            overrides += ["model.config.document_masking=true", "model.config.document_positions=restart",
                          f"model.config.attention.config={{document_kernel: {kernel}}}"]  # fmt: skip
        config = load_run_config(TINY_CONFIG, overrides)
        torch.manual_seed(config.experiment.seed)
        self.name, self.model = name, model_of(config, device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.inputs, self.targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
        self.documents = {} if kernel is None else {"document_ids": document_ids(self.inputs, END_OF_DOCUMENT)}
        self.device = device

    def steps(self, count: int) -> list[tuple[float, float]]:
        """Wall-clock and process CPU seconds of each of ``count`` training steps."""
        durations = []
        for _ in range(count):
            start, start_cpu = time.perf_counter(), time.process_time()
            logits = self.model(self.inputs, **self.documents)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), self.targets.flatten())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()  # waits for the device, as a training step reading its loss does
            durations.append((time.perf_counter() - start, time.process_time() - start_cpu))
        return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--document_length", type=float, default=64.0, help="mean tokens per document")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps, 1 repeat")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, repeats = (2, 1) if args.smoke else (args.steps, args.repeats)
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    device = torch.device(args.device)
    batch, length = shape["training.micro_batch_size"], shape["training.sequence_length"]
    tokens = packed_tokens(batch, length, args.document_length)
    documents = int((tokens[:, :-1] == END_OF_DOCUMENT).sum()) + batch
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {device.type}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; {batch} × {length} tokens a step, "
        f"{documents / batch:.1f} documents a sample (mean length {args.document_length:g})"
    )
    variants, unavailable = [], {}
    for name in VARIANTS:
        try:
            variant = Variant(name, shape, tokens, device)
            variant.steps(1)  # the untimed round: compiles flex, warms the allocator
        except Exception as error:  # the flex kernel may not compile on this device
            unavailable[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
            continue
        variants.append(variant)
    timings: dict[str, list[tuple[float, float]]] = {variant.name: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            timings[variant.name].extend(variant.steps(steps))
    tokens_per_step = batch * length
    # Wall-clock time for what a run sees; CPU time of this process too, which other load on the machine
    # barely moves (on CUDA only the wall clock means anything).
    rates = {
        name: [tokens_per_step / statistics.median(times) for times in zip(*durations, strict=True)]
        for name, durations in timings.items()
    }
    print(f"{'variant':<8} {'tokens/s':>10} {'× causal':>9} {'tokens/CPU s':>13} {'× causal':>9}")
    for name, (wall, cpu) in rates.items():
        causal_wall, causal_cpu = rates["causal"]
        print(f"{name:<8} {wall:>10,.0f} {wall / causal_wall:>9.3f} {cpu:>13,.0f} {cpu / causal_cpu:>9.3f}")
    for name, reason in unavailable.items():
        print(f"{name:<8} unavailable here: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
