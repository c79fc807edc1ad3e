"""Fixtures shared across concerns."""

import sys
from pathlib import Path

import pytest

import llm_gym.registry.registry
from experiment_runs import write_byte_corpus
from llm_gym.assembly import make_registry


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry of the built-ins, with no components declared yet, so a test's own declarations
    (``register_component``) do not leak into other tests."""
    monkeypatch.setattr(llm_gym.registry.registry, "_declared", [])
    return make_registry()


@pytest.fixture
def write_config(tmp_path):
    """``write_config(text, name="config.yaml")`` writes a YAML file into the test's directory."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def isolated_imports(monkeypatch):
    """Loading ``user_modules`` puts the config directory on sys.path and the modules in sys.modules; undo both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture(scope="session")
def byte_corpus(tmp_path_factory) -> Path:
    """A small real corpus, byte-tokenized, for end-to-end runs (see ``write_byte_corpus``)."""
    return write_byte_corpus(tmp_path_factory.mktemp("corpus"))
