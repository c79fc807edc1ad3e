"""Batches for training (resumable, with worker prefetch) and evaluation (equal counts on every rank)."""

from itertools import islice
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from llm_gym.config.component import Component
from llm_gym.data.collators import CausalLMCollator
from llm_gym.data.datasets import PackedDataset
from llm_gym.data.loaders import ResumableDataLoader, eval_batches
from llm_gym.errors import UserError
from llm_gym.registry import get_registry

SEQUENCE_LENGTH, MICRO_BATCH = 10, 4


class _DataNodes(BaseModel):
    sampler: Component("sampler")
    collator: Component("collator")
    dataloader: Component("dataloader")


def build_loader(corpus: Path, dp_rank: int = 0, dp_world_size: int = 1, num_workers: int = 0) -> ResumableDataLoader:
    """As the training builder does it, from config nodes."""
    nodes = _DataNodes(
        sampler={"type_hint": "ResumableDistributedSampler", "config": {"seed": 5}},
        collator={"type_hint": "CausalLMCollator", "config": {}},
        dataloader={"type_hint": "DataLoader", "config": {"num_workers": num_workers}},
    )
    registry, dataset = get_registry(), PackedDataset(corpus, SEQUENCE_LENGTH)
    sampler = registry.build_component_by_config(
        nodes.sampler, {"dataset_length": len(dataset), "dp_rank": dp_rank, "dp_world_size": dp_world_size}
    )
    collator = registry.build_component_by_config(nodes.collator)
    return registry.build_component_by_config(
        nodes.dataloader,
        {"dataset": dataset, "sampler": sampler, "collator": collator, "micro_batch_size": MICRO_BATCH},
    )


def inputs_of(batches) -> list[list[list[int]]]:
    return [batch["input_ids"].tolist() for batch in batches]


def test_collator_shifts_targets_by_one():
    samples = [torch.arange(5), torch.arange(10, 15)]
    batch = CausalLMCollator(input_key="x", target_key="y")(samples)
    assert batch["x"].tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert batch["y"].tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]
    assert batch["x"].dtype == torch.long and batch["x"].is_contiguous()


def test_collator_keys_must_differ():
    with pytest.raises(ValidationError, match="must differ"):
        _DataNodes(
            sampler={"type_hint": "ResumableDistributedSampler", "config": {"seed": 0}},
            collator={"type_hint": "CausalLMCollator", "config": {"input_key": "a", "target_key": "a"}},
            dataloader={"type_hint": "DataLoader", "config": {}},
        )


def test_prefetch_factor_needs_workers():
    with pytest.raises(ValidationError, match="prefetch_factor needs num_workers > 0"):
        _DataNodes(
            sampler={"type_hint": "ResumableDistributedSampler", "config": {"seed": 0}},
            collator={"type_hint": "CausalLMCollator", "config": {}},
            dataloader={"type_hint": "DataLoader", "config": {"prefetch_factor": 2}},
        )


def test_batches_follow_the_sampler_and_run_past_an_epoch(counting_corpus: Path):
    loader = build_loader(counting_corpus)
    dataset_length = len(loader.dataset)  # 100 samples: 25 batches an epoch
    batches = list(islice(iter(loader), 30))
    assert all(batch["input_ids"].shape == (MICRO_BATCH, SEQUENCE_LENGTH) for batch in batches)
    firsts = [row[0] // SEQUENCE_LENGTH for batch in inputs_of(batches) for row in batch]
    assert sorted(firsts[:dataset_length]) == list(range(dataset_length))
    assert loader.state_dict()["consumed_samples"] == 30 * MICRO_BATCH


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_counts_yielded_batches_and_resume_continues_exactly(counting_corpus: Path, num_workers: int):
    reference = inputs_of(islice(iter(build_loader(counting_corpus, 1, 2)), 12))

    loader = build_loader(counting_corpus, 1, 2, num_workers)
    batches = iter(loader)
    first = inputs_of(islice(batches, 5))  # workers have prefetched beyond these
    state = loader.state_dict()
    assert state["consumed_samples"] == 5 * MICRO_BATCH * 2
    assert state["seed"] == 5

    resumed = build_loader(counting_corpus, 1, 2, num_workers)
    resumed.load_state_dict(state)
    assert first + inputs_of(islice(iter(resumed), 7)) == reference


def test_eval_batches_equal_on_every_rank_disjoint_and_in_order(counting_corpus: Path):
    dataset, collator = PackedDataset(counting_corpus, SEQUENCE_LENGTH), CausalLMCollator()
    per_rank = [inputs_of(eval_batches(dataset, collator, 3, rank, 3, None)) for rank in range(3)]
    assert [len(batches) for batches in per_rank] == [11, 11, 11]  # 100 samples // 9 per step
    firsts = sorted(row[0] // SEQUENCE_LENGTH for batches in per_rank for batch in batches for row in batch)
    assert firsts == list(range(99))
    assert [row[0] // SEQUENCE_LENGTH for row in per_rank[1][0]] == [1, 4, 7]
    assert len(list(eval_batches(dataset, collator, 3, 0, 3, max_batches=2))) == 2


def test_eval_split_smaller_than_one_batch(counting_corpus: Path):
    dataset = PackedDataset(counting_corpus, SEQUENCE_LENGTH)
    with pytest.raises(UserError, match="100 samples is smaller than one batch across ranks"):
        eval_batches(dataset, CausalLMCollator(), 51, 0, 2, None)
