"""The three ways to start the CLI (torchrun uses the third), each as a real process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "llm_gym"


ENTRY_POINTS = pytest.mark.parametrize(
    "command",
    [
        [str(CONSOLE_SCRIPT)],
        [sys.executable, "-m", "llm_gym"],
        [sys.executable, str(SOURCE_ROOT / "src" / "llm_gym" / "__main__.py")],
    ],
    ids=["console_script", "python_-m", "python_file"],
)


@ENTRY_POINTS
def test_help(command, tmp_path):
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed (pip install -e .)")
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: llm_gym ")
    assert "validate" in result.stdout
    assert result.stderr == ""


def test_cli_import_stays_light():
    """`llm_gym --help` must not pay for torch: commands import the library inside their function."""
    code = "import sys; import llm_gym.cli; print(sorted({'torch', 'pydantic', 'omegaconf'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_user_error_from_a_real_process(tmp_path):
    """Resolution runs here, so nothing else (a library's warning, a traceback) may reach stderr."""
    (tmp_path / "config.yaml").write_text("training:\n  max_steps: ${dist:epochs}\n")
    result = subprocess.run(
        [sys.executable, "-m", "llm_gym", "validate", "--config_file_path", "config.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: training.max_steps: cannot resolve interpolation: unknown key 'epochs' for ${dist:...}; "
        "valid: rank, local_rank, world_size, local_world_size\n"
    )


@ENTRY_POINTS
def test_a_module_in_the_current_directory_is_not_imported(command, tmp_path):
    """A downloaded experiment directory is data: a ``matplotlib.py`` in it must not run in place of the real one
    when ``plot`` imports matplotlib (``python -m`` puts the current directory first on sys.path)."""
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed (pip install -e .)")
    (tmp_path / "matplotlib.py").write_text("import pathlib\npathlib.Path('PWNED').touch()\n")
    lines = [{"step": step, "split": "train", "loss": 1.0 / step, "lr": 1e-3} for step in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot = ["plot", "--metrics_path", "metrics.jsonl", "--output_path", "curves.png"]
    result = subprocess.run([*command, *plot], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert not (tmp_path / "PWNED").exists()
    assert result.returncode == 0, result.stderr
