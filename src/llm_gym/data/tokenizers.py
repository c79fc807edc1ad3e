"""Tokenizers by name: ``byte`` (built in) or the path of a Hugging Face ``tokenizer.json``.

Text is encoded without the tokenizer's own special tokens (no BOS); a corpus marks document ends with
the end-of-document token alone, which the writer appends. A corpus document is text throughout: a literal
``<|endoftext|>`` in it is encoded as those characters. A prompt (``encode``) reads special tokens as
Hugging Face tokenizers do, so it encodes as the exported tokenizer encodes it.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from llm_gym.errors import UserError

BYTE_TOKENIZER = "byte"
END_OF_DOCUMENT = "<|endoftext|>"
# The end-of-document tokens of common tokenizers, first match wins: ours and GPT-2's, Llama 3's, then
# the sentencepiece-style names.
_END_OF_DOCUMENT_CANDIDATES = (END_OF_DOCUMENT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch_to_array(self, texts: Sequence[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """All documents' tokens back to back, each followed by ``eos_id``, and the per-document lengths."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """Ids 0-255 are the UTF-8 bytes of the text, 256 ends a document."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch_to_array(self, texts: Sequence[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        # One join and one copy for the whole batch: 0xFF never occurs in UTF-8, so it marks the ends.
        encoded = [text.encode("utf-8") for text in texts]
        if not encoded:  # no end marker either: a block whose every line was skipped adds nothing
            return np.zeros(0, dtype), np.zeros(0, np.int32)
        joined = np.frombuffer(b"\xff".join(encoded) + b"\xff", dtype=np.uint8)
        tokens = joined.astype(dtype)
        tokens[joined == 0xFF] = self.eos_id
        lengths = np.fromiter((len(document) + 1 for document in encoded), np.int32, len(encoded))
        return tokens, lengths

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A ``tokenizer.json`` from the Hugging Face ``tokenizers`` library (GPT-2's, Llama 3's, or trained here)."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise UserError(f"{path}: no such tokenizer file (give 'byte' or the path of a tokenizer.json)")
        try:
            self._tokenizer = RustTokenizer.from_file(str(path))
        except Exception as error:  # the library raises plain Exceptions for malformed files
            raise UserError(f"{path}: not a valid Hugging Face tokenizer.json ({error})") from error
        self.path = path
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        eos_id = next(
            (i for name in _END_OF_DOCUMENT_CANDIDATES if (i := self._tokenizer.token_to_id(name)) is not None), None
        )
        if eos_id is None:
            raise UserError(
                f"{path}: no end-of-document token; add one of {', '.join(_END_OF_DOCUMENT_CANDIDATES)} to it"
            )
        self.eos_id = eos_id
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets nobody here reads.
        self._encode_batch = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch_to_array(self, texts: Sequence[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        # Documents are text: a literal "<|endoftext|>" in a web page must not end its document early.
        self._tokenizer.encode_special_tokens = True
        try:
            encodings = self._encode_batch(list(texts), add_special_tokens=False)
        finally:
            self._tokenizer.encode_special_tokens = False
        lengths = np.fromiter((len(encoding) + 1 for encoding in encodings), np.int32, len(encodings))
        tokens = np.empty(int(lengths.sum(dtype=np.int64)), dtype=dtype)
        end = 0
        for encoding, length in zip(encodings, lengths.tolist(), strict=True):
            tokens[end : end + length - 1] = encoding.ids
            end += length
            tokens[end - 1] = self.eos_id
        return tokens, lengths

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def tokenizer_exists(spec: str | Path) -> bool:
    return str(spec) == BYTE_TOKENIZER or Path(spec).is_file()


def load_tokenizer(spec: str | Path, model_vocab_size: int | None = None) -> Tokenizer:
    """``"byte"`` or the path of a ``tokenizer.json``; with ``model_vocab_size``, checked to fit that model."""
    tokenizer = ByteTokenizer() if str(spec) == BYTE_TOKENIZER else HuggingFaceTokenizer(Path(spec))
    if model_vocab_size is not None and tokenizer.vocab_size > model_vocab_size:
        raise UserError(
            f"tokenizer {spec} has {tokenizer.vocab_size:,} ids but model.config.vocab_size is {model_vocab_size:,}: "
            "text it encodes may hold ids the model cannot embed; use the tokenizer the model is configured for, "
            f"or a model.config.vocab_size of at least {tokenizer.vocab_size:,}"
        )
    return tokenizer
