"""What ``llm_gym data inspect`` prints about a tokenized corpus."""

from collections.abc import Iterator
from pathlib import Path

from llm_gym.data.indexed import IndexedDataset
from llm_gym.data.tokenizers import BYTE_TOKENIZER, ByteTokenizer, load_tokenizer
from llm_gym.errors import UserError


def describe_corpus(prefix: str | Path, tokenizer_spec: str | None, document: int, max_tokens: int) -> Iterator[str]:
    corpus = IndexedDataset(prefix)
    sizes = corpus.sizes
    yield f"prefix:    {prefix}"
    yield f"documents: {len(corpus):,}"
    yield f"tokens:    {corpus.num_tokens:,}"
    yield f"dtype:     {corpus.dtype.name} ({corpus.dtype.itemsize} bytes a token)"
    if len(corpus):
        yield f"document tokens: min {sizes.min():,}, mean {sizes.mean():,.1f}, max {sizes.max():,}"
    if not len(corpus):
        return
    if document >= len(corpus):
        raise UserError(f"--document {document} is out of range: the corpus has {len(corpus)} documents")
    ids = corpus.document(document)[:max_tokens].tolist()
    yield f"document {document}, first {len(ids)} of {int(sizes[document]):,} tokens:"
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
