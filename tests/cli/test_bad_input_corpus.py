"""Every row of the bad-input corpus (``tests/bad_input_corpus.py``): exit 2, one message, no traceback, no code
run, nothing the user owns changed."""

import hashlib
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bad_input_corpus import CASES, BadInput, Workspace
from experiment_runs import llm_gym
from llm_gym.cli import DEBUG_ENV, main


def _fingerprint(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(file): hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


@pytest.fixture(scope="session")
def shared_artefacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input_shared")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: BadInput, tmp_path, shared_artefacts, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "")
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    workspace = Workspace(tmp_path / "case", shared_artefacts)
    workspace.dir.mkdir()
    monkeypatch.chdir(workspace.dir)
    argv = [os.fspath(arg) for arg in case.argv(workspace)]
    before = {str(path): _fingerprint(path) for path in case.unchanged(workspace)}
    if case.subprocess:
        result = llm_gym(*argv, cwd=workspace.dir, check=False)
        status, stderr = result.returncode, result.stderr
    else:
        result = CliRunner().invoke(main, argv)
        status, stderr = result.exit_code, result.stderr
    assert status == 2, f"exit {status}\n{stderr}\n{getattr(result, 'stdout', '')}"
    assert "Traceback" not in stderr, stderr
    assert re.search(r"^error( \(rank \d+\))?: ", stderr, re.MULTILINE), stderr
    assert re.search(case.message, stderr), f"{case.message!r} not in:\n{stderr}"
    assert not workspace.marker.exists(), "a crafted input ran code"
    assert {str(path): _fingerprint(Path(path)) for path in before} == before
