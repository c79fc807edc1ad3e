"""Helpers for the data tests: small corpora and JSONL inputs."""

import json
from pathlib import Path

import numpy as np

from llm_gym.data.indexed import IndexedDatasetWriter


def write_corpus(prefix: Path, documents: list[list[int]], dtype=np.uint16) -> Path:
    writer = IndexedDatasetWriter(prefix, np.dtype(dtype))
    for document in documents:
        writer.add_documents(np.asarray(document), np.array([len(document)]))
    writer.finalize()
    return prefix


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.write_text("".join(json.dumps({key: text}) + "\n" for text in texts), encoding="utf-8")
    return path
