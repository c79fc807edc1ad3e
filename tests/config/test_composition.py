"""Configs composed from files: `defaults:` lists, merge order, type_hint swaps and interpolation across files,
the schema's default nodes, appending to a list from the command line, where each key came from."""

from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from click.testing import CliRunner
from omegaconf import OmegaConf

from llm_gym.cli import main
from llm_gym.config.composition import compose
from llm_gym.config.loading import apply_overrides
from llm_gym.errors import ConfigError
from toy_config import TOY_YAML, ToyConfig, load_config, load_config_with_origins

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config_files"


@pytest.fixture
def files(tmp_path):
    """``files({"a.yaml": text, "sub/b.yaml": text})`` writes the files under the test's directory; returns it."""

    def write(texts: dict[str, str]) -> Path:
        for name, text in texts.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        return tmp_path

    return write


def loaded(path: Path, *overrides: str, schema=ToyConfig) -> dict[str, Any]:
    return load_config(path, schema, overrides)[1]


def config_error(path: Path, *overrides: str, schema=ToyConfig) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, schema, overrides)
    return str(caught.value)


# ---- merge order, nesting, paths ------------------------------------------------------------------------


def test_defaults_merge_in_order_then_the_files_own_keys_then_overrides(files):
    root = files(
        {
            "first.yaml": "training: {max_steps: 1, warmup_steps: 1, name: first}\n",
            "second.yaml": "training: {max_steps: 2, warmup_steps: 2}\n",
            "run.yaml": "defaults: [first.yaml, second.yaml]\n" + TOY_YAML.replace("  warmup_steps: 10\n", ""),
        }
    )
    resolved = loaded(root / "run.yaml", "training.warmup_steps=3")
    assert resolved["training"] == {"max_steps": 100, "warmup_steps": 3, "name": "first"}
    assert "defaults" not in resolved  # composition is over once the files are merged


def test_a_default_may_have_defaults_of_its_own_relative_to_itself(files, tmp_path):
    root = files(
        {
            "sections/schedule.yaml": "defaults: [../shared/optimizer.yaml]\n"
            "lr_scheduler: {type_hint: ConstantLR, config: {factor: 0.5}}\n",
            "shared/optimizer.yaml": "optimizer: {type_hint: AdamW, config: {lr: 0.1}}\ntraining: {name: shared}\n",
            "run.yaml": f"defaults: [sections/schedule.yaml, {tmp_path / 'last.yaml'}]\ntraining: {{max_steps: 5}}\n",
            "last.yaml": "training: {name: last}\n",  # absolute in the list above
        }
    )
    composed = compose(root / "run.yaml")
    assert composed.files == [
        root / "shared/optimizer.yaml",
        root / "sections/schedule.yaml",
        root / "last.yaml",
        root / "run.yaml",
    ]
    resolved = loaded(root / "run.yaml")
    assert resolved["training"] == {"name": "last", "max_steps": 5}
    assert resolved["optimizer"]["config"] == {"lr": 0.1}


def test_a_file_included_twice_merges_twice(files):
    root = files(
        {
            "common.yaml": "training: {max_steps: 7}\n",
            "a.yaml": "defaults: [common.yaml]\noptimizer: {type_hint: AdamW, config: {lr: 0.1}}\n",
            "b.yaml": "defaults: [common.yaml]\nlr_scheduler: {type_hint: ConstantLR}\n",
            "run.yaml": "defaults: [a.yaml, b.yaml]\n",
        }
    )
    assert loaded(root / "run.yaml")["training"] == {"max_steps": 7}


def test_lists_are_replaced_whole_and_mappings_merge(files):
    root = files(
        {
            "base.yaml": TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    betas: [0.8, 0.9]"),
            "run.yaml": "defaults: [base.yaml]\noptimizer: {config: {betas: [0.5, 0.6]}}\n",
        }
    )
    assert loaded(root / "run.yaml")["optimizer"]["config"] == {"lr": 3.0e-4, "betas": [0.5, 0.6]}


def test_a_later_scalar_or_list_replaces_a_mapping_and_the_other_way(files):
    root = files(
        {
            "base.yaml": "a: {x: 1}\nb: [1, 2]\nc: {y: 2}\n",
            "run.yaml": "defaults: [base.yaml]\na: [3]\nb: {z: 3}\nc: null\n",
        }
    )
    assert OmegaConf.to_container(compose(root / "run.yaml").raw) == {"a": [3], "b": {"z": 3}, "c": None}


