"""How the model-parallel degrees compose with each other and with the other switches: HSDP, bfloat16 autocast,
activation checkpointing and torch.compile (each block, or the whole forward). Real runs under torchrun on gloo,
against one process with the same global batch (8 samples: micro batch 4 × 2 accumulation steps, the pipeline's
2 microbatches), 20 steps.

The pairs the degrees' own files test (tp2 × dp2, cp2 × tp2, pp2 × tp2, ...) are not repeated here.
"""

from pathlib import Path

import pytest

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import largest_difference, run_losses, write_byte_corpus
from llm_gym.parallel.distributed import torch_release
from llm_gym.parallel.strategies import PIPELINING_MIN_TORCH

# The tiny Llama (4 blocks; rope, grouped-query heads, tied embeddings) with a vocabulary two tensor-parallel
# ranks can split.
LLAMA = {"model.config.vocab_size": 258, "training.max_steps": 20, "training.eval_interval": 10,
         "checkpointing.every_n_steps": 10, "training.gradient_accumulation_steps": 2}  # fmt: skip
TP2 = {"parallelism.config.tensor_parallel_degree": 2}
CP2 = {"parallelism.config.context_parallel_degree": 2}
PP2 = {"parallelism.config.pipeline_parallel_degree": 2}
# Two replicas of one rank each (shard degree 1) beside the model-parallel degree: 2 samples a micro batch.
HSDP_2x1 = {"parallelism.type_hint": "HSDP", "parallelism.config.replicate_degree": 2,
            "parallelism.config.shard_degree": 1, "training.micro_batch_size": 2}  # fmt: skip
BFLOAT16 = {"parallelism.config.mixed_precision.param_dtype": "bfloat16"}
# bfloat16 keeps 8 bits of mantissa: the same run in another layout sums in another order, and its losses
# differ by a few 1e-3 (torch 2.13: tp2 8.5e-4, cp2 3.9e-3, pp2 5.5e-4), not the 1e-7 of float32.
BFLOAT16_TOLERANCE = 2e-2

needs_pipelining = pytest.mark.skipif(
    torch_release() < PIPELINING_MIN_TORCH, reason="llm_gym refuses pipeline parallelism on this torch"
)
DEGREES = [
    pytest.param(TP2, id="tp2"),
    pytest.param(CP2, id="cp2"),
    pytest.param(PP2, id="pp2", marks=needs_pipelining),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_byte_corpus(tmp_path_factory.mktemp("composition_corpus"))


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("one") / "run", 1, **LLAMA)


@pytest.fixture(scope="module")
def bfloat16_one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("bfloat16_one") / "run", 1, **LLAMA, **BFLOAT16)


@pytest.mark.slow
@pytest.mark.parametrize("degree", DEGREES)
def test_hsdp_replicating_each_model_parallel_degree_on_four_ranks_matches_one_process(
    corpus, tmp_path, one_process, degree
):
    skip_unless_gloo_sharding_works()
    hsdp = run_losses(corpus, tmp_path / "run", 4, **LLAMA, **HSDP_2x1, **degree)
    assert largest_difference(one_process, hsdp) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("degree", DEGREES)
def test_each_model_parallel_degree_in_bfloat16_stays_near_one_process_in_bfloat16(
    corpus, tmp_path, bfloat16_one_process, degree
):
    skip_unless_gloo_sharding_works()
    split = run_losses(corpus, tmp_path / "run", 2, **LLAMA, **BFLOAT16, **degree)
    assert largest_difference(bfloat16_one_process, split) < BFLOAT16_TOLERANCE


@pytest.mark.slow
@needs_pipelining
def test_pp2_by_cp2_on_four_ranks_matches_one_process(corpus, tmp_path, one_process):
    skip_unless_gloo_sharding_works()
    assert largest_difference(one_process, run_losses(corpus, tmp_path / "run", 4, **LLAMA, **PP2, **CP2)) < 1e-5


@pytest.mark.slow
@needs_pipelining
def test_pp2_with_compiled_checkpointed_blocks_matches_one_process_plain(corpus, tmp_path, one_process):
    # Both wrap the whole model's blocks before it is cut into stages.
    wrapped = {"training.compile": "true", "training.activation_checkpointing": "full"}
    assert largest_difference(one_process, run_losses(corpus, tmp_path / "run", 2, **LLAMA, **PP2, **wrapped)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param({"training.micro_batch_size": 2}, id="fsdp2_dp2"),
        pytest.param(TP2, id="tp2"),
        pytest.param({**CP2, "training.activation_checkpointing": "full"}, id="cp2_full_checkpointing"),
    ],
)
def test_the_whole_forward_compiled_matches_one_process_plain(corpus, tmp_path, one_process, layout):
    # compile: model traces the forward across the blocks' FSDP2 gathers, tensor-parallel redistributions and
    # context-parallel all-to-alls, checkpointed blocks included (refused with tensor parallelism).
    skip_unless_gloo_sharding_works()
    compiled = run_losses(corpus, tmp_path / "run", 2, **LLAMA, **layout, **{"training.compile": "model"})
    assert largest_difference(one_process, compiled) < 1e-5
