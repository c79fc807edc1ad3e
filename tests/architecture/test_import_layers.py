"""The package's imports follow its layers (tests/import_layers.py), and a wrong-way import fails the check."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from import_layers import package_graph, violations

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "src"
CHECKER = Path(__file__).resolve().parents[1] / "import_layers.py"


def test_every_import_follows_the_layers():
    assert violations(SOURCE_ROOT) == []


def test_the_leaves_and_the_mechanism_import_no_runner():
    graph = package_graph(SOURCE_ROOT)
    runners = {"assembly", "training", "checkpointing", "inference", "cli"}
    for leaf in ("data", "models", "parallel", "logging_broker", "optim", "config", "registry"):
        assert not graph[leaf] & runners, leaf
    assert graph["registry"] <= {"errors"}


@pytest.fixture
def source_copy(tmp_path) -> Path:
    shutil.copytree(SOURCE_ROOT / "llm_gym", tmp_path / "llm_gym", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def append(source_root: Path, module: str, text: str) -> int:
    """Append ``text`` to ``module`` (a path under llm_gym/); returns the line number it starts at."""
    path = source_root / "llm_gym" / module
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, text, ""]))
    return len(lines) + 1


def test_a_leaf_importing_the_training_run_fails_the_check(source_copy):
    line = append(source_copy, "models/decoder.py", "from llm_gym.training.loop import Trainer")
    assert violations(source_copy) == [
        f"llm_gym/models/decoder.py:{line}: llm_gym.models.decoder imports llm_gym.training.loop, a layer above models"
    ]
    # The script says so too, with a non-zero exit status: what `make test` and CI would see.
    result = subprocess.run([sys.executable, str(CHECKER), str(source_copy)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "llm_gym.models.decoder imports llm_gym.training.loop" in result.stderr


def test_the_registry_mechanism_importing_a_component_fails_the_check(source_copy):
    line = append(source_copy, "registry/registry.py", "from llm_gym.models.norms import NORMS")
    assert violations(source_copy) == [
        f"llm_gym/registry/registry.py:{line}: llm_gym.registry.registry imports llm_gym.models.norms, "
        "a layer above registry"
    ]


def test_two_leaves_importing_each_other_fails_the_check(source_copy):
    line = append(source_copy, "data/collators.py", "from llm_gym.models import decoder")
    assert violations(source_copy) == [
        f"llm_gym/data/collators.py:{line}: llm_gym.data.collators imports llm_gym.models.decoder; "
        "data and models are independent"
    ]


def test_an_import_inside_a_function_fails_the_check_outside_the_cli(source_copy):
    line = append(source_copy, "checkpointing/manager.py", "def late():\n    from llm_gym.errors import UserError")
    append(source_copy, "cli/run.py", "def late():\n    from llm_gym.training.run import run_training")
    assert violations(source_copy) == [
        f"llm_gym/checkpointing/manager.py:{line + 1}: llm_gym.checkpointing.manager imports llm_gym.errors inside "
        "a function; import it at the top (only llm_gym.cli imports lazily)"
    ]


def test_an_import_only_for_type_checking_counts_too(source_copy):
    line = append(
        source_copy,
        "parallel/distributed.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import llm_gym.cli",
    )
    assert violations(source_copy) == [
        f"llm_gym/parallel/distributed.py:{line + 2}: llm_gym.parallel.distributed imports llm_gym.cli, "
        "a layer above parallel"
    ]


def test_a_new_package_needs_a_place_in_the_layers(source_copy):
    (source_copy / "llm_gym" / "serving").mkdir()
    (source_copy / "llm_gym" / "serving" / "__init__.py").write_text("from llm_gym.errors import UserError\n")
    assert violations(source_copy) == ["llm_gym/serving/__init__.py:1: package llm_gym.serving has no place in LAYERS"]