# ---- interpolation and type_hint swaps across files --------------------------------------------------


def test_interpolation_resolves_on_the_merged_whole(files):
    root = files(
        {
            "schedule.yaml": "lr_scheduler:\n  type_hint: LinearWarmupCosineDecay\n"
            "  config: {warmup_steps: '${training.warmup_steps}', total_steps: '${training.max_steps}'}\n",
            "run.yaml": "defaults: [schedule.yaml]\ntraining: {max_steps: 40, warmup_steps: 4}\n"
            "optimizer: {type_hint: SGD, config: {lr: 0.1}}\n",
        }
    )
    assert loaded(root / "run.yaml")["lr_scheduler"]["config"] == {"warmup_steps": 4, "total_steps": 40}
    assert loaded(root / "run.yaml", "training.max_steps=80")["lr_scheduler"]["config"]["total_steps"] == 80


def test_a_later_file_that_changes_the_type_hint_drops_the_old_types_keys(files):
    root = files(
        {
            "base.yaml": TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    betas: [0.9, 0.95]\n    eps: 1.0e-8"),
            "sgd.yaml": "defaults: [base.yaml]\noptimizer: {type_hint: SGD, config: {momentum: 0.9}}\n",
            "run.yaml": "defaults: [sgd.yaml]\noptimizer: {config: {nesterov: true}}\n",
        }
    )
    config, resolved = load_config(root / "run.yaml", ToyConfig)
    # lr is SGD's too; betas and eps were AdamW's; momentum came with the swap, nesterov after it.
    assert resolved["optimizer"] == {"type_hint": "SGD", "config": {"lr": 3.0e-4, "momentum": 0.9, "nesterov": True}}
    assert config.optimizer.config.nesterov is True


def test_a_key_the_new_type_does_not_take_is_still_reported_when_a_file_sets_it_with_or_after_the_swap(files):
    root = files(
        {
            "base.yaml": TOY_YAML,
            "sgd.yaml": "defaults: [base.yaml]\noptimizer: {type_hint: SGD, config: {betas: [0.9, 0.9]}}\n",
            "later.yaml": "defaults: [base.yaml]\noptimizer: {type_hint: SGD}\n",
            "run.yaml": "defaults: [later.yaml]\noptimizer: {config: {betas: [1, 2]}}\n",
        }
    )
    assert "optimizer.config.betas: unknown key" in config_error(root / "sgd.yaml")
    assert "optimizer.config.betas: unknown key" in config_error(root / "run.yaml")


def test_an_override_swap_after_a_file_swap_drops_what_the_file_set_for_its_type(files):
    root = files(
        {
            "base.yaml": TOY_YAML,
            "run.yaml": "defaults: [base.yaml]\noptimizer: {type_hint: SGD, config: {momentum: 0.9}}\n",
        }
    )
    resolved = loaded(root / "run.yaml", "optimizer.type_hint=Adam")
    assert resolved["optimizer"] == {"type_hint": "Adam", "config": {"lr": 3.0e-4}}


def test_a_swapped_nested_component_across_files(files):
    root = files(
        {
            "norm.yaml": "model: {type_hint: DecoderLM, config: {norm: {type_hint: RMSNorm, config: {eps: 1.0e-6}}}}\n",
            "run.yaml": "defaults: [norm.yaml]\nmodel: {config: {norm: {type_hint: LayerNorm}}}\n",
        }
    )
    composed = compose(root / "run.yaml")
    assert [swap.node_path for swap in composed.swaps] == [("model", "config", "norm")]


# ---- the schema's default nodes ----------------------------------------------------------------------


class ToyWithDefaults(ToyConfig):
    composition_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": {"type_hint": "AdamW", "config": {"lr": 1.0e-3, "betas": [0.9, 0.95]}},
        "lr_scheduler": {
            "type_hint": "LinearWarmupCosineDecay",
            "config": {"warmup_steps": 0, "total_steps": "${training.max_steps}"},
        },
    }


