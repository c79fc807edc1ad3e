"""A tiny trained run shared by the evaluation tests, built once per session: tests only add evaluations/ to it."""

from pathlib import Path

import pytest

from experiment_runs import TINY_CONFIG, llm_gym, tiny_overrides, write_byte_corpus


@pytest.fixture(scope="session")
def byte_corpus(tmp_path_factory) -> Path:
    return write_byte_corpus(tmp_path_factory.mktemp("evaluation_corpus"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, byte_corpus) -> Path:
    """The experiment directory of a 6-step tiny run that evaluated 8 val samples at steps 3 and 6."""
    experiment = tmp_path_factory.mktemp("evaluation_run") / "experiment"
    overrides = tiny_overrides(byte_corpus, experiment, **{"model.config.n_layer": 2})
    llm_gym("run", "--config_file_path", str(TINY_CONFIG), *overrides)
    return experiment
