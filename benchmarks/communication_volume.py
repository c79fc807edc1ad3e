"""Bytes each rank sends per optimizer step, counted in real llm_gym runs, against ``llm_gym.parallel.layouts``.

Each layout trains the demo model (config_files/demo_cpu.yaml: GPT-2-style, 4 layers, width 192, 6 heads, learned
positions, tied 4096-id embeddings) for a few steps on real gloo processes, through ``run_training``, on a byte
corpus this script writes. In every rank a counting ``TorchDispatchMode`` sees each collective and point-to-point op
as it is dispatched, the process-group ones (``c10d.*``: what ``torch.distributed.all_reduce``,
``all_gather_into_tensor``, ``reduce_scatter_tensor``, ``all_to_all_single``, ``broadcast``, ``send``/``isend``,
``batch_isend_irecv`` and FSDP2 call) and DTensor's functional ones (``_c10d_functional.*``: tensor parallelism's
redistributions), and adds what a ring makes this rank send for it: the same convention as the analytical figure
(``layouts`` module docstring). The figure compared is one steady step (between the 2nd and 3rd optimizer step),
averaged over the ranks. A count is no timing: the ratio is the same on any machine.

    python benchmarks/communication_volume.py [--layouts dp2 tp2 tp2xdp2 hsdp2x2 pp2 cp2] [--smoke]

A layout whose keys this code refuses (pipeline or context parallelism before they exist) is skipped with the
reason. Exit status 1 when a layout's ratio is off by more than 10%.
"""

import argparse
import os
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.distributed import ProcessGroup
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode

from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import UserError
from llm_gym.parallel.distributed import DistributedEnvironment, destroy_distributed
from llm_gym.parallel.layouts import traffic
from llm_gym.training.builder import build_model_on_meta, build_optimization
from llm_gym.training.run import run_training
from llm_gym.training.summary import layout_of, model_figures, optimizer_state_tensors, step_figures
from training_harness import write_byte_corpus

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "config_files" / "demo_cpu.yaml"
TARGET = 0.10
MEASURED_STEP = 3
"""The optimizer step whose bytes are compared: after the first steps' one-off work, before the end's."""

# name: (ranks, overrides). One line per layout.
LAYOUTS = {
    "dp2": (2, {}),
    "tp2": (2, {"parallelism.config.tensor_parallel_degree": 2}),
    "tp2xdp2": (4, {"parallelism.config.tensor_parallel_degree": 2}),
    "hsdp2x2": (4, {"parallelism.type_hint": "HSDP", "parallelism.config.replicate_degree": 2,
                    "parallelism.config.shard_degree": 2}),
    "pp2": (2, {"parallelism.config.pipeline_parallel_degree": 2}),
    "cp2": (2, {"parallelism.config.context_parallel_degree": 2}),
}  # fmt: skip
SMOKE_SHAPE = {
    "model.config.n_layer": 2,
    "model.config.dim": 48,
    "model.config.mlp.config.hidden_dim": 96,
    "model.config.vocab_size": 512,
    "training.sequence_length": 32,
    "training.micro_batch_size": 2,
}


def run_overrides(corpus: Path, output_dir: Path, layout: dict, smoke: bool) -> list[str]:
    overrides = {
        **(SMOKE_SHAPE if smoke else {}),
        **layout,
        "training.max_steps": MEASURED_STEP + 1,
        "lr_scheduler.config.warmup_steps": 1,
        "training.gradient_accumulation_steps": 2,
        "training.log_interval": 1,
        "training.eval_interval": 1_000_000,
        "training.eval_at_start": "false",
        "training.eval_samples": 1,
        "checkpointing.every_n_steps": 0,
        "evaluation.evaluators": "[]",
        "data.tokenizer": "byte",
        "data.train_dataset.config.path_prefix": corpus,
        "data.eval_datasets.val.config.path_prefix": corpus,
        "experiment.output_dir": output_dir,
    }
    return [f"{key}={value}" for key, value in overrides.items()]


class SentBytes(TorchDispatchMode):
    """Adds up, per op, the bytes a ring makes this rank send for each collective dispatched under it."""

    def __init__(self):
        super().__init__()
        self.sent: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace in ("c10d", "_c10d_functional"):
            self.sent[f"{namespace}.{name}"] += _ring_bytes(namespace, name, args)
        return func(*args, **kwargs)


def _bytes(tensors) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(_bytes(tensor) for tensor in tensors)


def _group_size(group) -> int:
    if isinstance(group, str):  # a functional collective's group name
        return torch.distributed.distributed_c10d._resolve_process_group(group).size()
    return ProcessGroup.unbox(group).size()  # a c10d op's group comes as a TorchScript object