def test_schema_defaults_lie_under_every_file_and_interpolate(write_config):
    path = write_config("training: {max_steps: 10}\noptimizer: {config: {lr: 0.5}}\n")
    resolved = loaded(path, "optimizer.config.betas=[0.8, 0.9]", schema=ToyWithDefaults)
    assert resolved["optimizer"] == {"type_hint": "AdamW", "config": {"lr": 0.5, "betas": [0.8, 0.9]}}
    assert resolved["lr_scheduler"] == {
        "type_hint": "LinearWarmupCosineDecay",
        "config": {"warmup_steps": 0, "total_steps": 10},
    }


def test_a_file_with_another_type_than_the_schema_default_drops_the_defaults_keys(write_config):
    path = write_config("training: {max_steps: 10}\noptimizer: {type_hint: SGD, config: {lr: 0.1}}\n")
    assert loaded(path, schema=ToyWithDefaults)["optimizer"] == {"type_hint": "SGD", "config": {"lr": 0.1}}


def test_the_training_schema_defaults_make_a_minimal_config(tmp_path):
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text(
        f"defaults: [{CONFIG_DIR / 'model_sections' / 'tiny_cpu.yaml'}]\n"
        "experiment: {experiment_id: minimal}\n"
        "training: {max_steps: 100, sequence_length: 128, micro_batch_size: 8, eval_interval: 50}\n"
        "parallelism: {type_hint: NoParallelism}\n"
        "optimizer: {type_hint: AdamW, config: {lr: 1.0e-3}}\n"
        "lr_scheduler: {type_hint: ConstantLR}\n"
        "data:\n  train_dataset: {type_hint: PackedDataset, config: {path_prefix: data/demo/train_byte, "
        "sequence_length: '${training.sequence_length}'}}\n"
    )
    result = CliRunner().invoke(main, ["validate", "--config_file_path", str(minimal)])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output.split("\n---\n")[0])
    assert resolved["experiment"] == {"experiment_id": "minimal", "output_dir": "experiments/minimal", "seed": 42}
    assert resolved["data"]["sampler"] == {"type_hint": "ResumableDistributedSampler", "config": {"seed": 42}}
    assert resolved["data"]["collator"] == {"type_hint": "CausalLMCollator"}
    assert resolved["data"]["dataloader"] == {"type_hint": "DataLoader"}
    assert [logger["type_hint"] for logger in resolved["loggers"]] == ["Console", "MetricsJsonl"]
    # In the schema's order, whichever layer set which key.
    assert list(resolved) == ["experiment", "training", "model", "parallelism", "optimizer", "lr_scheduler", "data",
                              "loggers"]  # fmt: skip
    assert list(resolved["data"]) == ["train_dataset", "sampler", "collator", "dataloader"]


# ---- appending to a list from the command line ----------------------------------------------------------


def validate(config: Path, *overrides: str):
    return CliRunner().invoke(main, ["validate", "--config_file_path", str(config), *overrides])


def resolved_config(result) -> dict:
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output.split("\n---\n")[0])


@pytest.mark.parametrize(
    "override", ["loggers+=[{type_hint: TensorBoard, config: {log_dir: tb}}]", "loggers+={type_hint: TensorBoard}"]
)
def test_append_a_logger_to_the_default_ones(override):
    loggers = resolved_config(validate(CONFIG_DIR / "tiny_cpu.yaml", override))["loggers"]
    assert [logger["type_hint"] for logger in loggers] == ["Console", "MetricsJsonl", "TensorBoard"]


def test_a_list_value_extends_and_later_overrides_index_the_new_items(write_config):
    path = write_config(TOY_YAML + "user_modules: []\n")
    composed = compose(path)
    apply_overrides(composed, ["user_modules+=[json, csv]", "user_modules+=ast", "user_modules.2=abc"])
    assert list(composed.raw.user_modules) == ["json", "csv", "abc"]


def test_appended_items_keep_their_interpolations(write_config, isolated_imports):
    path = write_config(TOY_YAML + "user_modules: [json]\n")
    resolved = loaded(path, "user_modules+=[csv, '${training.name}']", "training.name=ast")
    assert resolved["user_modules"] == ["json", "csv", "ast"]


