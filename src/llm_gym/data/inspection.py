"""What ``llm_gym data inspect`` prints about a tokenized corpus, or several read as one (a sharded one)."""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from llm_gym.data.indexed import IndexedDataset, chunk_slices
from llm_gym.data.tokenizers import BYTE_TOKENIZER, ByteTokenizer, load_tokenizer
from llm_gym.errors import UserError

# Bucket b of the length histogram holds documents of 2^(b-1) to 2^b - 1 tokens (bucket 0: empty sequences).
_BUCKETS = 64
_BAR_WIDTH = 40


def describe_corpus(
    prefixes: Sequence[Path], tokenizer_spec: str | None, document: int, max_tokens: int
) -> Iterator[str]:
    documents, tokens, histogram = [], [], np.zeros(_BUCKETS, np.int64)
    dtype, shortest, longest = None, np.iinfo(np.int64).max, 0
    for prefix in prefixes:  # one at a time: thousands of shards stay within the open-files limit
        corpus = IndexedDataset(prefix)
        if dtype is not None and corpus.dtype != dtype:
            raise UserError(
                f"{prefix} holds {corpus.dtype} tokens but {prefixes[0]} holds {dtype}: not one corpus (different "
                "tokenizers?)"
            )
        dtype = corpus.dtype
        documents.append(len(corpus))
        tokens.append(corpus.num_tokens)
        for part in chunk_slices(len(corpus)):
            sizes = corpus.sizes[part]
            histogram += np.bincount(np.frexp(sizes.astype(np.float64))[1], minlength=_BUCKETS)[:_BUCKETS]
            shortest, longest = min(shortest, int(sizes.min())), max(longest, int(sizes.max()))
        del corpus
    total_documents, total_tokens = sum(documents), sum(tokens)
    if len(prefixes) == 1:
        yield f"prefix:    {prefixes[0]}"
    else:
        yield f"prefixes:  {len(prefixes):,} ({prefixes[0]} ... {prefixes[-1]})"
    yield f"documents: {total_documents:,}"
    yield f"tokens:    {total_tokens:,}"
    yield f"dtype:     {dtype.name} ({dtype.itemsize} bytes a token)"
    if len(prefixes) > 1:
        empty = sum(count == 0 for count in documents)
        yield (
            f"per corpus: documents {min(documents):,} to {max(documents):,}, tokens {min(tokens):,} to "
            f"{max(tokens):,}" + (f"; {empty:,} empty" if empty else "")
        )
    if not total_documents:
        return
    yield f"document tokens: min {shortest:,}, mean {total_tokens / total_documents:,.1f}, max {longest:,}"
    yield from _histogram_lines(histogram)
    if document >= total_documents:
        raise UserError(f"--document {document} is out of range: the corpus has {total_documents} documents")
    holder = int(np.searchsorted(np.cumsum(documents), document, side="right"))
    corpus = IndexedDataset(prefixes[holder])
    index = document - sum(documents[:holder])
    ids = corpus.document(index)[:max_tokens].tolist()
    where = f" ({prefixes[holder]}, document {index})" if len(prefixes) > 1 else ""
    yield f"document {document}{where}, first {len(ids)} of {int(corpus.sizes[index]):,} tokens:"
    if not ids:
        yield "  (an empty sequence)"
        return
    if tokenizer_spec is None and min(ids) >= 0 and max(ids) <= ByteTokenizer.eos_id:
        tokenizer_spec = BYTE_TOKENIZER
    if tokenizer_spec is None:
        yield f"  ids: {ids}"
        yield "  (ids beyond bytes: pass --tokenizer tokenizer.json to decode)"
        return
    yield f"  decoded with '{tokenizer_spec}':"
    yield from ("  | " + line for line in load_tokenizer(tokenizer_spec).decode(ids).splitlines())


def _histogram_lines(histogram: np.ndarray) -> Iterator[str]:
    used = np.flatnonzero(histogram)
    most = int(histogram.max())
    yield "document lengths (tokens, EOS included):"
    for bucket in range(int(used[0]), int(used[-1]) + 1):
        count = int(histogram[bucket])
        span = "0" if bucket == 0 else f"{2 ** (bucket - 1):,}-{2**bucket - 1:,}"
        bar = "#" * max(round(_BAR_WIDTH * count / most), 1 if count else 0)
        yield f"  {span:>15} {count:>13,}  {bar}"
