"""Training a byte-level BPE tokenizer (GPT-2 style) with the Hugging Face ``tokenizers`` library."""

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_gym.data.inputs import iter_texts
from llm_gym.data.tokenizers import END_OF_DOCUMENT
from llm_gym.errors import UserError
from llm_gym.outputs import refuse_writing_over_inputs, writing

BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + 1  # every byte, plus the end-of-document token
# The largest vocabularies in use hold a few hundred thousand tokens; the trainer reserves memory for every token
# asked (about 70 bytes each), and a reservation it cannot get aborts the process.
MAX_VOCAB_SIZE = 2**24


def train_bpe_tokenizer(
    inputs: Sequence[str | Path],
    vocab_size: int,
    output_path: Path,
    text_key: str = "text",
    force: bool = False,
    pattern: str | None = None,
) -> int:
    """Train on ``inputs`` and save ``output_path``; returns the vocabulary size reached.

    The vocabulary holds all 256 bytes, so any text encodes; ``<|endoftext|>`` ends a document.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + end of document)")
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(
            f"--vocab_size {vocab_size:,} is beyond the {MAX_VOCAB_SIZE:,} this trainer allows: it reserves memory "
            "for every token asked, and vocabularies in use hold a few hundred thousand"
        )
    refuse_writing_over_inputs([output_path], inputs, "--output_path")
    if output_path.exists() and not force:
        raise UserError(f"{output_path} exists; pass --force to overwrite it")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_DOCUMENT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = iter_texts(inputs, text_key, pattern)
    first_text = next(texts, None)
    if first_text is None:
        raise UserError("no documents in the input: nothing to train a tokenizer on")
    tokenizer.train_from_iterator(itertools.chain([first_text], texts), trainer=trainer)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    incomplete = output_path.with_name(output_path.name + ".incomplete")
    # Written by Python rather than tokenizer.save, whose failures (a full disk, a read-only directory) are bare
    # Exceptions; a failed write leaves no partial file.
    try:
        with writing(output_path):
            incomplete.write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    except UserError:
        incomplete.unlink(missing_ok=True)
        raise
    os.replace(incomplete, output_path)
    return tokenizer.get_vocab_size(with_added_tokens=True)