def test_append_to_a_key_not_there_yet_sets_the_list(write_config):
    assert loaded(write_config(TOY_YAML), "user_modules+=json")["user_modules"] == ["json"]
    strategies = "checkpointing.strategies+=[{type_hint: KeepEveryNSteps, config: {every_n_steps: 100}}]"
    assert resolved_config(validate(CONFIG_DIR / "tiny_cpu.yaml", strategies))["checkpointing"]["strategies"] == [
        {"type_hint": "KeepEveryNSteps", "config": {"every_n_steps": 100}}
    ]
    misspelt = validate(CONFIG_DIR / "tiny_cpu.yaml", "loger+=[{type_hint: TensorBoard}]")
    assert misspelt.exit_code == 2 and "loger: unknown key; did you mean 'loggers'?" in misspelt.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.max_steps+=1", "training.max_steps is 100, not a list; += appends to a list"),
        ("optimizer+=[1]", "optimizer is a mapping, not a list; += appends to a list"),
        ("lr_scheduler.config.total_steps+=[1]", "lr_scheduler.config.total_steps is an interpolation"),
        ("+=[1]", "expected dotted.key=value"),
    ],
)
def test_append_to_what_is_no_list(write_config, override, message):
    assert config_error(write_config(TOY_YAML), override).startswith(f"bad override '{override}': {message}")


# ---- errors --------------------------------------------------------------------------------------------


def test_missing_default_names_the_including_file_and_the_entry(files):
    root = files({"run.yaml": "defaults: [a.yaml]\n", "a.yaml": "defaults: [present.yaml, absent.yaml]\n",
                  "present.yaml": "training: {max_steps: 1}\n"})  # fmt: skip
    assert config_error(root / "run.yaml") == (
        f"{root / 'a.yaml'}: defaults[1]: config file not found: {root / 'absent.yaml'}"
    )


def test_a_cycle_is_named(files):
    root = files(
        {"run.yaml": "defaults: [a.yaml]\n", "a.yaml": "defaults: [b.yaml]\n", "b.yaml": "defaults: [a.yaml]\n"}
    )
    assert config_error(root / "run.yaml") == (
        f"{root / 'b.yaml'}: defaults[0]: the defaults include each other in a cycle: "
        f"{root / 'run.yaml'} → {root / 'a.yaml'} → {root / 'b.yaml'} → {root / 'a.yaml'}"
    )
    itself = files({"self.yaml": "defaults: [./self.yaml]\n"})
    assert "a cycle" in config_error(itself / "self.yaml")


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        (
            "a.yaml",
            "defaults must be a list of YAML files, e.g. defaults: [model_sections/tiny_cpu.yaml] (got 'a.yaml')",
        ),
        ("{a: b}", "defaults must be a list of YAML files"),
        ("", "defaults must be a list of YAML files"),
        ("[a.yaml, 3]", "defaults[1] must be the path of a YAML file, not 3"),
        ("[[a.yaml]]", "defaults[0] must be the path of a YAML file, not ['a.yaml']"),
        ("['${oc.env:HOME}/a.yaml']", "defaults[0]: a path in defaults is not interpolated (${oc.env:HOME}/a.yaml)"),
    ],
)
def test_defaults_must_be_a_list_of_paths(files, defaults, message):
    root = files({"run.yaml": f"defaults: {defaults}\n", "a.yaml": "{}\n"})
    assert config_error(root / "run.yaml").startswith(f"{root / 'run.yaml'}: {message}")


def test_a_default_that_is_not_a_mapping(files):
    root = files({"run.yaml": "defaults: [list.yaml]\n", "list.yaml": "- 1\n- 2\n"})
    assert config_error(root / "run.yaml") == (
        f"{root / 'run.yaml'}: defaults[0]: {root / 'list.yaml'} must hold a mapping at the top level, not a list"
    )


def test_a_syntax_error_in_a_default_names_that_file(files):
    root = files({"run.yaml": "defaults: [broken.yaml]\n", "broken.yaml": "training:\n  max_steps: [1, 2\n"})
    message = config_error(root / "run.yaml")
    assert message.startswith(f"{root / 'run.yaml'}: defaults[0]: YAML syntax error in {root / 'broken.yaml'} at line")