def _ring_bytes(namespace: str, name: str, args: tuple) -> float:
    """What this rank sends, by the layouts module's convention, for one op and its arguments."""
    if namespace == "_c10d_functional":
        share = {
            "all_reduce": lambda n: 2 * (n - 1) / n,
            "all_reduce_": lambda n: 2 * (n - 1) / n,
            "all_gather_into_tensor": lambda n: n - 1,
            "reduce_scatter_tensor": lambda n: (n - 1) / n,
            "all_to_all_single": lambda n: (n - 1) / n,
            "broadcast": lambda n: (n - 1) / n,
        }.get(name)
        if share is None:  # wait_tensor and the like move nothing
            return 0
        return share(_group_size(args[-1])) * _bytes(args[0])
    # c10d ops take (outputs, inputs, process group, ...) or (tensors, process group, ...).
    if name in ("send",):
        return _bytes(args[0])
    groups = [arg for arg in args if isinstance(arg, torch.ScriptObject)]
    if not groups or name in ("recv_", "recv_any_source_", "barrier", "monitored_barrier_"):
        return 0
    n = _group_size(groups[0])
    if name == "allreduce_":
        return 2 * (n - 1) / n * _bytes(args[0])
    if name in ("_allgather_base_", "allgather_", "allgather_into_tensor_coalesced_"):
        return (n - 1) * _bytes(args[1])
    if name in ("_reduce_scatter_base_", "reduce_scatter_", "reduce_scatter_tensor_coalesced_"):
        return (n - 1) / n * _bytes(args[1])
    if name in ("alltoall_base_", "alltoall_"):
        return (n - 1) / n * _bytes(args[1])
    if name == "broadcast_":
        return (n - 1) / n * _bytes(args[0])
    return 0


def _rank(rank: int, world_size: int, port: int, overrides: list[str], results) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
         "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
         "OMP_NUM_THREADS": "1"}
    )  # fmt: skip
    torch.set_num_threads(1)
    counter = SentBytes()
    snapshots: list[Counter[str]] = []
    hook = register_optimizer_step_post_hook(lambda *_: snapshots.append(Counter(counter.sent)))
    try:
        with counter:
            run_training(DEMO_CONFIG, overrides)
        step = snapshots[MEASURED_STEP - 1].copy()
        step.subtract(snapshots[MEASURED_STEP - 2])
        results[rank] = ("ok", dict(step))
    except BaseException:
        results[rank] = ("error", traceback.format_exc())
        raise
    finally:
        hook.remove()
        destroy_distributed()


def measure(world_size: int, overrides: list[str]) -> list[dict[str, float]]:
    """Each rank's bytes sent in the measured step, by op."""
    with mp.Manager() as manager:
        results = manager.dict()
        port = 29500 + os.getpid() % 1000
        try:
            mp.spawn(_rank, args=(world_size, port, overrides, results), nprocs=world_size, join=True)
        except mp.ProcessRaisedException as error:
            failures = [value for status, value in results.values() if status == "error"]
            raise RuntimeError("\n".join(failures) or str(error)) from None
        return [results[rank][1] for rank in range(world_size)]


def analytical(world_size: int, overrides: list[str]) -> tuple[dict[str, float], str]:
    """The layouts module's bytes per rank for this run, by kind, and the layout's name; ``UserError`` where this
    code refuses the layout."""
    registry = make_registry()
    config = load_config(DEMO_CONFIG, TrainingAppConfig, overrides, registry=registry)[0]
    env = DistributedEnvironment(0, 0, world_size, world_size, torch.device("cpu"))
    parallelism = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    model = build_model_on_meta(config, registry)
    state_tensors, _ = optimizer_state_tensors(build_optimization(config, model, registry)[0])
    layout = layout_of(parallelism)
    figures = model_figures(model, parallelism.tensor_parallel_plan(model))
    return traffic(figures, step_figures(config, parallelism, state_tensors), layout).bytes_by_kind, str(layout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--smoke", action="store_true", help="a smaller model (the ratios hold all the same)")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        corpus = work / "corpus"
        write_byte_corpus(corpus, Path(os.__file__).parent, "a*.py")
        print(f"bytes each rank sends in optimizer step {MEASURED_STEP} (mean over ranks), torch {torch.__version__}")
        for name in args.layouts:
            world_size, layout = LAYOUTS[name]
            overrides = run_overrides(corpus, work / name, layout, args.smoke)
            os.environ["WORLD_SIZE"] = str(world_size)  # ${dist:world_size} as the ranks will resolve it
            try:
                expected, mesh = analytical(world_size, overrides)
            except UserError as error:
                print(f"\n{name}: skipped, refused here: {' '.join(str(error).split())}")
                continue
            ranks = measure(world_size, overrides)
            measured = sum(sum(rank.values()) for rank in ranks) / world_size
            ratio = measured / sum(expected.values())
            verdict = "PASS" if abs(ratio - 1) <= TARGET else "FAIL"
            failed |= verdict == "FAIL"
            print(
                f"\n{name} ({world_size} ranks, mesh {mesh}): measured {measured:,.0f} B, analytical "
                f"{sum(expected.values()):,.0f} B, ratio {ratio:.3f} {verdict} (target within {TARGET:.0%})"
            )
            for kind, sent in expected.items():
                print(f"  analytical {kind:<24}{sent:>14,.0f}")
            by_op = Counter()
            for rank in ranks:
                by_op.update(rank)
            for op, sent in [(op, sent) for op, sent in by_op.most_common() if sent]:
                print(f"  measured   {op:<40}{sent / world_size:>14,.0f}")
            spread = [sum(rank.values()) for rank in ranks]
            print(f"  per rank: {', '.join(f'{sent:,.0f}' for sent in spread)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
