"""Pipeline parallelism: how the blocks are cut, what is refused, and real runs under torchrun on gloo against
one process with the same global batch (fp32, 20 steps).

Parity of the losses per step is what proves the gradients right (gloo's AVG reduction can be wrong, torch
issue 162338): an update that is wrong anywhere shows in the next steps' losses.
"""

from pathlib import Path

import pytest
import torch

from distributed import skip_unless_gloo_sharding_works
from experiment_runs import TINY_CONFIG, largest_difference, llm_gym, run_losses, steps_after, write_byte_corpus
from llm_gym.assembly import make_registry
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError, UserError
from llm_gym.parallel.distributed import DistributedEnvironment, torch_release
from llm_gym.parallel.pipeline import stage_blocks, stages_of_rank
from llm_gym.parallel.strategies import FSDP2, PIPELINING_MIN_TORCH, FSDP2Config
from llm_gym.training.builder import build_model_on_meta

PIPELINING_WORKS = torch_release() >= PIPELINING_MIN_TORCH
pytestmark = pytest.mark.skipif(not PIPELINING_WORKS, reason="llm_gym refuses pipeline parallelism on this torch")
PP = "parallelism.config.pipeline_parallel_degree"
# The tiny Llama (4 blocks; rope, grouped-query heads) with a vocabulary two tensor-parallel ranks can split, and
# 2 micro batches a step: the pipeline's microbatches.
LLAMA = {"model.config.vocab_size": 258, "training.max_steps": 20, "training.eval_interval": 10,
         "checkpointing.every_n_steps": 10, "training.gradient_accumulation_steps": 2}  # fmt: skip
UNTIED = {**LLAMA, "model.config.tie_embeddings": "false"}
PP2 = {PP: 2}
# Two data-parallel ranks of 2 samples each: the one process's global batch of 4 × 2.
DP2 = {"training.micro_batch_size": 2}


def _load(*overrides: str) -> TrainingAppConfig:
    return load_config(TINY_CONFIG, TrainingAppConfig, [f"{PP}=2", *overrides], registry=make_registry())[0]


def _strategy(world_size: int, rank: int = 0, **config: object) -> FSDP2:
    return FSDP2(FSDP2Config(**config), DistributedEnvironment(rank, rank, world_size, world_size, torch.device("cpu")))


def test_blocks_are_spread_evenly_the_earlier_stages_taking_the_remainder():
    assert stage_blocks(10, 4, None) == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    assert stage_blocks(4, 2, [1]) == [range(0, 1), range(1, 4)]


@pytest.mark.parametrize(
    ("n_layer", "stages", "points", "message"),
    [
        (2, 4, None, "the model has 2 blocks, fewer than the 4 pipeline stages"),
        (4, 2, [1, 2], r"pipeline_split_points \(\[1, 2\]\) must give 1 block indices below 4"),
        (4, 2, [4], r"pipeline_split_points \(\[4\]\) must give 1 block indices below 4"),
    ],
)
def test_a_cut_that_cannot_be_made_is_refused_with_the_fix(n_layer, stages, points, message):
    with pytest.raises(ConfigError, match=message):
        stage_blocks(n_layer, stages, points)


def test_interleaved_schedules_loop_over_the_ranks_and_zbv_places_stages_in_a_v():
    assert [stages_of_rank(rank, 2, 2, "Interleaved1F1B") for rank in range(2)] == [[0, 2], [1, 3]]
    assert [stages_of_rank(rank, 2, 2, "ZBVZeroBubble") for rank in range(2)] == [[0, 3], [1, 2]]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pipeline_schedule": "1F1B", "pipeline_stages_per_rank": 2}, "the 1F1B schedule runs 1 stage per rank"),
        ({"pipeline_schedule": "Interleaved1F1B", "pipeline_stages_per_rank": 1}, "cannot run the interleaved"),
        ({"pipeline_split_points": [2, 2]}, r"pipeline_split_points \(\[2, 2\]\) must be increasing"),
    ],
)
def test_stages_that_do_not_fit_the_schedule_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        FSDP2Config(**config)


def test_degrees_that_do_not_divide_the_world_size_are_refused():
    with pytest.raises(UserError, match=r"tensor_parallel_degree 2 × pipeline_parallel_degree 2 = 4 must divide"):
        _strategy(6, tensor_parallel_degree=2, pipeline_parallel_degree=2)


def test_the_mesh_puts_pp_outermost_and_each_stage_reads_the_data_parallel_ranks_samples():
    strategy = _strategy(8, tensor_parallel_degree=2, pipeline_parallel_degree=2)
    assert strategy.mesh_shape() == {"pp": 2, "dp_shard": 2, "tp": 2}
    ranks = [_strategy(8, rank, tensor_parallel_degree=2, pipeline_parallel_degree=2) for rank in range(8)]
    assert [strategy.data_parallel_rank for strategy in ranks] == [0, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("evaluation.evaluators=[{type_hint: BitsPerByte, config: {split: val}}]", "evaluation.evaluators"),
        ("training.meta_device_init=true", "training.meta_device_init"),
        ("training.compile=model", "training.compile: model"),
    ],
)
def test_what_pipeline_parallelism_does_not_run_is_refused_when_the_config_loads(override, key):
    with pytest.raises(ConfigError, match=rf"{key} cannot run with parallelism.config.pipeline_parallel_degree 2"):
        _load(override)


