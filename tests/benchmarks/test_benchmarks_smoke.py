"""The training benchmarks run end to end in their smoke modes (tiny shapes, CPU, a few steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_training_overhead_smoke():
    output = run_benchmark("training_overhead.py", "--smoke").stdout
    for variant in (
        "plain PyTorch loop",
        "llm_gym fused AdamW",
        "llm_gym compile: blocks",
        "llm_gym best float32 switches",
    ):
        assert variant in output
    assert "llm_gym defaults (switches: none): " in output and "(target: ≥ 0.99)" in output
    assert (
        "llm_gym best switches (switches: training.compile=model, optimizer.config.fused=true,"
        " training.float32_matmul_precision=medium): " in output
    )
    assert "(target: ≥ 1.1)" in output


@pytest.mark.slow
def test_gpu_throughput_smoke(tmp_path):
    results = tmp_path / "results.jsonl"
    output = run_benchmark("gpu_throughput.py", "--smoke", "--output", str(results)).stdout
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(row["model"], row["variant"]) for row in rows] == [
        ("gpt2_124m", "FSDP2"),
        ("gpt2_124m", "plain PyTorch loop"),
        ("llama_1b", "FSDP2"),
        ("llama_1b", "plain PyTorch loop"),
    ]
    for row in rows:
        assert "error" not in row and row["tokens_per_s"] > 0 and row["tokens_per_step"] == 2 * 32
        assert row["mfu"] is None  # no GPU peak to measure against on a CPU
    assert "logged tok/s" in output


@pytest.mark.slow
def test_recipe_comparison_smoke():
    output = run_benchmark("recipe_comparison.py", "--smoke").stdout
    for recipe in ("AdamW + cosine (demo)", "Muon + WSD"):
        assert f"\n{recipe} " in output
    assert "val@3" in output and "ratio" in output


def test_document_masking_smoke():
    output = run_benchmark("document_masking.py", "--smoke").stdout
    assert "causal" in output and "1.000" in output
    assert any(line.startswith("sdpa ") for line in output.splitlines())


@pytest.mark.slow
def test_communication_volume_counts_what_layouts_computes():
    output = run_benchmark("communication_volume.py", "--smoke", "--layouts", "dp2", "tp2").stdout
    ratios = [float(line.split("ratio ")[1].split()[0]) for line in output.splitlines() if " ratio " in line]
    assert len(ratios) == 2 and all(abs(ratio - 1) <= 0.1 for ratio in ratios), output[-3000:]


def test_chunked_loss_memory_smoke():
    output = run_benchmark("chunked_loss_memory.py", "--smoke").stdout
    assert "plain" in output and "chunked (64 tokens)" in output
    assert "difference of the loss per target token" in output
