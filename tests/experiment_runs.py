"""Real ``llm_gym`` runs for end-to-end tests: the CLI in a subprocess, torchrun, a small real corpus."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "config_files" / "tiny_cpu.yaml"


def llm_gym(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "llm_gym", *args], cwd=cwd, capture_output=True, text=True, env=subprocess_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"llm_gym {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """The command line of ``llm_gym ARGS`` on ``nproc`` ranks under torchrun, on a free port."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(ROOT / "src" / "llm_gym" / "__main__.py"), *args,
    ]  # fmt: skip


def torchrun(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_command(nproc, *args), capture_output=True, text=True, env=subprocess_env())
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc (Linux)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: it runs no more), from /proc (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def subprocess_env() -> dict[str, str]:
    # One thread per process keeps 2-rank runs on a 2-core machine deterministic and fast.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def wait_for_train_line(metrics_path: Path, step: int, launcher: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"the run ended (status {launcher.returncode}) before step {step}"
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        if any(f'"step": {step}, "split": "train"' in line for line in lines):
            return
        time.sleep(0.01)
    raise AssertionError(f"no train line for step {step} in {metrics_path} after {timeout_s} s")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_byte_corpus(directory: Path) -> Path:
    """Train and val splits of a small real corpus, ``<dir>/{train,val}.jsonl``, byte-tokenized:
    ``<dir>/{train,val}_byte.{bin,idx}``."""
    sources = sorted(Path(json.__file__).parent.glob("*.py")) + sorted(Path(subprocess.__file__).parent.glob("a*.py"))
    documents = [path.read_text(encoding="utf-8") for path in sources]
    for split, docs in (("train", documents[2:]), ("val", documents[:2])):
        jsonl = directory / f"{split}.jsonl"
        jsonl.write_text("".join(json.dumps({"text": text}) + "\n" for text in docs))
        llm_gym("data", "tokenize", "--input", str(jsonl), "--tokenizer", "byte",
                "--output_prefix", str(directory / f"{split}_byte"))  # fmt: skip
    return directory


def tiny_config_with_user_module(directory: Path, module: str, source: str) -> Path:
    """``<directory>/<module>.yaml``: the tiny config naming the user module ``<module>.py`` (``source``) beside
    it, the test corpus in the same directory (``tiny_overrides(directory, ...)``)."""
    (directory / f"{module}.py").write_text(source)
    config = directory / f"{module}.yaml"
    config.write_text(f"defaults: [{TINY_CONFIG}]\nuser_modules: [{module}]\n")
    write_byte_corpus(directory)
    return config


def tiny_overrides(corpus: Path, output_dir: Path, **extra: object) -> list[str]:
    """The tiny CPU config shrunk further, pointed at the test corpus and a temporary experiment dir."""
    overrides = {
        "experiment.output_dir": output_dir,
        "data.train_dataset.config.path_prefix": corpus / "train_byte",
        "data.eval_datasets.val.config.path_prefix": corpus / "val_byte",
        "training.max_steps": 6,
        "training.sequence_length": 32,
        "training.micro_batch_size": 4,
        "training.eval_interval": 3,
        "training.eval_samples": 8,
        "training.log_interval": 1,
        "checkpointing.every_n_steps": 3,
        "loggers": "[{type_hint: MetricsJsonl, config: {}}]",
        **extra,
    }
    return [f"{key}={value}" for key, value in overrides.items()]


def run_losses(corpus: Path, output_dir: Path, ranks: int, **settings: object) -> dict[str, dict[int, float]]:
    """Losses by split and step of one run of the tiny config on ``ranks`` processes (torchrun above one)."""
    args = ["run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(corpus, output_dir, **settings)]
    if ranks == 1:
        llm_gym(*args)
    else:
        torchrun(ranks, *args)
    losses: dict[str, dict[int, float]] = {}
    for line in read_metrics(output_dir / "metrics.jsonl"):
        losses.setdefault(line["split"], {})[line["step"]] = line["loss"]
    return losses


def largest_difference(expected: dict, actual: dict) -> float:
    """The largest difference between two runs' losses (``run_losses``), which must log the same steps."""
    assert expected.keys() == actual.keys()
    return max(abs(expected[split][step] - actual[split][step]) for split in expected for step in expected[split])


def steps_after(losses: dict, step: int) -> dict:
    """``run_losses`` of the steps after ``step``: what a run resumed there logs."""
    return {split: {s: loss for s, loss in by_step.items() if s > step} for split, by_step in losses.items()}
