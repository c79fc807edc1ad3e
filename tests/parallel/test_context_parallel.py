"""Context parallelism (Ulysses all-to-all around attention): the exchange and the model on two ranks against the
whole sequence on one, the refusals, and real runs under torchrun on gloo against one process with the same
global batch.

Parity of losses per step over 20 steps (fp32) is what proves the gradients right: gloo's AVG reduction can
be wrong (torch issue 162338), and an update that is wrong anywhere shows in the next steps' losses.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from distributed import run_on_ranks, skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, largest_difference, run_losses, steps_after, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.data.collators import document_ids
from llm_gym.errors import ConfigError
from llm_gym.models.contract import as_language_model
from llm_gym.parallel.context_parallel import UlyssesExchange
from llm_gym.parallel.distributed import init_distributed, torch_release
from models.model_builders import GPT2_STYLE, LLAMA_STYLE, build, random_tokens

CP2 = {"parallelism.config.context_parallel_degree": 2}


def _world_exchange(tensor_parallel_degree: int = 1) -> UlyssesExchange:
    """The exchange over all ranks of the test's process group, this rank's chunk its rank."""
    env = init_distributed("cpu")
    return UlyssesExchange(env.world_size, env.rank, tensor_parallel_degree, lambda: dist.group.WORLD)


def _exchange_on_this_rank() -> None:
    exchange = _world_exchange()
    generator = torch.Generator().manual_seed(0)
    # [B, T, H, D], the same on every rank: each takes its chunk of positions, and should get its share of heads.
    whole = torch.randn(2, 6, 4, 3, generator=generator, requires_grad=True)
    weights = torch.randn(2, 6, 4, 3, generator=generator)
    positions = slice(3 * exchange.rank, 3 * exchange.rank + 3)
    heads = slice(2 * exchange.rank, 2 * exchange.rank + 2)
    chunk = whole[:, positions]  # a non-contiguous view: the exchange must send its values, not its memory
    assert not chunk.is_contiguous()
    head_share = exchange.to_heads(chunk)
    assert torch.equal(head_share, whole[:, :, heads])
    # Summed over the ranks this is (whole · weights).sum(): each chunk's gradient is its positions' weights.
    (head_share * weights[:, :, heads]).sum().backward()
    assert torch.equal(whole.grad[:, positions], weights[:, positions])
    assert torch.equal(exchange.to_sequence(head_share.detach()), chunk.detach())
    share = whole.detach()[:, :, heads].requires_grad_()
    (exchange.to_sequence(share) * weights[:, positions]).sum().backward()
    assert torch.equal(share.grad, weights[:, :, heads])


def test_the_exchange_trades_positions_for_heads_and_its_gradient_is_the_gathered_one():
    run_on_ranks(_exchange_on_this_rank, 2)


def _model_on_this_rank(style: dict, overrides: dict) -> None:
    """The model's logits and summed gradients on two chunks equal the whole sequence's on one rank."""
    exchange = _world_exchange()
    model = build(style, **overrides)
    inputs = random_tokens(model, batch=2)
    inputs[:, [3, 9]] = 0  # token 0 ends a document (below): three documents a row
    documents = {"document_ids": document_ids(inputs, 0)} if model.uses_document_ids else {}
    weights = torch.randn(*inputs.shape, model.vocab_size, generator=torch.Generator().manual_seed(2))
    (model(inputs, **documents) * weights).sum().backward()
    expected = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    whole_logits = model(inputs, **documents).detach()
    model.zero_grad()
    model.apply_context_parallel(exchange)
    length = inputs.shape[1] // exchange.degree
    positions = slice(exchange.rank * length, (exchange.rank + 1) * length)
    logits = model(inputs[:, positions], **documents)
    torch.testing.assert_close(logits.detach(), whole_logits[:, positions], rtol=0, atol=1e-5)
    (logits * weights[:, positions]).sum().backward()
    for name, parameter in model.named_parameters():
        dist.all_reduce(parameter.grad)
        torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("style", "overrides"),
    [
        pytest.param(LLAMA_STYLE, {}, id="llama-rope-grouped-heads"),
        pytest.param(GPT2_STYLE, {}, id="gpt2-learned-positions"),
        pytest.param(
            GPT2_STYLE, {"document_masking": True, "document_positions": "restart"}, id="gpt2-documents-restarting"
        ),
        pytest.param(
            LLAMA_STYLE, {"document_masking": True, "document_positions": "restart"}, id="llama-documents-restarting"
        ),
    ],
)
def test_the_model_on_two_chunks_matches_the_whole_sequence(style, overrides):
    run_on_ranks(_model_on_this_rank, 2, style, overrides)


def _load(*overrides: str) -> TrainingAppConfig:
    cp2 = [f"{key}={value}" for key, value in CP2.items()]
    return load_config(TINY_CONFIG, TrainingAppConfig, [*cp2, *overrides], registry=make_registry())[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.sequence_length=127", r"training.sequence_length \(127\) is not divisible by parallelism.config"),
        (
            "evaluation.evaluators=[{type_hint: BitsPerByte, config: {split: val}}]",
            r"evaluation.evaluators cannot run with parallelism.config.context_parallel_degree 2",
        ),
    ],
)
def test_what_context_parallelism_does_not_run_is_refused_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(override)


@pytest.mark.parametrize(
    ("tensor_parallel", "overrides", "message"),
    [
        (1, {"n_head_kv": 1}, r"model.config.n_head_kv \(1\) is not divisible by parallelism.config.context_"),
        (2, {}, r"n_head_kv \(2\) is not divisible by parallelism.config.context_parallel_degree \(2\) × tensor_"),
        (1, {"n_head": 3, "n_head_kv": 3, "dim": 48}, r"n_head \(3\) is not divisible.*n_head_kv \(3\) is not"),
    ],
)
def test_heads_that_do_not_split_over_the_ranks_are_refused(tensor_parallel, overrides, message):
    model = build(LLAMA_STYLE, device="meta", **overrides)
    exchange = UlyssesExchange(2, 0, tensor_parallel, group=lambda: pytest.fail("no group is needed to refuse"))
    with pytest.raises(ConfigError, match=message):
        model.apply_context_parallel(exchange)


def test_a_model_without_the_hook_is_refused_only_for_context_parallelism(monkeypatch):
    model = build(LLAMA_STYLE, device="meta")
    monkeypatch.setattr(type(model), "apply_context_parallel", None)
    assert as_language_model(model) is model
    with pytest.raises(ConfigError, match=r"lacks apply_context_parallel\(exchange\), which parallelism.config.con"):
        as_language_model(model, context_parallel=True)


# End to end. The tiny Llama (rope, 4 query heads sharing 2 key/value heads, tied embeddings), 32 positions.
LLAMA = {"training.max_steps": 20, "training.eval_interval": 10, "checkpointing.every_n_steps": 10}
GPT2 = {**LLAMA, "model.config.positional": "learned", "model.config.n_head_kv": "null", "model.config.bias": "true",
        "model.config.norm": "{type_hint: LayerNorm, config: {}}",
        "model.config.mlp": "{type_hint: GELUMLP, config: {hidden_dim: 256}}"}  # fmt: skip
# For cp2 × tp2: heads that split four ways (8 query heads sharing 4 key/value heads) and a vocabulary two
# tensor-parallel ranks can split.
LLAMA_8_HEADS = {**LLAMA, "model.config.n_head": 8, "model.config.n_head_kv": 4, "model.config.vocab_size": 258}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_byte_corpus(tmp_path_factory.mktemp("cp_corpus"))


@pytest.fixture(scope="module")
def llama_one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("llama_1") / "run", 1, **LLAMA)


@pytest.fixture(scope="module")
def llama_cp2(corpus, tmp_path_factory) -> tuple[Path, dict]:
    skip_unless_gloo_sharding_works()  # FSDP2 shards over the cp ranks
    output_dir = tmp_path_factory.mktemp("llama_cp2") / "run"
    return output_dir, run_losses(corpus, output_dir, 2, **LLAMA, **CP2)


@pytest.mark.slow
@pytest.mark.cross_version
def test_cp2_llama_with_rope_and_grouped_query_heads_matches_one_process(llama_one_process, llama_cp2):
    assert largest_difference(llama_one_process, llama_cp2[1]) < 1e-5


@pytest.mark.slow
def test_cp2_gpt2_with_learned_positions_restarting_in_masked_documents_matches_one_process(corpus, tmp_path):
    skip_unless_gloo_sharding_works()
    # Each chunk's learned positions come from the whole sample's documents, and so does the mask.
    documents = {"model.config.document_masking": "true", "model.config.document_positions": "restart"}
    one_process = run_losses(corpus, tmp_path / "one", 1, **GPT2, **documents)
    assert largest_difference(one_process, run_losses(corpus, tmp_path / "cp2", 2, **GPT2, **documents, **CP2)) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_cp2_with_compiled_checkpointed_blocks_matches_one_process_plain(corpus, tmp_path, llama_one_process):
    skip_unless_gloo_sharding_works()
    # The all-to-alls run between compiled graphs, and again when the backward recomputes each block.
    wrapped = {"training.compile": "true", "training.activation_checkpointing": "full"}
    cp2 = run_losses(corpus, tmp_path / "run", 2, **LLAMA, **CP2, **wrapped)
    assert largest_difference(llama_one_process, cp2) < 1e-5


@pytest.mark.slow
def test_cp2_by_dp2_on_four_ranks_matches_one_process(corpus, tmp_path, llama_one_process):
    skip_unless_gloo_sharding_works()
    # Two data-parallel ranks of 2 samples each: the one process's global batch of 4.
    cp2_dp2 = run_losses(corpus, tmp_path / "run", 4, **LLAMA, **CP2, **{"training.micro_batch_size": 2})
    assert largest_difference(llama_one_process, cp2_dp2) < 1e-5


@pytest.mark.slow
def test_cp2_by_tp2_on_four_ranks_matches_one_process(corpus, tmp_path):
    skip_unless_gloo_sharding_works()
    one_process = run_losses(corpus, tmp_path / "one", 1, **LLAMA_8_HEADS)
    tp2 = {"parallelism.config.tensor_parallel_degree": 2}
    assert (
        largest_difference(one_process, run_losses(corpus, tmp_path / "run", 4, **LLAMA_8_HEADS, **CP2, **tp2)) < 1e-5
    )


# torch 2.11 resumes the cp2 checkpoint on one process 1.4e-5 off at worst (2.13: 2.4e-7); the same layout resumes
# bit for bit on both.
RESUMED_TOLERANCE = 1e-5 if torch_release() >= (2, 13) else 2e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_a_cp2_checkpoint_resumes_on_one_process_and_exactly_on_cp2(tmp_path, corpus, llama_one_process, llama_cp2):
    cp2_dir, cp2 = llama_cp2
    branch = {"checkpointing.branch_from": cp2_dir / "checkpoints" / "step_10"}
    on_one = run_losses(corpus, tmp_path / "one", 1, **LLAMA, **branch)
    assert largest_difference(steps_after(llama_one_process, 10), steps_after(on_one, 10)) < RESUMED_TOLERANCE
    on_cp2 = run_losses(corpus, tmp_path / "cp2", 2, **LLAMA, **CP2, **branch)
    assert steps_after(on_cp2, 10) == steps_after(cp2, 10)
