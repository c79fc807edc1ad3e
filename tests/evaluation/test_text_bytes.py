"""Bytes per token: the denominator of bits per byte adds up to the text's UTF-8 bytes."""

import json

import torch

from llm_gym.data.tokenizer_training import train_bpe_tokenizer
from llm_gym.data.tokenizers import ByteTokenizer, load_tokenizer
from llm_gym.evaluation.text_bytes import token_byte_lengths

TEXT = "def déjà_vu(x):\n    return x * 2  # ünïcödé, 中文 and 🙂\n"


def test_byte_tokenizer_ids_are_one_byte_and_the_end_of_document_none():
    lengths = token_byte_lengths(ByteTokenizer(), 260)
    assert lengths[:256].tolist() == [1] * 256 and lengths[256:].tolist() == [0] * 4


def test_byte_level_bpe_tokens_add_up_to_the_texts_bytes(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": TEXT * (index + 1)}) + "\n" for index in range(20)))
    train_bpe_tokenizer([corpus], 400, tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    lengths = token_byte_lengths(tokenizer, 512)
    ids = tokenizer.encode(TEXT * 3)
    assert int(lengths[torch.tensor(ids)].sum()) == len((TEXT * 3).encode("utf-8"))
    assert lengths[tokenizer.eos_id] == 0 and lengths[tokenizer.vocab_size :].sum() == 0


def test_sentencepiece_style_entries(tmp_path):
    """A Metaspace vocabulary with byte fallback: ▁ is a space, <0xNN> one byte, special tokens none."""
    from tokenizers import Tokenizer, decoders, models

    vocabulary = {"<unk>": 0, "</s>": 1, "<0x0A>": 2, "▁the": 3, "é": 4, "ab": 5}
    rust = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    rust.decoder = decoders.Metaspace()
    rust.add_special_tokens(["</s>"])
    rust.save(str(tmp_path / "tokenizer.json"))
    lengths = token_byte_lengths(load_tokenizer(tmp_path / "tokenizer.json"), 6)
    assert lengths.tolist() == [5, 0, 1, 4, 2, 2]