def test_an_error_in_a_default_file_names_that_file(files):
    root = files(
        {
            "base.yaml": TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    betaz: 1"),
            "run.yaml": "defaults: [base.yaml]\ntraining: {max_steps: many}\n",
        }
    )
    lines = config_error(root / "run.yaml").splitlines()
    assert f"  optimizer.config.betaz: unknown key; did you mean 'betas'? [from {root / 'base.yaml'}]" in lines
    # The file given, like the command line, goes without saying.
    assert (
        "  training.max_steps: Input should be a valid integer, unable to parse string as an integer (got 'many')"
        in (lines)
    )
    # The schedule's total_steps is base.yaml's interpolation of the given file's max_steps.
    assert lines[-1].startswith("  lr_scheduler.config.total_steps: ") and lines[-1].endswith(
        f"(got 'many') [from {root / 'base.yaml'}]"
    )
    unresolved = files(
        {"broken.yaml": "training: {name: '${training.nope}'}\n", "run2.yaml": "defaults: [base.yaml, broken.yaml]\n"}
    )
    assert config_error(unresolved / "run2.yaml").startswith("training.name: cannot resolve interpolation: ")
    assert config_error(unresolved / "run2.yaml").endswith(f"[from {root / 'broken.yaml'}]")


def test_a_single_file_s_errors_do_not_name_it(write_config):
    assert config_error(write_config(TOY_YAML), "training.max_step=5").splitlines()[-1] == (
        "  training.max_step: unknown key; did you mean 'max_steps'?"
    )


# ---- user modules ---------------------------------------------------------------------------------------

MODULE = (
    "from pydantic import BaseModel, ConfigDict\nfrom llm_gym.registry import register_component\n"
    "class {name}Config(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n    every: int = 2\n"
    "@register_component('lr_scheduler', '{name}', config_model={name}Config)\n"
    "class {name}:\n    def __init__(self, optimizer, every: int = 2): ...\n"
)


def test_user_modules_are_imported_beside_the_file_that_lists_them(files, isolated_imports, fresh_registry):
    root = files(
        {
            "sections/halving_schedule.py": MODULE.format(name="Halving"),
            "sections/schedule.yaml": "user_modules: [halving_schedule]\nlr_scheduler: {type_hint: Halving}\n",
            "thirds.py": MODULE.format(name="Thirds"),
            "run.yaml": "defaults: [sections/schedule.yaml]\nuser_modules: [thirds]\n"
            + TOY_YAML.split("lr_scheduler:")[0],
        }
    )
    resolved = loaded(root / "run.yaml")
    assert resolved["user_modules"] == ["halving_schedule", "thirds"]  # each file's modules, in merge order
    assert resolved["lr_scheduler"] == {"type_hint": "Halving"}
    assert loaded(root / "run.yaml", "lr_scheduler.type_hint=Thirds")["lr_scheduler"]["type_hint"] == "Thirds"


# ---- where each key came from ----------------------------------------------------------------------------


def test_origins_name_the_last_layer_that_set_each_key(files):
    root = files(
        {
            "base.yaml": TOY_YAML,
            "run.yaml": "defaults: [base.yaml]\ntraining: {max_steps: 50}\n",
        }
    )
    _, resolved, origins = load_config_with_origins(root / "run.yaml", ToyConfig, ["optimizer.config.lr=0.1"])
    assert origins.lines(resolved) == [
        f"training.max_steps: {root / 'run.yaml'}",
        f"training.warmup_steps: {root / 'base.yaml'}",
        f"optimizer.type_hint: {root / 'base.yaml'}",
        "optimizer.config: command line",
        f"lr_scheduler: {root / 'base.yaml'}",  # the schedule's interpolations belong to the keys that hold them
    ]


def test_validate_shows_origins_of_a_shipped_config():
    result = validate(CONFIG_DIR / "tiny_cpu.yaml", "--show_origins", "loggers+=[{type_hint: TensorBoard}]")
    assert result.exit_code == 0, result.output
    origins = result.output.split("where each key was set (by the last layer to set it):\n")[1].splitlines()
    assert "  model: config_files/model_sections/tiny_cpu.yaml" in [line.replace(str(CONFIG_DIR.parent) + "/", "")
                                                                      for line in origins]  # fmt: skip
    assert any(line.endswith("data.sampler: schema defaults") for line in origins)
    assert "  loggers.2: command line" in origins
