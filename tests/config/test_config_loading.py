"""YAML → overrides → interpolation → validation, and the message each kind of mistake produces."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llm_gym.config.composition import compose, read_config_file
from llm_gym.config.loading import apply_overrides
from llm_gym.errors import ConfigError
from toy_config import TOY_YAML, ToyConfig, load_config

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture
def single_process(monkeypatch):
    for variable in TORCHRUN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def config_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, ToyConfig, overrides)
    return str(caught.value)


def test_loads_validates_and_resolves_interpolation(write_config):
    config, resolved = load_config(write_config(TOY_YAML), ToyConfig)
    assert config.optimizer.type_hint.name == "AdamW"
    assert config.optimizer.config.lr == pytest.approx(3e-4)
    assert config.optimizer.config.weight_decay == pytest.approx(0.1)  # the model's default
    assert config.lr_scheduler.config.total_steps == 100
    assert config.lr_scheduler.config.warmup_steps == 10
    assert resolved["lr_scheduler"]["config"] == {"warmup_steps": 10, "total_steps": 100}


def test_accepts_a_path_given_as_str(write_config):
    config, _ = load_config(str(write_config(TOY_YAML)), ToyConfig)
    assert config.training.max_steps == 100


def test_override_changes_the_value_and_every_interpolation_of_it(write_config):
    config, resolved = load_config(
        write_config(TOY_YAML), ToyConfig, ["training.max_steps=70", "optimizer.config.lr=0.01"]
    )
    assert config.training.max_steps == 70
    assert config.lr_scheduler.config.total_steps == 70
    assert resolved["lr_scheduler"]["config"]["total_steps"] == 70
    assert config.optimizer.config.lr == pytest.approx(0.01)


def test_override_can_swap_a_component(write_config):
    config, _ = load_config(write_config(TOY_YAML), ToyConfig, ["optimizer.type_hint=SGD"])
    assert config.optimizer.type_hint.name == "SGD"


def test_later_override_wins(write_config):
    config, _ = load_config(write_config(TOY_YAML), ToyConfig, ["training.max_steps=70", "training.max_steps=90"])
    assert config.training.max_steps == 90


def with_training_key(line: str) -> str:
    """The toy YAML with one more line in its training section."""
    return TOY_YAML.replace("  warmup_steps: 10\n", f"  warmup_steps: 10\n  {line}\n", 1)


def test_env_resolver_reads_the_variable_or_its_default(write_config, monkeypatch):
    path = write_config(with_training_key("name: ${oc.env:TOY_RUN_NAME,fallback}"))
    monkeypatch.delenv("TOY_RUN_NAME", raising=False)
    assert load_config(path, ToyConfig)[0].training.name == "fallback"
    monkeypatch.setenv("TOY_RUN_NAME", "from_env")
    assert load_config(path, ToyConfig)[0].training.name == "from_env"


DIST_YAML = with_training_key("world_size: ${dist:world_size}\n  rank: ${dist:rank}")


def test_dist_resolver_defaults_to_a_single_process(write_config, single_process):
    settings = load_config(write_config(DIST_YAML), ToyConfig)[0].training
    assert (settings.world_size, settings.rank) == (1, 0)


def test_dist_resolver_reads_torchrun_environment(write_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    settings = load_config(write_config(DIST_YAML), ToyConfig)[0].training
    assert (settings.world_size, settings.rank) == (4, 3)


def test_dist_resolver_local_keys(write_config, monkeypatch, single_process):
    text = DIST_YAML.replace("${dist:world_size}", "${dist:local_world_size}").replace(
        "${dist:rank}", "${dist:local_rank}"
    )
    path = write_config(text)
    assert load_config(path, ToyConfig)[0].training.world_size == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    settings = load_config(path, ToyConfig)[0].training
    assert (settings.world_size, settings.rank) == (2, 1)


def test_dist_resolver_unknown_name_lists_valid_ones(write_config):
    message = config_error(write_config(DIST_YAML.replace("${dist:rank}", "${dist:ranks}")))
    assert message.startswith("training.rank: cannot resolve interpolation")
    assert "unknown key 'ranks'" in message
    assert "world_size" in message


# ---- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert config_error(tmp_path / "absent.yaml") == f"config file not found: {tmp_path / 'absent.yaml'}"


def test_yaml_syntax_error_names_the_line(write_config):
    message = config_error(write_config("training:\n  max_steps: [1, 2\noptimizer: {}\n"))
    assert message.startswith("YAML syntax error in ")
    assert "at line 3" in message


def test_yaml_duplicate_key_is_a_syntax_error(write_config):
    message = config_error(write_config("training: {}\ntraining: {}\n"))
    assert "at line 2" in message
    assert "duplicate key" in message


def alias_bomb(levels: int, width: int = 10) -> str:
    """The "billion laughs": each level a list of ``width`` aliases of the level before."""
    lines = ["a0: &a0 [lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_bounded_time_saying_what_it_is(write_config):
    path = write_config(alias_bomb(levels=40))  # 10^40 values once expanded
    started = time.perf_counter()
    message = config_error(path)
    assert time.perf_counter() - started < 2
    # 84: the root, 41 keys, 41 lists and one scalar; about 2.3·10^40 expanded
    assert message.startswith(f"{path} is refused: it is an alias bomb (billion laughs): its aliases (*name) expand ")
    assert re.search(r"expand 84 values to 23,[\d,]{40,}, more than the 10,000 a config may hold$", message)


def test_aliases_that_multiply_a_file_a_hundredfold_are_refused_below_the_absolute_limit(write_config):
    message = config_error(write_config(alias_bomb(levels=3, width=12)))
    assert message.endswith("its aliases (*name) expand 10 values to 3,946, over 100 times as many as written")


def test_a_recursive_alias_is_refused_with_its_place(write_config):
    message = config_error(write_config("a: 1\nb: &b [x, *b]\n"))
    assert message.endswith("is refused: the value at line 2, column 4 contains an alias of itself (a recursive alias)")


def test_a_file_with_more_values_than_a_config_holds_is_refused(write_config):
    message = config_error(write_config("".join(f"k{i}: {i}\n" for i in range(5_001))))
    assert message.endswith("is refused: it holds 10,003 values, more than the 10,000 a config may hold")


def test_an_alias_bomb_in_an_override_is_refused(write_config):
    bomb = "[" + ", ".join(["&a [lol, lol]", "&b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]"] + ["*b"] * 200) + "]"
    message = config_error(write_config(TOY_YAML), [f"optimizer.lr={bomb}"])
    assert message.startswith("bad override 'optimizer.lr=[&a")
    assert "the value is refused: it is an alias bomb (billion laughs)" in message


def test_aliases_and_merge_keys_within_the_limits_load(write_config):
    text = "base: &base {lr: 0.1, momentum: 0.9}\nfirst: {<<: *base, lr: 0.2}\nsecond: *base\n"
    raw = read_config_file(write_config(text))
    assert OmegaConf.to_container(raw) == {
        "base": {"lr": 0.1, "momentum": 0.9},
        "first": {"lr": 0.2, "momentum": 0.9},
        "second": {"lr": 0.1, "momentum": 0.9},
    }


def test_top_level_list_is_refused(write_config):
    assert "must hold a mapping at the top level" in config_error(write_config("- 1\n- 2\n"))


def test_unknown_key_names_its_dotted_path(write_config):
    message = config_error(write_config(TOY_YAML.replace("  max_steps: 100", "  max_steps: 100\n  max_step: 5")))
    assert message.splitlines() == [
        "invalid config (1 error):",
        "  training.max_step: unknown key; did you mean 'max_steps'?",
    ]


def test_unknown_key_far_from_any_lists_the_valid_ones(write_config):
    message = config_error(write_config(TOY_YAML.replace("  max_steps: 100", "  max_steps: 100\n  zzz: 5")))
    assert "  training.zzz: unknown key; valid keys: max_steps, warmup_steps, world_size, rank, name" in (
        message.splitlines()
    )


def test_unknown_key_inside_a_component_config(write_config):
    message = config_error(write_config(TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    learning_rate: 1")))
    assert (
        "  optimizer.config.learning_rate: unknown key; valid keys: lr, weight_decay, betas, eps, foreach, fused"
        in (message.splitlines())
    )


def test_unknown_key_beside_type_hint_lists_the_node_keys(write_config):
    message = config_error(write_config(TOY_YAML), ["optimizer.configs.lr=1"])
    assert "  optimizer.configs: unknown key; did you mean 'config'?" in message.splitlines()


def test_wrong_type(write_config):
    message = config_error(write_config(TOY_YAML.replace("max_steps: 100", "max_steps: many")))
    line = next(line for line in message.splitlines() if line.startswith("  training.max_steps:"))
    assert "valid integer" in line
    assert "'many'" in line
    # The schedule interpolates the same value, so its own error is reported too.
    assert "lr_scheduler.config.total_steps" in message


def test_out_of_range(write_config):
    message = config_error(write_config(TOY_YAML), ["optimizer.config.lr=-1"])
    assert message.splitlines() == [
        "invalid config (1 error):",
        "  optimizer.config.lr: Input should be greater than 0 (got -1)",
    ]


def test_cross_field_rule_reports_without_dumping_the_section(write_config):
    message = config_error(write_config(TOY_YAML), ["training.warmup_steps=200"])
    assert message.splitlines() == [
        "invalid config (1 error):",
        "  lr_scheduler.config: warmup_steps (200) exceeds total_steps (100)",
    ]


def test_missing_required_key(write_config):
    message = config_error(write_config(TOY_YAML.replace("    lr: 3.0e-4", "    weight_decay: 0.0")))
    assert "  optimizer.config.lr: missing required key" in message.splitlines()


def test_unknown_type_hint_lists_valid_names(write_config):
    message = config_error(write_config(TOY_YAML), ["optimizer.type_hint=AdamWW"])
    assert message.splitlines() == [
        "invalid config (1 error):",
        "  optimizer: unknown type_hint 'AdamWW' for 'optimizer'; did you mean 'AdamW'? valid names: Adam, AdamW, SGD",
    ]


def test_component_without_type_hint(write_config):
    message = config_error(write_config(TOY_YAML.replace("  type_hint: AdamW\n", "")))
    assert "  optimizer: missing 'type_hint' for 'optimizer' (one of: Adam, AdamW, SGD)" in message.splitlines()


def test_component_that_is_not_a_mapping(write_config):
    message = config_error(write_config(TOY_YAML), ["optimizer=AdamW"])
    assert "optimizer: expected a component (a mapping with 'type_hint' and 'config')" in message


def test_unresolvable_interpolation_names_the_key(write_config):
    message = config_error(write_config(TOY_YAML.replace("${training.max_steps}", "${training.max_stepz}")))
    assert message == (
        "lr_scheduler.config.total_steps: cannot resolve interpolation: "
        "Interpolation key 'training.max_stepz' not found; the file has 'training.max_steps', a typo?"
    )
    elsewhere = config_error(write_config(TOY_YAML.replace("${training.max_steps}", "${schedule.steps}")))
    assert elsewhere.endswith("Interpolation key 'schedule.steps' not found")  # nothing close to suggest


def test_missing_environment_variable_without_default(write_config, monkeypatch):
    monkeypatch.delenv("TOY_UNSET_VARIABLE", raising=False)
    message = config_error(write_config(with_training_key("name: ${oc.env:TOY_UNSET_VARIABLE}")))
    assert message == "training.name: cannot resolve interpolation: Environment variable 'TOY_UNSET_VARIABLE' not found"


def test_interpolation_syntax_error_is_one_line(write_config):
    message = config_error(write_config(TOY_YAML.replace("${training.max_steps}", "${training.max_steps")))
    assert message.startswith("lr_scheduler.config.total_steps: invalid interpolation in ")
    assert "\n" not in message


@pytest.mark.parametrize("override", ["training.max_steps", "=5", "training..max_steps=5", ".max_steps=5"])
def test_bad_override_syntax(write_config, override):
    assert config_error(write_config(TOY_YAML), [override]) == (
        f"bad override '{override}': expected dotted.key=value, e.g. training.max_steps=100"
    )


def test_override_with_invalid_yaml_value(write_config):
    message = config_error(write_config(TOY_YAML), ["training.max_steps=[1,"])
    assert message.startswith("bad override 'training.max_steps=[1,': the value is not valid YAML")
    assert "\n" not in message


def test_override_reaching_into_a_scalar(write_config):
    message = config_error(write_config(TOY_YAML + "user_modules: [a, b]\n"), ["user_modules.first=x"])
    assert message.startswith("bad override 'user_modules.first=x': ")


def test_override_of_an_unknown_key_is_an_unknown_key(write_config):
    message = config_error(write_config(TOY_YAML), ["training.max_step=5"])
    assert "  training.max_step: unknown key; did you mean 'max_steps'?" in message.splitlines()


# ---- user modules -------------------------------------------------------------------------------


def test_user_module_that_does_not_exist(write_config, isolated_imports):
    message = config_error(write_config(TOY_YAML + "user_modules: [no_such_module_here]\n"))
    assert message == "user_modules: cannot import 'no_such_module_here': No module named 'no_such_module_here'"


def test_user_module_that_fails_while_importing(write_config, isolated_imports):
    path = write_config(TOY_YAML + "user_modules: [broken_components]\n")
    (path.parent / "broken_components.py").write_text("raise RuntimeError('half-written module')\n")
    message = config_error(path)
    assert message == "user_modules: importing 'broken_components' failed: RuntimeError: half-written module"


def test_user_modules_must_be_a_list(write_config):
    assert config_error(write_config(TOY_YAML + "user_modules: mymodule\n")) == (
        "user_modules: expected a list of module names"
    )


RANK_SCRIPT = """
import sys
from pathlib import Path

