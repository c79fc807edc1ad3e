"""Fixtures for the data tests."""

from pathlib import Path

import pytest
from corpus_helpers import write_corpus


@pytest.fixture
def counting_corpus(tmp_path: Path) -> Path:
    """1,001 tokens 0..1000 in three documents: every sample's content tells its position."""
    tokens = list(range(1001))
    return write_corpus(tmp_path / "counting", [tokens[:300], tokens[300:700], tokens[700:]])
