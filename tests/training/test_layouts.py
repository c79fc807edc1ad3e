"""Layout planning: the analytical bytes per rank, memory, and what ``validate --suggest_layout`` lists and refuses."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_gym.cli import main
from llm_gym.parallel.layouts import (
    INTER_NODE_WEIGHT,
    Layout,
    ModelFigures,
    StepFigures,
    by_communication,
    layout_problems,
    memory,
    plan_layout,
    traffic,
)

ROOT = Path(__file__).resolve().parents[2]
LLAMA_1B = ROOT / "config_files" / "llama_1b.yaml"
# A 7B-sized decoder: 32 layers of width 4096, 32 heads (8 key/value), untied.
MODEL = ModelFigures(
    n_layer=32, dim=4096, n_head=32, n_head_kv=8, vocab_size=128256, parameters=7_000_000_000,
    block_parameters=200_000_000, block_whole_under_tensor_parallel=8192, outer_whole_under_tensor_parallel=4096,
    tied_embeddings=False, learned_positions=False,
)  # fmt: skip
STEP = StepFigures(sequence_length=4096, micro_batch_size=1, gradient_accumulation_steps=4, compute_bytes=2,
                   reduce_bytes=4, optimizer_state_tensors=2)  # fmt: skip


def test_fsdp_sends_its_stage_parameters_gathered_each_micro_batch_and_reduce_scattered_once():
    sent = traffic(MODEL, STEP, Layout(shard=8)).bytes_by_kind
    ring = 7 / 8
    regathered = MODEL.parameters - MODEL.block_parameters  # backward: all but the last block again
    assert sent["FSDP all-gather"] == pytest.approx(ring * (MODEL.parameters + regathered) * 4 * 2)
    assert sent["FSDP reduce-scatter"] == pytest.approx(ring * MODEL.parameters * 4)
    assert set(sent) == {"FSDP all-gather", "FSDP reduce-scatter"}


def test_tensor_parallel_sends_activations_per_block_and_context_parallel_all_to_alls_per_layer():
    tp = traffic(MODEL, STEP, Layout(tensor_parallel=2, shard=4)).bytes_by_kind
    ring_pass = 0.5 * STEP.micro_batch_tokens * MODEL.dim * 2
    # Per block 4 forward, 2 backward, and 4 projections' input gradients all-reduced (2 passes each); outside: 4.
    assert tp["TP activations"] == pytest.approx(ring_pass * ((4 + 2 + 2) * 32 + 4) * 4)
    cp = traffic(MODEL, STEP, Layout(context_parallel=2, shard=4)).bytes_by_kind
    heads = 2 * 32 + 2 * 8
    assert cp["CP all-to-all"] == pytest.approx(0.5 * STEP.micro_batch_tokens / 2 * heads * 128 * 2 * 2 * 32 * 4)


def test_pipeline_parallel_sends_activations_at_each_stage_boundary():
    sent = traffic(MODEL, STEP, Layout(pipeline_parallel=4, shard=2)).bytes_by_kind
    # 3 boundaries, forward and backward, 4 micro batches, averaged over 4 ranks.
    assert sent["PP activations"] == pytest.approx(2 * 3 / 4 * STEP.micro_batch_tokens * MODEL.dim * 2 * 4)


def test_a_group_across_nodes_weighs_more_and_orders_the_layouts():
    inside = plan_layout(MODEL, STEP, Layout(replicate=2, shard=8), ranks_per_node=8)
    across = plan_layout(MODEL, STEP, Layout(replicate=1, shard=16), ranks_per_node=8)
    assert inside.inter_node_bytes == inside.traffic.bytes_by_kind["HSDP all-reduce"]
    assert across.inter_node_bytes == across.traffic.total
    assert across.weighted_bytes == pytest.approx(INTER_NODE_WEIGHT * across.traffic.total)
    assert by_communication([across, inside]) == [inside, across]


def test_memory_shrinks_with_sharding_tensor_and_context_parallelism():
    whole = memory(MODEL, STEP, Layout())
    sharded = memory(MODEL, STEP, Layout(shard=8))
    assert sharded.state == pytest.approx(whole.state / 8)
    split = memory(MODEL, STEP, Layout(tensor_parallel=2, context_parallel=2, shard=2))
    assert split.activations == pytest.approx(sharded.activations / 4)
    assert split.logits == pytest.approx(sharded.logits / 4)


def test_layouts_that_cannot_split_the_model_say_which_key():
    problems = layout_problems(MODEL, 4096, Layout(tensor_parallel=16, shard=1), ranks_per_node=8)
    assert "model.config.n_head_kv (8) is not divisible by tensor_parallel_degree 16" in problems
    assert any("must divide the 8 ranks of a node" in problem for problem in problems)
    problems = layout_problems(MODEL, 4095, Layout(tensor_parallel=8, context_parallel=1), 8)
    assert problems == []
    problems = layout_problems(MODEL, 4095, Layout(tensor_parallel=8, context_parallel=2), 16)
    assert problems == [
        "model.config.n_head_kv ÷ tensor_parallel_degree (1) is not divisible by context_parallel_degree 2",
        "training.sequence_length (4095) is not divisible by context_parallel_degree 2",
    ]


def _suggest(*args: str):
    return CliRunner().invoke(
        main,
        ["validate", "--config_file_path", str(LLAMA_1B), "training.device=cuda", "--suggest_layout", *args],
    )  # fmt: skip


def _table(output: str) -> list[list[str]]:
    table = output.split("layouts of ")[1].split("\nsent: ")[0].splitlines()
    return [line.split() for line in table[2:]]


def test_suggest_layout_lists_what_fits_fewest_weighted_bytes_first_with_the_reason():
    result = _suggest("--world_size", "8", "--ranks_per_node", "8", "--device_memory_gib", "80")
    assert result.exit_code == 0, result.output
    rows = _table(result.output)
    weighted = [float(row[-1]) for row in rows]
    assert weighted == sorted(weighted) and len(rows) >= 2
    assert all(float(row[-4]) <= 72 for row in rows)  # GiB per rank within 90% of 80
    first = " ".join(rows[0][: rows[0].index(next(cell for cell in rows[0] if cell in ("FSDP2", "HSDP")))])
    assert f"{first} wins: it sends the fewest weighted bytes" in result.output
    assert "use it: parallelism.type_hint=" in result.output
    # The global batch of 8 ranks × 8 micro batch × 8 accumulation stays 512: tp 2 doubles the accumulation.
    assert "global batch of 512 samples" in result.output
    assert not any("tp 2" in " ".join(row) and row[-5] != "16" for row in rows)


def test_suggest_layout_lists_only_what_fits_in_less_memory():
    roomy = _table(_suggest("--world_size", "8", "--ranks_per_node", "8", "--device_memory_gib", "80").output)
    tight = _suggest("--world_size", "8", "--ranks_per_node", "8", "--device_memory_gib", "40")
    assert tight.exit_code == 0, tight.output
    rows = _table(tight.output)
    assert rows and len(rows) <= len(roomy) and all(float(row[-4]) <= 36 for row in rows)
    assert "need more than 90% of 40 GiB" in tight.output


def test_suggest_layout_exits_2_when_nothing_fits_saying_what_would():
    result = _suggest("--world_size", "8", "--ranks_per_node", "8", "--device_memory_gib", "4")
    assert result.exit_code == 2
    assert "no layout of 8 ranks fits 4 GiB per device" in result.stderr
    assert "training.activation_checkpointing=full" in result.stderr


def test_suggest_layout_needs_the_node_and_device_figures():
    result = _suggest("--world_size", "8")
    assert result.exit_code == 2 and "--ranks_per_node and --device_memory_gib" in result.output
