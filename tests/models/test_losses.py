"""The chunked loss equals the loss over the whole logits, and so do its gradients, in the model and in a run."""

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens

from experiment_runs import TINY_CONFIG, largest_difference, run_losses, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.models.contract import as_language_model
from llm_gym.models.losses import chunked_loss_sums, loss_sums
from llm_gym.training.builder import build_model_on_meta

IGNORE = -100


def _inputs(tokens: int = 150, vocab: int = 97, dim: int = 24):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, tokens // 3, dim, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=generator).mul_(dim**-0.5).requires_grad_()
    targets = torch.randint(0, vocab, (3, tokens // 3), generator=generator)
    targets[:, ::5] = IGNORE
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 150, 1000])
@pytest.mark.parametrize("z_loss_weight", [0.0, 1e-2])
def test_the_chunked_loss_and_its_gradients_equal_the_whole_logits_loss(chunk_tokens, z_loss_weight):
    # Per target token, as a step normalises the loss and the run logs it.
    hidden, weight, targets = _inputs()
    counted = (targets != IGNORE).sum()
    whole = [value / counted for value in loss_sums(hidden @ weight.T, targets, IGNORE, z_loss_weight)]
    whole_gradients = torch.autograd.grad(sum(whole), (hidden, weight))
    chunked = [
        value / counted for value in chunked_loss_sums(hidden, weight, targets, IGNORE, chunk_tokens, z_loss_weight)
    ]
    chunked_gradients = torch.autograd.grad(sum(chunked), (hidden, weight))
    for expected, actual in zip(whole, chunked, strict=True):
        assert abs(expected.item() - actual.item()) < 1e-6
    for expected, actual in zip(whole_gradients, chunked_gradients, strict=True):
        torch.testing.assert_close(actual, expected.to(actual.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("style", [LLAMA_STYLE, GPT2_STYLE], ids=["llama_tied", "gpt2"])
def test_the_model_hands_its_output_projection_to_the_loss_in_place_of_the_logits(style):
    model = build(style, tie_embeddings=style is LLAMA_STYLE)
    tokens = random_tokens(model)
    targets = random_tokens(model, seed=2)
    with torch.no_grad():
        expected = loss_sums(model(tokens), targets, IGNORE)[0]

    def chunked(hidden: torch.Tensor, weight: torch.Tensor):
        return chunked_loss_sums(hidden, weight, targets, IGNORE, chunk_tokens=5)

    with torch.no_grad():
        actual = model(tokens, output_loss=chunked)[0]
    assert abs(actual.item() - expected.item()) / targets.numel() < 1e-6


def _load(*overrides: str) -> TrainingAppConfig:
    return load_config(TINY_CONFIG, TrainingAppConfig, list(overrides), registry=make_registry())[0]


@pytest.mark.parametrize(
    ("degree", "reason"),
    [("tensor_parallel_degree", "tensor parallelism already computes the loss on logits split by vocabulary"),
     ("pipeline_parallel_degree", "the last stage hands its logits to torch's pipeline schedule")],
)  # fmt: skip
def test_the_chunked_loss_is_refused_where_another_computes_the_loss(degree, reason):
    with pytest.raises(
        ConfigError, match=rf"training.loss_chunk_tokens cannot run with parallelism.config.{degree} 2: {reason}"
    ):
        _load("training.loss_chunk_tokens=64", f"parallelism.config.{degree}=2", "model.config.vocab_size=258")


def test_a_model_whose_forward_takes_no_output_loss_is_refused_for_the_chunked_loss():
    model = build_model_on_meta(_load(), make_registry())
    model.forward = lambda input_ids, kv_cache=None: None
    with pytest.raises(ConfigError, match=r"a forward\(\) taking output_loss, which training.loss_chunk_tokens needs"):
        as_language_model(model, chunked_loss=True)


@pytest.mark.slow
def test_a_run_with_the_chunked_loss_matches_the_plain_one_on_two_fsdp2_ranks(tmp_path):
    corpus = write_byte_corpus(tmp_path)
    # 2 ranks × 2 samples × 32 tokens: chunks of 48 tokens do not divide a micro batch's 64.
    settings = {"training.max_steps": 10, "training.micro_batch_size": 2, "training.z_loss_weight": 1e-3}
    plain = run_losses(corpus, tmp_path / "plain", 2, **settings)
    chunked = run_losses(corpus, tmp_path / "chunked", 2, **settings, **{"training.loss_chunk_tokens": 48})
    assert largest_difference(plain, chunked) < 1e-5
