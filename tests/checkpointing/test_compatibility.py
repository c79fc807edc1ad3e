"""Which config changes break an exact resume, and which change hyperparameters."""

import copy

import pytest

from experiment_runs import TINY_CONFIG
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.training.resume_policy import config_differences, hyperparameter_changes, with_defaults
from toy_config import load_config

CONFIG = {
    "experiment": {"seed": 42, "output_dir": "experiments/a"},
    "training": {"max_steps": 100, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "sequence_length": 64},
    "model": {"type_hint": "GPT2", "config": {"n_layer": 2, "n_embd": 64}},
    "optimizer": {"type_hint": "AdamW", "config": {"lr": 1e-3}},
    "data": {
        "train_dataset": {"type_hint": "Packed", "config": {"prefix": "data/train"}},
        "sampler": {"type_hint": "Shuffled", "config": {"seed": 1}},
        "collator": {"type_hint": "Causal", "config": {}},
        "dataloader": {"type_hint": "Default", "config": {"num_workers": 0}},
    },
}


def changed(**dotted):
    config = copy.deepcopy(CONFIG)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    return config


def test_identical_configs_and_harmless_changes_have_no_differences():
    assert config_differences(CONFIG, CONFIG, 2, 2) == []
    harmless = changed(
        training__max_steps=200, optimizer__config={"lr": 5e-4}, data__dataloader={"type_hint": "Default"}
    )
    assert config_differences(CONFIG, harmless, 2, 2) == []


def test_fewer_ranks_with_more_accumulation_is_the_same_global_batch():
    assert config_differences(CONFIG, changed(training__gradient_accumulation_steps=2), 2, 1) == []


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (changed(model__config={"n_layer": 4, "n_embd": 64}), "model.config.n_layer: checkpoint 2, now 4"),
        (changed(model__config={"n_layer": 2}), "model.config.n_embd: checkpoint 64, now '<absent>'"),
        (changed(experiment__seed=1), "experiment.seed: checkpoint 42, now 1"),
        (changed(training__sequence_length=128), "training.sequence_length: checkpoint 64, now 128"),
        (
            changed(data__train_dataset={"type_hint": "Packed", "config": {"prefix": "data/other"}}),
            "data.train_dataset.config.prefix: checkpoint 'data/train', now 'data/other'",
        ),
        (changed(data__sampler={"type_hint": "Sequential", "config": {}}), "data.sampler.type_hint"),
        (changed(data__collator={"type_hint": "Other", "config": {}}), "data.collator.type_hint"),
        (changed(optimizer__type_hint="SGD"), "optimizer.type_hint: checkpoint 'AdamW', now 'SGD'"),
        (
            changed(training__micro_batch_size=8),
            "global batch (micro_batch_size × gradient_accumulation_steps × ranks): "
            "checkpoint 8 (4 × 1 × 2 ranks), now 16 (8 × 1 × 2 ranks)",
        ),
    ],
)
def test_differences_that_break_equivalence_are_named(current, expected):
    differences = config_differences(CONFIG, current, 2, 2)
    assert any(line.startswith(expected) for line in differences), differences


def test_a_changed_world_size_alone_changes_the_global_batch():
    (difference,) = config_differences(CONFIG, CONFIG, 2, 1)
    assert "checkpoint 8 (4 × 1 × 2 ranks), now 4 (4 × 1 × 1 ranks)" in difference


def test_model_parallel_ranks_read_one_data_parallel_ranks_samples():
    pipeline = changed(parallelism={"type_hint": "FSDP2", "config": {"pipeline_parallel_degree": 2}})
    assert config_differences(pipeline, CONFIG, 4, 2) == []
    tp_by_pp = {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2}
    (difference,) = config_differences(pipeline, changed(parallelism={"type_hint": "FSDP2", "config": tp_by_pp}), 4, 4)
    divided = "world size 4 ÷ tensor_parallel_degree 2 × pipeline_parallel_degree 2"
    assert f"now 4 (4 × 1 × 1 ranks ({divided}))" in difference


def test_values_compare_as_they_were_stored_in_json():
    saved = changed(model__config={"n_layer": 2, "n_embd": 64, "betas": [0.9, 0.95]})
    current = changed(model__config={"n_layer": 2, "n_embd": 64, "betas": (0.9, 0.95)})
    assert config_differences(saved, current, 2, 2) == []


def test_changed_hyperparameters_are_listed_apart_from_differences():
    current = changed(
        training__max_steps=200,
        optimizer__config={"lr": 5e-4},
        lr_scheduler={"type_hint": "CosineAnnealingLR", "config": {"T_max": 200}},
    )
    assert hyperparameter_changes(CONFIG, CONFIG) == []
    assert hyperparameter_changes(CONFIG, current) == [
        "optimizer.config.lr: checkpoint 0.001, now 0.0005",
        "lr_scheduler: checkpoint '<absent>', now {'type_hint': 'CosineAnnealingLR', 'config': {'T_max': 200}}",
        "training.max_steps: checkpoint 100, now 200",
    ]
    assert hyperparameter_changes(CONFIG, changed(experiment__seed=1)) == []
    assert hyperparameter_changes(CONFIG, changed(optimizer__type_hint="Adam")) == []  # refused, not retuned


def test_a_key_written_with_its_default_is_no_difference():
    _, saved = load_config(TINY_CONFIG, TrainingAppConfig)
    _, current = load_config(
        TINY_CONFIG, TrainingAppConfig, ["model.config.document_masking=false", "model.config.rope_theta=10000.0"]
    )
    assert "document_masking" not in saved["model"]["config"]
    assert config_differences(saved, current, 1, 1) != []  # as written, the added keys differ

    assert config_differences(*with_defaults(saved, current, TrainingAppConfig, make_registry()), 1, 1) == []


def test_a_saved_config_the_schema_no_longer_reads_is_compared_as_written():
    _, current = load_config(TINY_CONFIG, TrainingAppConfig)
    saved = copy.deepcopy(current)
    saved["model"]["config"]["retired_option"] = True

    assert with_defaults(saved, current, TrainingAppConfig, make_registry()) == (saved, current)
    assert config_differences(saved, current, 1, 1) == ["model.config.retired_option: checkpoint True, now '<absent>'"]
