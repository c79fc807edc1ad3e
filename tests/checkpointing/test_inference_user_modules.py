"""`generate`, `export_hf` and `evaluate` import only the modules the person running them names
(``--user_modules``), never those a checkpoint's saved config lists."""

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from crafted_files import record_planted_module
from llm_gym.cli import DEBUG_ENV, main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "fresh_registry")

# A user component: Llama's RMSNorm under a name of its own, so the weights are the same as the built-in's.
NORM_MODULE = """
import pathlib

from llm_gym.models.norms import RMSNorm, RMSNormConfig
from llm_gym.registry import register_component

pathlib.Path("IMPORTED").touch()
register_component("norm", "MyRMSNorm", config_model=RMSNormConfig)(RMSNorm)
"""


@pytest.fixture
def experiment(llama_checkpoints, tmp_path, monkeypatch):
    """A copy of a tiny run's experiment directory, the test's directory being the current one."""
    monkeypatch.setenv(DEBUG_ENV, "")
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "experiment"
    shutil.copytree(llama_checkpoints.parent, copy)
    return copy


def _invoke(command: str, experiment, *options: str):
    output = {
        "export_hf": ["--output_dir", "hf"],
        "evaluate": ["--prefix", "val", "--max_samples", "2"],
    }.get(command, ["--prompt", "x", "--max_new_tokens", "2"])
    return CliRunner().invoke(main, [command, "--checkpoint_path", str(experiment), *output, *options])


@pytest.mark.parametrize("command", ["generate", "export_hf", "evaluate"])
def test_the_modules_a_checkpoint_lists_are_not_imported(experiment, tmp_path, command):
    marker = tmp_path / "PWNED"
    record_planted_module(experiment / "checkpoints" / "step_2", marker)
    result = _invoke(command, experiment)
    assert result.exit_code == 0, result.output
    assert not marker.exists()


@pytest.fixture
def forget_my_norms(monkeypatch):
    """Importing ``my_norms`` puts the current directory on sys.path and the module in sys.modules; undo both
    (``isolated_imports`` would also drop the torch modules export_hf imports first, which cannot load twice)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("my_norms", None)


@pytest.fixture
def user_component_experiment(experiment, forget_my_norms):
    """The run's model, as if it had been trained with a norm of the user's (``my_norms.MyRMSNorm``)."""
    (experiment.parent / "my_norms.py").write_text(NORM_MODULE)
    meta_path = experiment / "checkpoints" / "step_2" / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["resolved_config"]["user_modules"] = ["my_norms"]
    meta["resolved_config"]["model"]["config"]["norm"]["type_hint"] = "MyRMSNorm"
    meta_path.write_text(json.dumps(meta))
    return experiment


@pytest.mark.parametrize("command", ["generate", "export_hf", "evaluate"])
def test_a_model_of_user_components_loads_with_the_modules_named(user_component_experiment, tmp_path, command):
    refused = _invoke(command, user_component_experiment)
    assert refused.exit_code == 2
    assert "needs a component that is not registered: the run that wrote it imported my_norms" in refused.stderr
    assert "if you trust that code, pass --user_modules my_norms\n" in refused.stderr
    assert "unknown type_hint 'MyRMSNorm' for 'norm'" in refused.stderr
    assert not (tmp_path / "IMPORTED").exists()

    loaded = _invoke(command, user_component_experiment, "--user_modules", "my_norms")
    assert loaded.exit_code == 0, loaded.output
    assert (tmp_path / "IMPORTED").exists()


def test_without_recorded_modules_the_message_says_to_name_one(user_component_experiment):
    meta_path = user_component_experiment / "checkpoints" / "step_2" / "llm_gym_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["resolved_config"]["user_modules"] = ["not a module; rm -rf /", "\x1b[2J"]
    meta_path.write_text(json.dumps(meta))
    result = _invoke("generate", user_component_experiment)
    assert result.exit_code == 2
    assert "not registered: pass the module that registers it with --user_modules MODULE\n" in result.stderr
    assert "rm -rf" not in result.stderr and "\x1b" not in result.stderr


def test_a_named_module_that_does_not_import_is_exit_2(experiment):
    result = _invoke("generate", experiment, "--user_modules", "no_such_module_here")
    assert result.exit_code == 2
    assert "error: --user_modules: cannot import 'no_such_module_here'" in result.stderr