def test_a_model_reading_document_ids_cannot_be_cut():
    model = build_model_on_meta(_load("model.config.document_masking=true"), make_registry())
    with pytest.raises(ConfigError, match="the stages pass on only the residual stream, not the documents"):
        model.pipeline_stage(0, 2)


def test_a_tied_embedding_on_both_stages_of_one_rank_is_refused():
    model = build_model_on_meta(_load(), make_registry())
    strategy = _strategy(2, pipeline_parallel_degree=2, pipeline_schedule="ZBVZeroBubble")
    with pytest.raises(ConfigError, match=r"pipeline rank 0 would hold token_embedding\.weight in two of its stages"):
        strategy.pipeline_holders(model)


def test_validate_prints_the_plan_of_llama_1b_on_tp2_by_pp2_and_refuses_an_impossible_layout():
    layout = [f"{PP}=2", "parallelism.config.tensor_parallel_degree=2", "training.device=cuda"]
    command = ["validate", "--config_file_path", "config_files/llama_1b.yaml", "--world_size", "8"]
    result = llm_gym(*command, *layout)
    assert "device mesh (outermost first): pp 2 × dp_shard 2 × tp 2" in result.stdout
    assert "pipeline: 2 stages, 1F1B schedule over 8 microbatches" in result.stdout
    assert "pp rank 0: blocks 0-7; pp rank 1: blocks 8-15" in result.stdout
    impossible = llm_gym(*command, *layout, f"{PP}=3", check=False)
    assert impossible.returncode == 2
    assert "= 6 must divide the world size 8" in impossible.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_byte_corpus(tmp_path_factory.mktemp("pp_corpus"))


@pytest.fixture(scope="module")
def untied_one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("untied_1") / "run", 1, **UNTIED)


@pytest.fixture(scope="module")
def tied_one_process(corpus, tmp_path_factory) -> dict:
    return run_losses(corpus, tmp_path_factory.mktemp("tied_1") / "run", 1, **LLAMA)


@pytest.fixture(scope="module")
def tied_pp2(corpus, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("tied_pp2") / "run"
    return output_dir, run_losses(corpus, output_dir, 2, **LLAMA, **PP2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        "GPipe",
        pytest.param("Interleaved1F1B", marks=pytest.mark.cross_version),
        "LoopedBFS",
        "InterleavedZeroBubble",
        "ZBVZeroBubble",
    ],
)
def test_pp2_with_each_schedule_matches_one_process(corpus, tmp_path, untied_one_process, schedule):
    pp2 = run_losses(corpus, tmp_path / "run", 2, **UNTIED, **PP2, **{"parallelism.config.pipeline_schedule": schedule})
    assert largest_difference(untied_one_process, pp2) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_pp2_1f1b_with_the_embedding_tied_across_stages_matches_one_process(tied_one_process, tied_pp2):
    assert largest_difference(tied_one_process, tied_pp2[1]) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_pp2_by_dp2_on_four_ranks_matches_one_process(corpus, tmp_path, tied_one_process):
    skip_unless_gloo_sharding_works()
    pp2_dp2 = run_losses(corpus, tmp_path / "run", 4, **LLAMA, **PP2, **DP2)
    assert largest_difference(tied_one_process, pp2_dp2) < 1e-5


@pytest.mark.slow
def test_pp2_by_tp2_on_four_ranks_matches_one_process(corpus, tmp_path, tied_one_process):
    tp2 = {"parallelism.config.tensor_parallel_degree": 2}
    pp2_tp2 = run_losses(corpus, tmp_path / "run", 4, **LLAMA, **PP2, **tp2)
    assert largest_difference(tied_one_process, pp2_tp2) < 1e-5


@pytest.mark.slow
@pytest.mark.cross_version
def test_a_pp2_checkpoint_resumes_on_dp2_and_one_process_and_exactly_on_pp2(
    tmp_path, corpus, tied_one_process, tied_pp2
):
    pp2_dir, pp2 = tied_pp2
    branch = {"checkpointing.branch_from": pp2_dir / "checkpoints" / "step_10"}
    expected = steps_after(tied_one_process, 10)
    on_one = run_losses(corpus, tmp_path / "one", 1, **LLAMA, **branch)
    assert largest_difference(expected, steps_after(on_one, 10)) < 1e-5
    on_pp2 = run_losses(corpus, tmp_path / "pp2", 2, **LLAMA, **PP2, **branch)
    assert steps_after(on_pp2, 10) == steps_after(pp2, 10)
    skip_unless_gloo_sharding_works()
    on_dp2 = run_losses(corpus, tmp_path / "dp2", 2, **LLAMA, **DP2, **branch)
    assert largest_difference(expected, steps_after(on_dp2, 10)) < 1e-5
