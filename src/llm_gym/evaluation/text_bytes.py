"""How many bytes of text each token stands for: the denominator of bits per byte.

A token's bytes are the UTF-8 bytes it contributes to the decoded text. The byte tokenizer's ids 0-255 are one
byte each. For a Hugging Face ``tokenizer.json`` whose decoder is byte-level (GPT-2, Llama 3, the BPE that
``llm_gym data train_tokenizer`` writes), every character of a vocabulary entry stands for exactly one byte,
so the count is exact. For other tokenizers (sentencepiece style), ``▁`` counts as a space and a byte-fallback
token ``<0xNN>`` as one byte; any other entry counts the UTF-8 bytes of its own text. Special tokens (the
end-of-document token and every added special token) mark structure, not text: they count 0 bytes.
"""

import json
import re

import torch
from tokenizers import Tokenizer as RustTokenizer

from llm_gym.data.tokenizers import ByteTokenizer, HuggingFaceTokenizer, Tokenizer
from llm_gym.errors import UserError

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_METASPACE = "▁"


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from bytes to printable characters, inverted: character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + shift)
            shift += 1
    return {chr(character): byte for byte, character in zip(printable, characters, strict=True)}


def _uses_byte_level_decoder(spec: dict) -> bool:
    decoder = spec.get("decoder") or {}
    decoders = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    return any(isinstance(part, dict) and part.get("type") == "ByteLevel" for part in decoders)


def _entry_bytes(entry: str, byte_level: bool, alphabet: dict[str, int]) -> int:
    if byte_level:
        return sum(1 if character in alphabet else len(character.encode("utf-8")) for character in entry)
    if _BYTE_FALLBACK.match(entry):
        return 1
    return len(entry.replace(_METASPACE, " ").encode("utf-8"))


def _hugging_face_token_bytes(tokenizer: HuggingFaceTokenizer) -> torch.Tensor:
    # The file was read once already, by HuggingFaceTokenizer: it is a valid tokenizer.json.
    vocabulary = RustTokenizer.from_file(str(tokenizer.path))
    spec = json.loads(vocabulary.to_str())
    byte_level, alphabet = _uses_byte_level_decoder(spec), _byte_level_alphabet()
    special = {
        added["id"]
        for added in spec.get("added_tokens") or []
        if isinstance(added, dict) and added.get("special") and isinstance(added.get("id"), int)
    }
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.int64)
    for token_id in range(tokenizer.vocab_size):
        entry = vocabulary.id_to_token(token_id)
        if entry is not None and token_id not in special and token_id != tokenizer.eos_id:
            lengths[token_id] = _entry_bytes(entry, byte_level, alphabet)
    return lengths


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` int64: the bytes of text each id stands for (0 for special tokens and unused ids)."""
    if isinstance(tokenizer, ByteTokenizer):
        lengths = torch.zeros(vocab_size, dtype=torch.int64)
        lengths[: min(256, vocab_size)] = 1
        return lengths
    if isinstance(tokenizer, HuggingFaceTokenizer):
        lengths = _hugging_face_token_bytes(tokenizer)
        padded = torch.zeros(vocab_size, dtype=torch.int64)
        padded[: min(len(lengths), vocab_size)] = lengths[:vocab_size]
        return padded
    raise UserError(f"bits per byte: no byte count for a tokenizer of type {type(tokenizer).__name__}")
