"""Batches for training (resumable, with worker prefetch) and evaluation (equal counts on every rank)."""

from itertools import islice
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.data.collators import IGNORE_INDEX, Batch, CausalLMCollator
from llm_gym.data.datasets import PackedDataset, PackedDatasetConfig
from llm_gym.data.loaders import ResumableDataLoader, eval_batches
from llm_gym.errors import UserError
from llm_gym.registry import Component

SEQUENCE_LENGTH, MICRO_BATCH = 10, 4
REGISTRY = make_registry()


def packed(corpus: Path) -> PackedDataset:
    return PackedDataset(PackedDatasetConfig(path_prefix=corpus, sequence_length=SEQUENCE_LENGTH))


class _DataNodes(BaseModel):
    sampler: Component("sampler")
    collator: Component("collator")
    dataloader: Component("dataloader")


def build_loader(corpus: Path, dp_rank: int = 0, dp_world_size: int = 1, num_workers: int = 0) -> ResumableDataLoader:
    """As the training builder does it, from config nodes."""
    nodes = REGISTRY.validate(
        _DataNodes,
        dict(
            sampler={"type_hint": "ResumableDistributedSampler", "config": {"seed": 5}},
            collator={"type_hint": "CausalLMCollator", "config": {}},
            dataloader={"type_hint": "DataLoader", "config": {"num_workers": num_workers}},
        ),
    )
    registry, dataset = (
        REGISTRY,
        packed(corpus),
    )
    sampler = registry.build_component_by_config(
        nodes.sampler, {"dataset_length": len(dataset), "dp_rank": dp_rank, "dp_world_size": dp_world_size}
    )
    collator = registry.build_component_by_config(nodes.collator)
    return registry.build_component_by_config(
        nodes.dataloader,
        {"dataset": dataset, "sampler": sampler, "collator": collator, "micro_batch_size": MICRO_BATCH},
    )


def inputs_of(batches) -> list[list[list[int]]]:
    return [batch.inputs.tolist() for batch in batches]


def test_collator_shifts_targets_by_one():
    samples = [torch.arange(5), torch.arange(10, 15)]
    batch = CausalLMCollator()(samples)
    assert isinstance(batch, Batch)
    assert batch.inputs.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert batch.targets.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]
    assert batch.inputs.dtype == torch.long and batch.inputs.is_contiguous()
    assert batch.target_tokens() == 8


@pytest.mark.parametrize("keys", [{"input_key": "input_ids", "target_key": "target_ids"}, {"target_key": "labels"}])
def test_the_batch_keys_of_earlier_versions_are_refused_with_what_to_do(keys):
    with pytest.raises(ValidationError, match="input_key and target_key are gone: a batch is a Batch with fields"):
        REGISTRY.validate(Component("collator"), {"type_hint": "CausalLMCollator", "config": keys})


END = 9  # the end-of-document token of the collator tests


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        pytest.param([1, 2, END, 3, 4, END, 5], [0, 0, 0, 1, 1, 1], id="the-token-after-an-end-starts-a-document"),
        pytest.param([1, 2, 3, 4, 5, END], [0, 0, 0, 0, 0], id="a-document-ending-at-the-sample-end"),
        pytest.param([1, 2, 3, 4, END, 5], [0, 0, 0, 0, 0], id="a-document-ending-on-the-last-input"),
        pytest.param([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0], id="no-end-token"),
        pytest.param([1, END, END, END, 2, 3], [0, 0, 1, 2, 3], id="consecutive-end-tokens"),
        pytest.param([END, 1, 2, 3, 4, 5], [0, 1, 1, 1, 1], id="an-end-token-first"),
    ],
)
def test_the_collator_derives_document_ids_from_the_end_token(sample, expected):
    batch = CausalLMCollator(end_of_document_id=END)([torch.tensor(sample), torch.tensor(sample)])
    assert batch.document_ids.tolist() == [expected, expected]
    assert batch.document_ids.dtype == torch.int32
    assert batch.inputs.tolist() == [sample[:-1]] * 2 and batch.targets.tolist() == [sample[1:]] * 2


def test_the_collator_without_an_end_token_carries_no_documents():
    assert CausalLMCollator()([torch.tensor([1, END, 2])]).document_ids is None


