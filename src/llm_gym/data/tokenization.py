"""Text files to a ``.bin/.idx`` corpus, in parallel, streaming, in input order; one shard of the inputs or all.

The main process reads blocks of lines or rows and writes results; ``num_workers`` processes parse and tokenize,
each on one core (the tokenizer's own thread pool is switched off in them, so processes do not fight
over cores). At most a few blocks per worker are in flight, so memory stays bounded on any input size.
"""

import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_gym.data.documents import Block, ColumnBlock, Problem, located, parse_block
from llm_gym.data.indexed import IndexedDatasetWriter, bin_path, existing_outputs, idx_path, token_dtype
from llm_gym.data.inputs import Piece, find_input_files, plan_shard, read_pieces
from llm_gym.data.prefixes import shard_prefix
from llm_gym.data.tokenizers import BYTE_TOKENIZER, load_tokenizer
from llm_gym.errors import UserError
from llm_gym.outputs import refuse_writing_over_inputs

ON_ERROR_CHOICES = ("fail", "skip")


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class BlockResult:
    tokens: np.ndarray
    lengths: np.ndarray
    problems: list[Problem]


@dataclass
class Progress:
    """Increments since the previous report, and the bytes this run reads in all."""

    documents: int
    tokens: int
    input_bytes: int
    total_input_bytes: int


@dataclass
class TokenizeSummary:
    output_prefix: str
    dtype: str
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    input_files: int = 0
    shard_index: int | None = None
    num_shards: int | None = None

    @property
    def megabytes_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)

    def as_record(self) -> dict:
        """The summary as one JSON object: the logs of a job's shards add up field by field."""
        return {
            "summary": "tokenize",
            "output_prefix": self.output_prefix,
            "shard_index": self.shard_index,
            "num_shards": self.num_shards,
            "input_files": self.input_files,
            "input_bytes": self.input_bytes,
            "documents": self.documents,
            "tokens": self.tokens,
            "skipped": dict(self.skipped.most_common()),
            "dtype": self.dtype,
            "seconds": round(self.seconds, 3),
        }


class _BlockEncoder:
    """What a worker process holds: the tokenizer and the settings, loaded once."""

    def __init__(self, tokenizer_spec: str, text_key: str, on_error: str):
        self.tokenizer = load_tokenizer(tokenizer_spec)
        self.dtype = token_dtype(self.tokenizer.vocab_size)
        self.text_key, self.stop_at_problem = text_key, on_error == "fail"

    def __call__(self, block: Block | ColumnBlock) -> BlockResult:
        texts, problems = parse_block(block, self.text_key)
        if problems and self.stop_at_problem:
            return BlockResult(np.zeros(0, self.dtype), np.zeros(0, np.int32), problems[:1])
        tokens, lengths = self.tokenizer.encode_batch_to_array(texts, self.dtype)
        return BlockResult(tokens, lengths, problems)


_worker_encoder: _BlockEncoder | None = None


def _init_worker(tokenizer_spec: str, text_key: str, on_error: str) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = _BlockEncoder(tokenizer_spec, text_key, on_error)


def _encode_in_worker(block: Block | ColumnBlock) -> BlockResult:
    assert _worker_encoder is not None
    return _worker_encoder(block)


def tokenize_files(
    inputs: Sequence[str | Path],
    tokenizer_spec: str,
    output_prefix: str | Path,
    text_key: str = "text",
    num_workers: int | None = None,
    on_error: str = "fail",
    force: bool = False,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    pattern: str | None = None,
    num_shards: int | None = None,
    shard_index: int = 0,
) -> TokenizeSummary:
    """Tokenize ``inputs`` in order into ``output_prefix.bin/.idx``, each document followed by EOS.

    ``num_workers``: processes that tokenize (default: the usable cores); 0 tokenizes in this process.
    ``pattern``: a glob selecting the files of directory inputs. With ``num_shards``, only shard ``shard_index``
    of the inputs, into ``output_prefix-IIIII-of-NNNNN``; a shard may hold no documents.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}")
    files = find_input_files(inputs, pattern)
    pieces = plan_shard(files, num_shards or 1, shard_index)
    if num_shards is not None:
        output_prefix = shard_prefix(output_prefix, shard_index, num_shards)
    tokenizer_file = [] if str(tokenizer_spec) == BYTE_TOKENIZER else [tokenizer_spec]
    refuse_writing_over_inputs(
        [bin_path(output_prefix), idx_path(output_prefix)],
        [file.path for file in files] + tokenizer_file,
        "--output_prefix",
    )
    existing = existing_outputs(output_prefix)
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to overwrite it")
    encoder = _BlockEncoder(tokenizer_spec, text_key, on_error)  # fails early on a bad tokenizer
    num_workers = usable_cpus() if num_workers is None else num_workers
    summary = TokenizeSummary(str(output_prefix), encoder.dtype.name, input_files=len(pieces))
    if num_shards is not None:
        summary.shard_index, summary.num_shards = shard_index, num_shards
    writer = IndexedDatasetWriter(output_prefix, encoder.dtype)
    start = time.perf_counter()
    try:
        if num_workers == 0:
            _run(pieces, text_key, encoder, writer, summary, encoder.stop_at_problem, 1, on_progress)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(num_workers, _init_worker, (str(tokenizer_spec), text_key, on_error)) as pool:
                submit = lambda block: pool.apply_async(_encode_in_worker, (block,))  # noqa: E731
                _run(
                    pieces, text_key, submit, writer, summary, encoder.stop_at_problem, 2 * num_workers + 1, on_progress
                )
        if summary.documents == 0 and num_shards is None:
            raise UserError("no documents in the input" + (" (all were skipped)" if summary.skipped else ""))
        writer.finalize()
    except BaseException:
        writer.discard()
        raise
    summary.seconds = time.perf_counter() - start
    return summary


def _run(
    pieces: list[Piece],
    text_key: str,
    submit: Callable,
    writer: IndexedDatasetWriter,
    summary: TokenizeSummary,
    stop_at_problem: bool,
    max_in_flight: int,
    on_progress: Callable[[Progress], None],
) -> None:
    """Submit blocks and write their results in input order, with at most ``max_in_flight`` pending.

    ``submit(block)`` returns a :class:`BlockResult` or an ``AsyncResult`` of one.
    """
    pending: deque = deque()
    unreported_bytes = 0
    total_bytes = sum(min(piece.end, piece.file.size) - piece.start for piece in pieces)

    def count_bytes(count: int) -> None:
        nonlocal unreported_bytes
        unreported_bytes += count

    def write_oldest() -> None:
        nonlocal unreported_bytes
        result = pending.popleft()
        if not isinstance(result, BlockResult):
            result = result.get()
        if result.problems and stop_at_problem:
            raise UserError(f"{located(result.problems[0])}; pass --on_error skip to skip such documents")
        summary.skipped.update(problem.reason for problem in result.problems)
        writer.add_documents(result.tokens, result.lengths)
        progress = Progress(len(result.lengths), int(result.tokens.size), unreported_bytes, int(total_bytes))
        summary.documents += progress.documents
        summary.tokens += progress.tokens
        summary.input_bytes += progress.input_bytes
        unreported_bytes = 0
        on_progress(progress)

    for block in read_pieces(pieces, text_key, count_bytes):
        pending.append(submit(block))
        if len(pending) >= max_in_flight:
            write_oldest()
    while pending:
        write_oldest()
    if unreported_bytes:  # read after the last block was sent (the end of a file, a row group's count)
        summary.input_bytes += unreported_bytes
        on_progress(Progress(0, 0, unreported_bytes, int(total_bytes)))
