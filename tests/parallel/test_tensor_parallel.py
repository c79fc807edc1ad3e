"""Tensor parallelism end to end: real runs under torchrun on gloo, against one process with the same global batch.

Parity of losses per step over 20 steps (fp32) is what proves the gradients right: gloo's AVG reduction can
be wrong (torch issue 162338), and an update that is wrong anywhere shows in the next steps' losses.
"""

from pathlib import Path

import pytest

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, largest_difference, run_losses, steps_after, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.parallel.distributed import torch_release
from llm_gym.training.builder import build_model_on_meta

# The tiny Llama (rope, 4 query heads sharing 2 key/value heads, tied embeddings) with a vocabulary that two
# ranks can split (the byte tokenizer's 257 ids fit in it).
LLAMA = {"model.config.vocab_size": 258, "training.max_steps": 20, "training.eval_interval": 10,
         "checkpointing.every_n_steps": 10}  # fmt: skip
GPT2 = {**LLAMA, "model.config.positional": "learned", "model.config.n_head_kv": "null", "model.config.bias": "true",
        "model.config.norm": "{type_hint: LayerNorm, config: {}}",
        "model.config.mlp": "{type_hint: GELUMLP, config: {hidden_dim: 256}}"}  # fmt: skip
TP2 = {"parallelism.config.tensor_parallel_degree": 2}
# torch 2.6's loss_parallel logs one step of the tiny GPT-2 2.6e-5 off (step 13 of 20; the steps before and after
# within 1e-6 again, so the update was right and only that loss value lost precision); later releases stay in 1e-6.
GPT2_TOLERANCE = 1e-5 if torch_release() >= (2, 9) else 5e-5


def _load(*overrides: str) -> TrainingAppConfig:
    tp2 = [f"{key}={value}" for key, value in TP2.items()]
    return load_config(TINY_CONFIG, TrainingAppConfig, [*tp2, *overrides], registry=make_registry())[0]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["evaluation.evaluators=[{type_hint: BitsPerByte, config: {split: val}}]"], "evaluation.evaluators"),
        (
            ["training.compile=model", "training.activation_checkpointing=every_k"],
            "training.compile: model with activation_checkpointing",
        ),
    ],
)
def test_what_tensor_parallelism_does_not_run_is_refused_when_the_config_loads(overrides, key):
    with pytest.raises(ConfigError, match=rf"{key} cannot run with parallelism.config.tensor_parallel_degree 2"):
        _load(*overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.config.qk_norm=true"], r"model.config.qk_norm: true cannot run with"),
        (
            ["model.config.mlp={type_hint: GELUMLP, config: {hidden_dim: 129}}"],
            r"model.config.mlp's input layer \(129 features\) is not divisible by",
        ),
    ],
)
def test_a_model_its_plan_cannot_split_is_refused_with_what_does_not_divide(overrides, message):
    model = build_model_on_meta(_load("model.config.vocab_size=258", *overrides), make_registry())
    with pytest.raises(ConfigError, match=message):
        model.tensor_parallel_plan(2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_byte_corpus(tmp_path_factory.mktemp("tp_corpus"))


@pytest.fixture(scope="module")
def llama_one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("llama_1") / "run", 1, **LLAMA)


@pytest.fixture(scope="module")
def llama_tp2(corpus, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("llama_tp2") / "run"
    return output_dir, run_losses(corpus, output_dir, 2, **LLAMA, **TP2)


@pytest.mark.slow
@pytest.mark.cross_version
def test_tp2_llama_with_grouped_query_heads_matches_one_process(llama_one_process, llama_tp2):
    assert largest_difference(llama_one_process, llama_tp2[1]) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_tp2_gpt2_with_learned_positions_and_tied_embeddings_matches_one_process(corpus, tmp_path):
    one_process = run_losses(corpus, tmp_path / "one", 1, **GPT2)
    assert largest_difference(one_process, run_losses(corpus, tmp_path / "tp2", 2, **GPT2, **TP2)) < GPT2_TOLERANCE


@pytest.mark.slow
@pytest.mark.cross_version
def test_tp2_with_compiled_checkpointed_blocks_matches_one_process_plain(corpus, tmp_path, llama_one_process):
    # The first block takes the view of the residual stream that the embedding's DTensor hands on; each block's
    # recomputation runs its compiled forward again (compiling the checkpointed block fails in torch).
    wrapped = {"training.compile": "true", "training.activation_checkpointing": "full"}
    compiled = run_losses(corpus, tmp_path / "run", 2, **LLAMA, **TP2, **wrapped)
    assert largest_difference(llama_one_process, compiled) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_tp2_by_dp2_on_four_ranks_matches_one_process(corpus, tmp_path, llama_one_process):
    skip_unless_gloo_sharding_works()
    # Two data-parallel ranks of 2 samples each: the one process's global batch of 4.
    tp2_dp2 = run_losses(corpus, tmp_path / "run", 4, **LLAMA, **TP2, **{"training.micro_batch_size": 2})
    assert largest_difference(llama_one_process, tp2_dp2) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_a_tp2_checkpoint_resumes_on_one_process_and_dp2_and_exactly_on_tp2(
    tmp_path, corpus, llama_one_process, llama_tp2
):
    tp2_dir, tp2 = llama_tp2
    branch = {"checkpointing.branch_from": tp2_dir / "checkpoints" / "step_10"}
    expected = steps_after(llama_one_process, 10)
    on_one = run_losses(corpus, tmp_path / "one", 1, **LLAMA, **branch)
    assert largest_difference(expected, steps_after(on_one, 10)) < 1e-5
    on_tp2 = run_losses(corpus, tmp_path / "tp2", 2, **LLAMA, **TP2, **branch)
    assert steps_after(on_tp2, 10) == steps_after(tp2, 10)
    skip_unless_gloo_sharding_works()
    # Two data-parallel ranks of 2 samples each: the same global batch.
    on_dp2 = run_losses(corpus, tmp_path / "dp2", 2, **LLAMA, **branch, **{"training.micro_batch_size": 2})
    assert largest_difference(expected, steps_after(on_dp2, 10)) < 1e-5
