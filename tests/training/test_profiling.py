"""Profiler traces of chosen steps on chosen ranks, and the spread of the step time across ranks."""

import json

import pytest

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, read_metrics, tiny_overrides, torchrun, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError


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
