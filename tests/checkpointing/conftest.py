"""Checkpoints of real, tiny training runs (``llm_gym run``), each trained once per test session."""

from pathlib import Path

import pytest
import torch

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, llm_gym, tiny_overrides, torchrun

BPE_VOCAB_SIZE = 300

# Two steps of a two-layer model: enough for a checkpoint, quick on a CPU.
SHORT_RUN = {
    "training.max_steps": 2,
    "training.eval_interval": 2,
    "lr_scheduler.config.warmup_steps": 1,
    "checkpointing.every_n_steps": 0,
    "model.config.n_layer": 2,
}
# The shape of config_files/model_sections/gpt2_124m.yaml: exports to GPT2LMHeadModel.
GPT2_MODEL = {
    "model.config.positional": "learned",
    "model.config.n_head_kv": 4,
    "model.config.bias": True,
    "model.config.tie_embeddings": False,
    "model.config.norm.type_hint": "LayerNorm",
    "model.config.mlp.type_hint": "GELUMLP",
    "model.config.mlp.config.hidden_dim": 256,
}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run many times faster on one thread than on threads competing for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bpe_corpus(byte_corpus, tmp_path_factory) -> Path:
    """The byte corpus's texts with a BPE ``tokenizer.json`` trained on them: ``<dir>/{train,val}_bpe``."""
    directory = tmp_path_factory.mktemp("bpe")
    tokenizer = directory / "tokenizer.json"
    llm_gym("data", "train_tokenizer", "--input", str(byte_corpus / "train.jsonl"),
            "--vocab_size", str(BPE_VOCAB_SIZE), "--output_path", str(tokenizer))  # fmt: skip
    for split in ("train", "val"):
        llm_gym("data", "tokenize", "--input", str(byte_corpus / f"{split}.jsonl"), "--tokenizer", str(tokenizer),
                "--output_prefix", str(directory / f"{split}_bpe"))  # fmt: skip
    return directory


def train(byte_corpus: Path, output_dir: Path, ranks: int = 1, **overrides: object) -> Path:
    """Train a short run; returns its ``checkpoints/`` directory."""
    overrides = tiny_overrides(byte_corpus, output_dir, **{**SHORT_RUN, **overrides})
    args = ["run", "--config_file_path", str(TINY_CONFIG), *overrides]
    if ranks == 1:
        llm_gym(*args)
    else:
        torchrun(ranks, *args)
    return output_dir / "checkpoints"


@pytest.fixture(scope="session")
def llama_checkpoints(byte_corpus, tmp_path_factory) -> Path:
    """A Llama-style model (tiny_cpu.yaml's), byte tokenizer, one process."""
    return train(byte_corpus, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2_checkpoints(byte_corpus, bpe_corpus, tmp_path_factory) -> Path:
    """A GPT-2-style model with untied embeddings and a BPE tokenizer, trained on 2 ranks with FSDP2."""
    skip_unless_gloo_sharding_works()
    return train(
        byte_corpus,
        tmp_path_factory.mktemp("gpt2"),
        ranks=2,
        **GPT2_MODEL,
        **{
            "training.micro_batch_size": 2,
            "model.config.vocab_size": BPE_VOCAB_SIZE,
            "data.tokenizer": bpe_corpus / "tokenizer.json",
            "data.train_dataset.config.path_prefix": bpe_corpus / "train_bpe",
            "data.eval_datasets.val.config.path_prefix": bpe_corpus / "val_bpe",
        },
    )


@pytest.fixture(scope="session")
def unexportable_checkpoints(byte_corpus, tmp_path_factory) -> Path:
    """Learned positions with RMSNorm: neither GPT2LMHeadModel nor LlamaForCausalLM."""
    overrides = {"training.max_steps": 1, "training.eval_interval": 1, "model.config.positional": "learned"}
    return train(byte_corpus, tmp_path_factory.mktemp("unexportable"), **overrides)
