"""Profiler traces of chosen steps on chosen ranks, and the spread of the step time across ranks."""

import json

import pytest
import torch

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides, torchrun, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.training.profiling import MemorySnapshots


def test_trace_steps_in_the_wrong_order_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"trace_steps \[5, 3\]: the first step comes after the last; swap them"):
        load_config(TINY_CONFIG, TrainingAppConfig, ["profiling.trace_steps=[5,3]"], registry=make_registry())


@pytest.mark.slow
def test_a_trace_of_the_chosen_steps_on_the_chosen_rank_and_the_stragglers_on_train_lines(tmp_path):
    skip_unless_gloo_sharding_works()
    corpus = write_byte_corpus(tmp_path)
    output_dir = tmp_path / "run"
    settings = {"profiling.trace_steps": "[2,3]", "profiling.trace_ranks": "[1]", "training.log_interval": 2}
    torchrun(2, "run", "--config_file_path", str(TINY_CONFIG), *tiny_overrides(corpus, output_dir, **settings))
    assert sorted(path.name for path in (output_dir / "profiles").iterdir()) == ["trace_rank1_steps2-3.json"]
    events = json.loads((output_dir / "profiles" / "trace_rank1_steps2-3.json").read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert "aten::mm" in names or "aten::addmm" in names  # the model's matmuls, recorded
    train = [line for line in read_metrics(output_dir / "metrics.jsonl") if line["split"] == "train"]
    for line in train:
        assert 0 < line["step_time_min_s"] <= line["step_time_max_s"] and line["slowest_rank"] in (0, 1)
        assert line["phase_step_s"] > 0 and line["phase_data_s"] >= 0


def test_memory_snapshots_are_refused_for_a_run_on_the_cpu():
    with pytest.raises(
        ConfigError, match=r"record CUDA memory, and this run trains on cpu: unset them, or train on a GPU"
    ):
        load_config(TINY_CONFIG, TrainingAppConfig, ["profiling.memory_snapshot_step=3"], registry=make_registry())


@pytest.mark.skipif(torch.cuda.is_available(), reason="device auto picks the GPU here")
def test_memory_snapshots_are_refused_when_device_auto_finds_no_gpu(tmp_path):
    corpus = write_byte_corpus(tmp_path)
    settings = {"training.device": "auto", "profiling.memory_snapshot_step": 2}
    overrides = tiny_overrides(corpus, tmp_path / "run", **settings)
    result = llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides, check=False)
    assert result.returncode == 2
    assert "record CUDA memory, and this run trains on cpu: unset them, or train on a GPU" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run writes anything


def test_memory_snapshots_record_from_the_start_and_dump_after_their_step_and_on_out_of_memory(tmp_path, monkeypatch):
    # torch's recorder stands in for the GPU's: what matters here is when llm_gym calls it.
    calls = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda **kwargs: calls.append(("record", kwargs)))
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", lambda path: calls.append(("dump", path)))
    snapshots = MemorySnapshots(step=2, on_out_of_memory=True, directory=tmp_path / "profiles", rank=3)
    with pytest.raises(torch.cuda.OutOfMemoryError), snapshots.recording():
        for step in (1, 2, 3):
            snapshots.after_step(step)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert calls == [
        ("record", {"max_entries": MemorySnapshots.MAX_ENTRIES}),
        ("dump", str(tmp_path / "profiles" / "memory_rank3_step2.pickle")),
        ("dump", str(tmp_path / "profiles" / "memory_rank3_oom.pickle")),
        ("record", {"enabled": None}),
    ]
