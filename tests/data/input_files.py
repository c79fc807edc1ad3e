"""Small input files of every format ``tokenize`` reads, made in the test: each writer puts ``texts`` under
``key`` and returns what to pass as ``--input``."""

import gzip
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard


def jsonl_bytes(texts: list[str], key: str = "text") -> bytes:
    return "".join(json.dumps({key: text}) + "\n" for text in texts).encode()


def write_jsonl_file(path: Path, texts: list[str], key: str = "text") -> Path:
    path.write_bytes(jsonl_bytes(texts, key))
    return path


def write_gzip(path: Path, texts: list[str], key: str = "text") -> Path:
    with gzip.open(path, "wb") as file:
        file.write(jsonl_bytes(texts, key))
    return path


def write_zstd(path: Path, texts: list[str], key: str = "text", frames: int = 2) -> Path:
    """Several frames (as ``zstd`` and pzstd write long files), each with its checksum."""
    data = jsonl_bytes(texts, key)
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    cut = [len(data) * index // frames for index in range(frames + 1)]
    path.write_bytes(b"".join(compressor.compress(data[a:b]) for a, b in itertools.pairwise(cut)))
    return path


def write_parquet(path: Path, texts: list, key: str = "text", row_groups: list[int] | None = None, **columns) -> Path:
    """Row groups of the given sizes (uneven on purpose), plus an ``id`` column so the text is not alone."""
    table = pa.table({key: texts, "id": list(range(len(texts))), **columns})
    sizes = row_groups or [len(texts)]
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for size in sizes:
            writer.write_table(table.slice(start, size))
            start += size
    return path


def write_arrow(path: Path, texts: list, key: str = "text", batch_rows: int = 1000, file_format: bool = False) -> Path:
    table = pa.table({key: texts, "id": list(range(len(texts)))})
    new_writer = pa.ipc.new_file if file_format else pa.ipc.new_stream
    with pa.OSFile(str(path), "wb") as sink, new_writer(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return path


def write_hf_dataset(directory: Path, texts: list[str], num_files: int = 2, batch_rows: int = 1000) -> Path:
    """What ``datasets.Dataset.save_to_disk(directory, num_shards=num_files)`` writes (checked against datasets
    5.2): Arrow IPC stream files of 1,000-row batches with a ``huggingface`` schema metadata key, a
    ``state.json`` listing them, and a ``dataset_info.json``."""
    directory.mkdir(parents=True)
    features = {"text": {"dtype": "string", "_type": "Value"}, "id": {"dtype": "int64", "_type": "Value"}}
    schema = pa.schema(
        [("text", pa.string()), ("id", pa.int64())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    names = [f"data-{index:05d}-of-{num_files:05d}.arrow" for index in range(num_files)]
    cut = [len(texts) * index // num_files for index in range(num_files + 1)]
    for name, (start, stop) in zip(names, itertools.pairwise(cut), strict=True):
        table = pa.table({"text": texts[start:stop], "id": list(range(start, stop))}, schema=schema)
        with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in table.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "0", "_split": None}
    (directory / "state.json").write_text(json.dumps(state, indent=2))
    (directory / "dataset_info.json").write_text(json.dumps({"features": features}, indent=2))
    return directory