from toy_config import ToyConfig, load_config

config, _ = load_config(Path(sys.argv[1]), ToyConfig)
Path(sys.argv[2], f"rank{config.training.rank}").write_text(str(config.training.world_size))
"""


@pytest.mark.slow
def test_dist_resolver_under_torchrun(write_config, tmp_path):
    """The same file under a real torchrun: each rank sees its own rank and the world size."""
    path = write_config(DIST_YAML)
    script = tmp_path / "load_on_rank.py"
    script.write_text(RANK_SCRIPT)
    tests_dir = Path(__file__).resolve().parents[1]
    python_path = [str(tests_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(script), str(path), str(tmp_path)], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert {file.name: file.read_text() for file in tmp_path.glob("rank*")} == {"rank0": "2", "rank1": "2"}


# ---- swapping a component, deleting a key ----------------------------------------------------------


def test_swap_drops_the_old_types_keys_and_keeps_the_shared_ones(write_config):
    path = write_config(TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    betas: [0.9, 0.95]"))
    config, resolved = load_config(path, ToyConfig, ["optimizer.type_hint=SGD", "optimizer.config.momentum=0.9"])
    assert (config.optimizer.config.lr, config.optimizer.config.momentum) == (pytest.approx(3e-4), 0.9)
    assert resolved["optimizer"]["config"] == {"lr": 3e-4, "momentum": 0.9}  # what config.yaml records


def test_swap_to_the_same_type_drops_nothing(write_config):
    path = write_config(TOY_YAML.replace("    lr: 3.0e-4", "    lr: 3.0e-4\n    betaz: 1"))
    assert "optimizer.config.betaz: unknown key" in config_error(path, ["optimizer.type_hint=AdamW"])


def test_swap_keeps_a_whole_config_given_after_it(write_config):
    message = config_error(write_config(TOY_YAML), ["optimizer.type_hint=SGD", "optimizer.config={betas: [1, 2]}"])
    assert "optimizer.config.betas: unknown key" in message


def test_keys_set_before_the_swap_are_dropped_with_the_file_ones(write_config):
    overrides = ["optimizer.config.eps=1e-6", "optimizer.type_hint=SGD"]
    _, resolved = load_config(write_config(TOY_YAML), ToyConfig, overrides)
    assert resolved["optimizer"] == {"type_hint": "SGD", "config": {"lr": 3.0e-4}}


def test_swap_to_a_type_from_user_modules(write_config, isolated_imports, fresh_registry):
    write_config(
        "from pydantic import BaseModel, ConfigDict\nfrom llm_gym.registry import register_component\n"
        "class HalvingConfig(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n    every: int = 2\n"
        "@register_component('lr_scheduler', 'Halving', config_model=HalvingConfig)\n"
        "class Halving:\n    def __init__(self, optimizer, every: int = 2): ...\n",
        name="my_schedules.py",
    )
    path = write_config("user_modules: [my_schedules]\n" + TOY_YAML)
    config, resolved = load_config(path, ToyConfig, ["lr_scheduler.type_hint=Halving"])
    assert resolved["lr_scheduler"] == {"type_hint": "Halving", "config": {}}
    assert config.lr_scheduler.config.every == 2


def test_delete_override(write_config):
    path = write_config(TOY_YAML.replace("  warmup_steps: 10", "  warmup_steps: 10\n  name: mine"))
    config, resolved = load_config(path, ToyConfig, ["~training.name"])
    assert "name" not in resolved["training"]
    assert config.training.name == "toy"  # the schema's default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("~training.absent", "bad override '~training.absent': there is no key 'training.absent' to delete"),
        ("~training.max_steps=100", "bad override '~training.max_steps=100': expected ~dotted.key"),
        ("~", "bad override '~': expected ~dotted.key"),
    ],
)
def test_bad_delete_override(write_config, override, message):
    assert config_error(write_config(TOY_YAML), [override]).startswith(message)


# ---- unreadable files --------------------------------------------------------------------------


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"training:\n  name: \xff\xfe\n")
    assert config_error(path) == f"cannot read {path}: not UTF-8 text (invalid start byte at byte 18)"


def test_directory_instead_of_a_file(tmp_path):
    assert config_error(tmp_path) == f"cannot read {tmp_path}: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission(write_config):
    path = write_config(TOY_YAML)
    path.chmod(0)
    assert config_error(path) == f"cannot read {path}: Permission denied"


# ---- overrides into lists ----------------------------------------------------------------------

LIST_YAML = TOY_YAML + "user_modules: []\nnames: [a, b]\nsteps: [{every: 1}, {every: 2}]\n"


def test_override_indexes_a_list_item(write_config):
    composed = compose(write_config(LIST_YAML))
    apply_overrides(composed, ["names.1=c", "steps.0.every=5", "steps.1={keep: true}"])
    assert OmegaConf.to_container(composed.raw)["names"] == ["a", "c"]
    assert OmegaConf.to_container(composed.raw)["steps"] == [{"every": 5}, {"every": 2, "keep": True}]


@pytest.mark.parametrize(("override", "list_key"), [("names.first=x", "names"), ("steps.2.every=1", "steps")])
def test_override_into_a_list_names_its_items(write_config, override, list_key):
    assert config_error(write_config(LIST_YAML), [override]) == (
        f"bad override '{override}': {list_key} is a list of 2 item(s); name one by its index, "
        f"{list_key}.0 to {list_key}.1"
    )


def test_override_into_an_empty_list_says_to_set_it_whole(write_config):
    assert config_error(write_config(LIST_YAML), ["user_modules.0=x"]) == (
        "bad override 'user_modules.0=x': user_modules is a list of 0 item(s); set it whole: user_modules=[...]"
    )


def test_override_value_keeps_its_interpolation_for_the_config_to_resolve(write_config):
    # After a type_hint swap too, whose bookkeeping reads each later override's value.
    overrides = ["optimizer.type_hint=SGD", "training.name=run_${training.max_steps}"]
    _, resolved = load_config(write_config(TOY_YAML), ToyConfig, overrides)
    assert resolved["training"]["name"] == "run_100"
