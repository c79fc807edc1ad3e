"""Checkpoint save and load throughput: llm_gym's checkpoints and raw DCP against a plain ``torch.save``.

All three write the same model + AdamW state from one process. Then the training stall of an llm_gym save, in
line and in the background (``checkpointing.async``: the loop waits only while the state is copied to host
memory), with the time until the checkpoint is ``latest``. ``torch.save`` is followed by an fsync,
as DCP's writer does by default. Loads read a file just written, so they come mostly from the page cache.

    python benchmarks/checkpoint_benchmark.py [--model_mb 64] [--repeats 3] [--work_dir DIR]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from llm_gym.checkpointing import CheckpointManager, ModelState, OptimizerState, load_checkpoint
from llm_gym.parallel.collectives import single_process_quietly

WIDTH = 2048


def build_state(model_mb: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    layers = max(1, round(model_mb * 2**20 / (4 * (WIDTH * WIDTH + WIDTH))))
    model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()  # creates exp_avg and exp_avg_sq: the state is three times the weights
    return model, optimizer


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = list(model.state_dict().values()) + [
        value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)
    ]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def median_seconds(action: Callable[[], None], prepare: Callable[[], None], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        prepare()
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def torch_save_baseline(model, optimizer, path: Path, repeats: int) -> tuple[float, float]:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def save() -> None:
        with path.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())

    save_s = median_seconds(save, lambda: path.unlink(missing_ok=True), repeats)
    load_s = median_seconds(lambda: torch.load(path, weights_only=True), lambda: None, repeats)
    return save_s, load_s


def raw_dcp(model, optimizer, directory: Path, repeats: int) -> tuple[float, float]:
    def state() -> dict:
        return {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer)}

    with single_process_quietly():
        save_s = median_seconds(
            lambda: dcp.save(state(), checkpoint_id=directory), lambda: shutil.rmtree(directory, True), repeats
        )
        load_s = median_seconds(lambda: dcp.load(state(), checkpoint_id=directory), lambda: None, repeats)
    return save_s, load_s


def llm_gym_checkpoint(model, optimizer, root: Path, repeats: int) -> tuple[float, float]:
    manager = CheckpointManager(root, every_n_steps=1, keep_last=1)

    def state() -> dict:
        return {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer)}

    save_s = median_seconds(lambda: manager.save(1, state(), {}), lambda: shutil.rmtree(root, True), repeats)
    load_s = median_seconds(lambda: load_checkpoint(root / "step_1", state()), lambda: None, repeats)
    return save_s, load_s


def stall_in_line_and_in_the_background(model, optimizer, root: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Per save: how long the caller (the training loop) waits, and how long until the checkpoint is ``latest``."""
    results = {}
    for name, in_background in (("in line", False), ("in the background (checkpointing.async)", True)):
        directory = root / ("background" if in_background else "in_line")
        manager = CheckpointManager(directory, every_n_steps=1, keep_last=1, in_background=in_background)
        stalls, totals = [], []
        for step in range(1, repeats + 1):
            state = {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer)}
            start = time.perf_counter()
            manager.save(step, state, {})
            stalls.append(time.perf_counter() - start)
            manager.wait()
            totals.append(time.perf_counter() - start)
        results[name] = (statistics.median(stalls), statistics.median(totals))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_mb", type=int, default=64, help="weights in MB; the optimizer adds twice that")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, optimizer = build_state(args.model_mb)
    megabytes = state_bytes(model, optimizer) / 2**20
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work_dir = Path(work)
        results = {
            "torch.save / torch.load": torch_save_baseline(model, optimizer, work_dir / "state.pt", args.repeats),
            "DCP (raw)": raw_dcp(model, optimizer, work_dir / "dcp", args.repeats),
            "llm_gym checkpoint": llm_gym_checkpoint(model, optimizer, work_dir / "checkpoints", args.repeats),
        }
        stalls = stall_in_line_and_in_the_background(model, optimizer, work_dir / "stall", args.repeats)
    baseline_save, baseline_load = results["torch.save / torch.load"]
    print(f"state: {megabytes:.0f} MB (model + AdamW), median of {args.repeats}, torch {torch.__version__}")
    print("speed relative to torch.save / torch.load in the 'vs torch' columns (higher is faster)")
    print(f"{'method':<26}{'save s':>8}{'save MB/s':>11}{'vs torch':>9}{'load s':>9}{'load MB/s':>11}{'vs torch':>9}")
    for name, (save_s, load_s) in results.items():
        print(
            f"{name:<26}{save_s:>8.2f}{megabytes / save_s:>11.0f}{baseline_save / save_s:>9.2f}"
            f"{load_s:>9.2f}{megabytes / load_s:>11.0f}{baseline_load / load_s:>9.2f}"
        )
    in_line_stall = stalls["in line"][0]
    print("training stall per llm_gym save (the loop waits) and time until it is latest, vs saving in line:")
    for name, (stall_s, total_s) in stalls.items():
        print(f"  {name:<42} stall {stall_s:6.3f} s  {stall_s / in_line_stall:5.3f}  latest after {total_s:6.3f} s")


if __name__ == "__main__":
    main()
