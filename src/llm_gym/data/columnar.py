"""Text columns of parquet files (by row group) and Arrow IPC files (by record batch) as :class:`ColumnBlock` s.

Only the text column is read, a row group or record batch at a time, so memory stays bounded. Files are data:
pyarrow (>= 14.0.1) never unpickles the ``arrow.py_extension_type`` a crafted schema may name, and schema
metadata (a Hugging Face ``huggingface`` key, pandas metadata) is not read at all.

A file's *split points* are byte positions where its units (row groups, record batches) start: shards divide
the inputs there, and a unit belongs to the shard whose byte range holds its split point.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from llm_gym.data.documents import BLOCK_BYTES, ColumnBlock
from llm_gym.data.extras import import_data_extra
from llm_gym.errors import UserError

ROWS_PER_READ = 1024
ARROW_FILE_MAGIC = b"ARROW1"


def _pyarrow(path: Path):
    return import_data_extra("pyarrow", path)


def _unreadable(path: Path, what: str, error: Exception) -> UserError:
    return UserError(f"{path}: {what}: cannot read ({error})")


def _read_errors(pa) -> tuple[type[Exception], ...]:
    return (OSError, ValueError, pa.ArrowException)  # ArrowInvalid is a ValueError, ArrowIOError an OSError


def _open_parquet(path: Path):
    pa = _pyarrow(path)
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except _read_errors(pa) as error:
        raise UserError(f"{path}: not a readable parquet file ({error})") from error


def _parquet_split_points(parquet, size: int) -> list[int]:
    """Where each row group starts: its share of the file by the compressed bytes of the row groups before it
    (spread over the whole file, footer included, so shard boundaries fall between row groups evenly)."""
    metadata = parquet.metadata
    group_bytes = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        group_bytes.append(sum(row_group.column(j).total_compressed_size for j in range(row_group.num_columns)))
    total = sum(group_bytes)
    before = np.concatenate([[0], np.cumsum(group_bytes[:-1], dtype=np.int64)]) if group_bytes else []
    return [int(bytes_before) * size // total if total else 0 for bytes_before in before]


def parquet_split_points(path: Path, size: int) -> list[int]:
    return _parquet_split_points(_open_parquet(path), size)


def read_parquet(
    path: Path, text_key: str, start: int, end: float, on_bytes_read: Callable[[int], None]
) -> Iterator[ColumnBlock]:
    """The text of the row groups whose split points lie in ``[start, end)``."""
    pa = _pyarrow(path)
    parquet = _open_parquet(path)
    size = path.stat().st_size
    points = _parquet_split_points(parquet, size)
    metadata = parquet.metadata
    rejected = _rejection(pa, parquet.schema_arrow, text_key)
    first_row = 1
    for group, point in enumerate(points):
        rows = metadata.row_group(group).num_rows
        if start <= point < end:
            on_bytes_read((points[group + 1] if group + 1 < len(points) else size) - point)
            if rejected:
                yield from _rejected_blocks(path, first_row, rows, rejected)
            else:
                row = first_row
                try:
                    batches = parquet.iter_batches(
                        batch_size=ROWS_PER_READ, row_groups=[group], columns=[text_key], use_threads=False
                    )
                    for batch in batches:
                        yield from _column_blocks(pa, path, batch.column(0), row)
                        row += batch.num_rows
                except _read_errors(pa) as error:
                    where = f"row group {group} (rows {first_row:,}-{first_row + rows - 1:,})"
                    raise _unreadable(path, where, error) from error
        first_row += rows


def _open_arrow(pa, path: Path, text_field: int | None = None):
    """A reader of an Arrow IPC file (stream or file format), memory-mapped: skipping a batch reads only its header."""
    options = pa.ipc.IpcReadOptions(use_threads=False, included_fields=[] if text_field is None else [text_field])
    try:
        source = pa.memory_map(str(path))
        is_file_format = source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
        source.seek(0)
        if is_file_format:
            return source, pa.ipc.open_file(source, options=options)
        return source, pa.ipc.open_stream(source, options=options)
    except _read_errors(pa) as error:
        raise UserError(f"{path}: not a readable Arrow IPC file ({error})") from error


def _arrow_batches(pa, path: Path, text_field: int | None = None) -> Iterator[tuple[int, object]]:
    """Each record batch and its split point: where its message starts (stream format), or an equal share of
    the file (file format, whose batch positions pyarrow does not tell)."""
    source, reader = _open_arrow(pa, path, text_field)
    index = 0
    try:
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            count, size = reader.num_record_batches, source.size()
            for index in range(count):
                yield index * size // count, reader.get_batch(index)
            return
        while True:
            point = source.tell()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield point, batch
            index += 1
    except _read_errors(pa) as error:
        raise _unreadable(path, f"record batch {index}", error) from error


def arrow_split_points(path: Path) -> list[int]:
    return [point for point, _ in _arrow_batches(_pyarrow(path), path)]


def read_arrow(
    path: Path, text_key: str, start: int, end: float, on_bytes_read: Callable[[int], None]
) -> Iterator[ColumnBlock]:
    """The text of the record batches whose split points lie in ``[start, end)``."""
    pa = _pyarrow(path)
    _, reader = _open_arrow(pa, path)
    schema = reader.schema
    rejected = _rejection(pa, schema, text_key)
    text_field = None if rejected else schema.get_field_index(text_key)
    first_row, previous_point = 1, None
    for point, batch in _arrow_batches(pa, path, text_field):
        if previous_point is not None:
            on_bytes_read(point - previous_point)
            previous_point = None
        if point >= end:
            break
        if point >= start:
            if rejected:
                yield from _rejected_blocks(path, first_row, batch.num_rows, rejected)
            else:
                yield from _column_blocks(pa, path, batch.column(0), first_row)
            previous_point = point if first_row > 1 else 0  # the first batch carries the schema's bytes
        first_row += batch.num_rows
    if previous_point is not None:
        on_bytes_read(path.stat().st_size - previous_point)


def _rejection(pa, schema, text_key: str) -> tuple[str, str] | None:
    """Why no row of a file with this schema is a document, if so."""
    if text_key not in schema.names:
        columns = ", ".join(schema.names[:10]) + (", ..." if len(schema.names) > 10 else "")
        return f"no column '{text_key}'", f"set --text_key; the columns are {columns}"
    if schema.names.count(text_key) > 1:
        return f"several columns named '{text_key}'", "the file is ambiguous"
    column_type = schema.field(text_key).type
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if not _is_text(pa, column_type):
        return f"'{text_key}' is not a string", f"the column holds {column_type}"
    return None


def _is_text(pa, column_type) -> bool:
    string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or string_view(column_type)


def _rejected_blocks(path: Path, first_row: int, num_rows: int, rejected: tuple[str, str]) -> Iterator[ColumnBlock]:
    empty = np.zeros(1, np.int64)
    for row in range(0, num_rows, ROWS_PER_READ):
        yield ColumnBlock(str(path), first_row + row, min(ROWS_PER_READ, num_rows - row), empty, b"", rejected=rejected)


def _column_blocks(pa, path: Path, column, first_row: int) -> Iterator[ColumnBlock]:
    """Rows of a text column as blocks of about ``BLOCK_BYTES`` of text (at least one row each)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    column = column.cast(pa.large_binary())  # one layout for every string type; no copy of the text
    _, offsets_buffer, data_buffer = column.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64)[column.offset : column.offset + len(column) + 1]
    nulls = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
    start = 0
    while start < len(column):
        stop = int(np.searchsorted(offsets, offsets[start] + BLOCK_BYTES, side="right")) - 1
        stop = min(max(stop, start + 1), len(column))
        yield ColumnBlock(
            str(path),
            first_row + start,
            stop - start,
            offsets[start : stop + 1] - offsets[start],
            bytes(data[offsets[start] : offsets[stop]]),
            None if nulls is None else nulls[start:stop],
        )
        start = stop