def test_a_batch_moves_and_pins_every_tensor_field():
    batch = Batch(
        inputs=torch.zeros(2, 3, dtype=torch.long),
        targets=torch.ones(2, 3, dtype=torch.long),
        document_ids=torch.zeros(2, 3, dtype=torch.int32),
    )
    moved = batch.to(torch.device("meta"))
    assert {moved.inputs.device.type, moved.targets.device.type, moved.document_ids.device.type} == {"meta"}
    assert torch.equal(batch.targets, torch.ones(2, 3, dtype=torch.long))  # a new Batch; the old one is unchanged


def test_prefetch_factor_needs_workers():
    with pytest.raises(ValidationError, match="prefetch_factor needs num_workers > 0"):
        REGISTRY.validate(
            _DataNodes,
            dict(
                sampler={"type_hint": "ResumableDistributedSampler", "config": {"seed": 0}},
                collator={"type_hint": "CausalLMCollator", "config": {}},
                dataloader={"type_hint": "DataLoader", "config": {"prefetch_factor": 2}},
            ),
        )


def test_batches_follow_the_sampler_and_run_past_an_epoch(counting_corpus: Path):
    loader = build_loader(counting_corpus)
    dataset_length = len(loader.dataset)  # 100 samples: 25 batches an epoch
    batches = list(islice(iter(loader), 30))
    assert all(batch.inputs.shape == (MICRO_BATCH, SEQUENCE_LENGTH) for batch in batches)
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


def evaluated_samples(dataset, micro_batch_size: int, world_size: int, max_samples: int | None) -> list[list[int]]:
    """Per rank, its batches' rows, each the first input token's sample index, or None where it counts no target."""
    per_rank = []
    for rank in range(world_size):
        rows = []
        for batch in eval_batches(dataset, CausalLMCollator(), micro_batch_size, rank, world_size, max_samples):
            assert batch.inputs.shape == (micro_batch_size, SEQUENCE_LENGTH)
            for inputs, targets in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
                counted = [target != IGNORE_INDEX for target in targets]
                assert len(set(counted)) == 1  # a row counts all its targets or none
                rows.append(inputs[0] // SEQUENCE_LENGTH if counted[0] else None)
        per_rank.append(rows)
    return per_rank


def test_eval_batches_split_the_samples_in_order_with_equal_batch_counts(counting_corpus: Path):
    dataset = PackedDataset(
        PackedDatasetConfig(path_prefix=counting_corpus, sequence_length=SEQUENCE_LENGTH)
    )  # 100 samples
    per_rank = evaluated_samples(dataset, 3, 3, None)
    assert [len(rows) for rows in per_rank] == [36, 36, 36]  # 12 batches of 3 on every rank
    assert per_rank[1][:3] == [1, 4, 7]
    assert per_rank[0][-3:] == [99, None, None] and per_rank[1][-3:] == [None, None, None]
    assert sorted(row for rows in per_rank for row in rows if row is not None) == list(range(100))


@pytest.mark.parametrize(("micro_batch_size", "world_size"), [(1, 1), (8, 1), (2, 2), (3, 2), (4, 3), (16, 4)])
def test_eval_batches_evaluate_the_same_samples_in_any_layout(counting_corpus: Path, micro_batch_size, world_size):
    """Runs that differ only in micro batch size or ranks must report the same evaluation losses."""
    dataset = packed(counting_corpus)
    for max_samples, expected in [(None, list(range(100))), (10, list(range(10))), (500, list(range(100)))]:
        per_rank = evaluated_samples(dataset, micro_batch_size, world_size, max_samples)
        assert len({len(rows) for rows in per_rank}) == 1  # every rank runs as many forward passes
        assert sorted(row for rows in per_rank for row in rows if row is not None) == expected


def test_eval_batches_with_more_ranks_than_samples(counting_corpus: Path):
    dataset = packed(counting_corpus)
    assert evaluated_samples(dataset, 4, 3, 2) == [[0, None, None, None], [1, None, None, None], [None] * 4]


def test_an_empty_evaluation_split_is_refused():
    with pytest.raises(UserError, match="an evaluation dataset has no samples"):
        eval_batches([], CausalLMCollator(), 2, 0, 1, None)
