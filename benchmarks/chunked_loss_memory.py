"""Peak memory of the loss step: llm_gym's chunked loss against the plain one, same inputs, same run.

The loss step is what a step does after the last block: the output projection of ``--tokens`` hidden states of
width ``--dim`` onto a ``--vocab`` vocabulary, the cross-entropy in float32 (with the z-loss at
``--z_loss_weight``), and its backward to the hidden states and the projection's weight. ``plain`` is what
llm_gym does without ``training.loss_chunk_tokens`` (``loss_sums`` of the whole logits, as a hand-written loop
does: ``F.cross_entropy(logits.float(), ...)``); ``chunked`` is ``chunked_loss_sums`` with ``--chunk_tokens``.

Each variant runs in a fresh process; its figure is the peak resident memory during the step above the memory
it held before (inputs and weight allocated): on CPU, torch returns large tensors to the system when freed, so
the resident set follows the live tensors. The script prints both peaks, their ratio and, as a check, the
largest difference between the two losses and gradients.

    python benchmarks/chunked_loss_memory.py [--tokens 8192] [--vocab 131072] [--dim 512] [--chunk_tokens 1024]
                                             [--smoke]
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from llm_gym.models.losses import chunked_loss_sums, loss_sums

IGNORE_INDEX = -100


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def one_variant(variant: str, tokens: int, vocab: int, dim: int, chunk_tokens: int, z_loss_weight: float) -> dict:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=generator) * dim**-0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[::7] = IGNORE_INDEX
    before = resident_bytes()
    if variant == "plain":
        cross_entropy, penalty = loss_sums(hidden @ weight.T, targets, IGNORE_INDEX, z_loss_weight)
    else:
        cross_entropy, penalty = chunked_loss_sums(hidden, weight, targets, IGNORE_INDEX, chunk_tokens, z_loss_weight)
    (cross_entropy + penalty).backward()
    peak = peak_resident_bytes() - before
    counted = (targets != IGNORE_INDEX).sum().item()
    return {
        "peak_bytes": peak,
        "loss_per_token": (cross_entropy + penalty).item() / counted,
        "hidden_grad": hidden.grad[:64].flatten().tolist(),
        "weight_grad": weight.grad[:64].flatten().tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk_tokens", type=int, default=1024)
    parser.add_argument("--z_loss_weight", type=float, default=1e-4)
    parser.add_argument("--smoke", action="store_true", help="a tiny shape, to check the script runs")
    parser.add_argument("--variant", choices=("plain", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.vocab, args.dim, args.chunk_tokens = 256, 1024, 32, 64
    shape = (args.tokens, args.vocab, args.dim, args.chunk_tokens, args.z_loss_weight)
    if args.variant:
        print(json.dumps(one_variant(args.variant, *shape)))
        return
    results = {}
    for variant in ("plain", "chunked"):
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        results[variant] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    plain, chunked = results["plain"], results["chunked"]
    loss_difference = abs(plain["loss_per_token"] - chunked["loss_per_token"])
    gradient_difference = max(
        abs(a - b) for key in ("hidden_grad", "weight_grad") for a, b in zip(plain[key], chunked[key], strict=True)
    )
    logits_gib = args.tokens * args.vocab * 4 / 2**30
    print(f"loss step of {args.tokens:,} tokens × {args.vocab:,} vocabulary, width {args.dim} (float32 logits "
          f"{logits_gib:.2f} GiB), torch {torch.__version__}")  # fmt: skip
    print(f"  plain                 peak {plain['peak_bytes'] / 2**30:6.2f} GiB  1.000")
    ratio = chunked["peak_bytes"] / plain["peak_bytes"]
    print(f"  chunked ({args.chunk_tokens:,} tokens)  peak {chunked['peak_bytes'] / 2**30:6.2f} GiB  {ratio:.3f}")
    print(
        f"  difference of the loss per target token {loss_difference:.1e}, of the gradients {gradient_difference:.1e}"
    )


if __name__ == "__main__":
    main()
