"""Every shipped training config composes and validates, holds each model once, and accepts the override keys of
docs/contract.md with their meaning."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from llm_gym.cli import main
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.composition import compose

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config_files"
TRAINING_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
MODEL_SECTIONS = CONFIG_DIR / "model_sections"
SPEC_OVERRIDES = {
    "experiment.output_dir": "/tmp/elsewhere",
    "experiment.seed": 7,
    "training.max_steps": 3000,
    "training.micro_batch_size": 2,
    "training.gradient_accumulation_steps": 3,
    "training.eval_interval": 11,
    "training.log_interval": 3,
    "checkpointing.every_n_steps": 0,
    "checkpointing.keep_last": -1,
    "optimizer.type_hint": "AdamW",
    "optimizer.config.lr": 0.0001,
    "model.type_hint": "DecoderLM",
    "model.config.n_layer": 2,
    "model.config.document_masking": True,
}


def validate(config: Path, *overrides: str):
    return CliRunner().invoke(main, ["validate", "--config_file_path", str(config), *overrides])


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda path: path.name)
def test_shipped_config_validates_with_every_spec_override(config):
    result = validate(config, *(f"{key}={value}" for key, value in SPEC_OVERRIDES.items()))
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output.split("\n---\n")[0])
    for key, value in SPEC_OVERRIDES.items():
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert "model parameters:" in result.output and "memory per rank" in result.output


def test_gpt2_config_counts_gpt2_small_exactly():
    result = validate(CONFIG_DIR / "config.yaml")
    assert result.exit_code == 0, result.output
    assert "model parameters: 124,439,808" in result.output
    assert "training FLOPs per token: 855,166,464" in result.output
    assert (
        "global batch: 60 samples (12 micro batch × 5 accumulation × 1 data-parallel) × 1024 tokens "
        "= 61,440 tokens per step"
    ) in result.output


def test_validate_checks_batch_sizes_for_the_planned_world_size():
    config = CONFIG_DIR / "config.yaml"
    ok = CliRunner().invoke(
        main, ["validate", "--config_file_path", str(config), "--world_size", "8", "training.global_batch_size=480"]
    )
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(
        main, ["validate", "--config_file_path", str(config), "--world_size", "4", "training.global_batch_size=480"]
    )
    assert bad.exit_code == 2 and "global_batch_size (480) must equal" in bad.output


def test_validate_for_another_world_size_leaves_the_environment_alone(monkeypatch):
    import os

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(
        main, ["validate", "--config_file_path", str(CONFIG_DIR / "tiny_cpu.yaml"), "--world_size", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "world size: 8" in result.output and "WORLD_SIZE" not in os.environ


def resolved_config(result) -> dict:
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output.split("\n---\n")[0])


def test_swapping_the_optimizer_drops_the_keys_only_the_old_one_takes():
    resolved = resolved_config(validate(CONFIG_DIR / "tiny_cpu.yaml", "optimizer.type_hint=SGD"))
    assert resolved["optimizer"] == {"type_hint": "SGD", "config": {"lr": 3.0e-3, "weight_decay": 0.1}}


def test_swapping_the_optimizer_applies_the_new_ones_keys_given_with_it():
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", "optimizer.type_hint=SGD", "optimizer.config.momentum=0.9")
    assert resolved_config(result)["optimizer"]["config"] == {"lr": 3.0e-3, "weight_decay": 0.1, "momentum": 0.9}


def test_a_key_given_with_the_swap_is_still_checked():
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", "optimizer.type_hint=SGD", "optimizer.config.betas=[0.9,0.9]")
    assert result.exit_code == 2
    assert "optimizer.config.betas: unknown key" in result.stderr


def test_swapping_a_nested_component():
    result = validate(
        CONFIG_DIR / "tiny_cpu.yaml", "model.config.norm.type_hint=LayerNorm", "data.dataloader.type_hint=x"
    )
    assert result.exit_code == 2 and "unknown type_hint 'x'" in result.stderr  # an unknown type is reported, not pruned
    model = resolved_config(validate(CONFIG_DIR / "tiny_cpu.yaml", "model.config.norm.type_hint=LayerNorm"))["model"]
    assert model["config"]["norm"] == {"type_hint": "LayerNorm", "config": {"eps": 1.0e-5}}
    assert model["config"]["mlp"]["config"] == {"hidden_dim": 352}


def test_swapping_the_schedule_keeps_its_shared_keys_and_takes_new_ones():
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", "lr_scheduler.type_hint=StepLR", "lr_scheduler.config.step_size=10")
    assert resolved_config(result)["lr_scheduler"] == {"type_hint": "StepLR", "config": {"step_size": 10}}


def test_delete_override_removes_a_key():
    resolved = resolved_config(validate(CONFIG_DIR / "tiny_cpu.yaml", "~optimizer.config.betas", "~loggers.1"))
    assert "betas" not in resolved["optimizer"]["config"]
    assert [logger["type_hint"] for logger in resolved["loggers"]] == ["Console"]


def _state_gib(result) -> float:
    line = next(line for line in result.output.splitlines() if line.startswith("memory per rank"))
    return float(line.split("state ")[1].split()[0])


def test_memory_estimate_counts_the_configured_optimizers_state():
    config = CONFIG_DIR / "config.yaml"
    adamw = validate(config)
    sgd = validate(config, "optimizer.type_hint=SGD", "optimizer.config.momentum=0.9")
    plain_sgd = validate(config, "optimizer.type_hint=SGD")
    for result in (adamw, sgd, plain_sgd):
        assert result.exit_code == 0, result.output
    assert "AdamW: 2 fp32 moments" in adamw.output and "SGD: a momentum buffer" in sgd.output
    assert "SGD: no state" in plain_sgd.output
    # fp32 weights + gradients (8 bytes) plus 4 bytes per state tensor: 16, 12 and 8 bytes per parameter.
    assert _state_gib(adamw) / _state_gib(sgd) == pytest.approx(16 / 12, rel=0.02)
    assert _state_gib(adamw) / _state_gib(plain_sgd) == pytest.approx(16 / 8, rel=0.02)


def test_swapping_a_component_in_a_list_by_its_index():
    overrides = ["loggers.0.config.progress_bar=false", "loggers.0.type_hint=TensorBoard"]
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", *overrides)
    assert resolved_config(result)["loggers"][0] == {"type_hint": "TensorBoard", "config": {}}  # progress_bar dropped
    assert resolved_config(result)["loggers"][1]["type_hint"] == "MetricsJsonl"


def test_a_whole_node_override_that_changes_the_type_is_a_swap():
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", "optimizer={type_hint: SGD, config: {lr: 0.1, momentum: 0.9}}")
    assert resolved_config(result)["optimizer"] == {
        "type_hint": "SGD",
        "config": {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.9},  # merged: the file's weight_decay stays
    }


def test_keys_of_a_second_whole_node_override_after_a_swap_are_still_checked():
    result = validate(
        CONFIG_DIR / "tiny_cpu.yaml", "optimizer.type_hint=SGD", "optimizer={type_hint: SGD, config: {betas: [1, 2]}}"
    )
    assert result.exit_code == 2 and "optimizer.config.betas: unknown key" in result.stderr


def test_each_model_is_written_once_in_a_model_section():
    for path in CONFIG_DIR.rglob("*.yaml"):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys == {"model"} if path.parent == MODEL_SECTIONS else "model" not in keys, path


def test_every_training_config_composes_one_model_section_and_every_section_is_used():
    used = []
    for config in TRAINING_CONFIGS:
        files = compose(config, TrainingAppConfig.composition_defaults).files
        sections = [file for file in files if file.parent == MODEL_SECTIONS]
        assert len(sections) == 1, config  # a second section of the same type would merge into the first
        used += sections
    assert set(used) == set(MODEL_SECTIONS.glob("*.yaml"))
