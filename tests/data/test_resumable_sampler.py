"""The global sample order: deterministic, split among ranks, complete per epoch, and exactly resumable."""

from itertools import islice

import pytest

from llm_gym.data.samplers import ResumableDistributedSampler, ResumableDistributedSamplerConfig

N = 37


def take(sampler: ResumableDistributedSampler, count: int) -> list[int]:
    return list(islice(iter(sampler), count))


def sampler(rank: int = 0, world: int = 1, seed: int = 7, shuffle: bool = True) -> ResumableDistributedSampler:
    config = ResumableDistributedSamplerConfig(seed=seed, shuffle=shuffle)
    return ResumableDistributedSampler(config, dataset_length=N, dp_rank=rank, dp_world_size=world)


def test_same_seed_same_order_other_seed_other_order():
    assert take(sampler(), 3 * N) == take(sampler(), 3 * N)
    assert take(sampler(), N) != take(sampler(seed=8), N)


def test_every_epoch_covers_the_dataset_once_in_a_new_order():
    stream = take(sampler(), 3 * N)
    epochs = [stream[i * N : (i + 1) * N] for i in range(3)]
    assert all(sorted(epoch) == list(range(N)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_without_shuffle_the_order_is_the_dataset_order():
    assert take(sampler(shuffle=False), N + 2) == [*range(N), 0, 1]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_take_disjoint_strides_of_the_global_order(world: int):
    steps = N // world
    global_order = take(sampler(), steps * world)
    per_rank = [take(sampler(rank, world), steps) for rank in range(world)]
    for rank, indices in enumerate(per_rank):
        assert indices == global_order[rank::world]
    flat = [index for indices in per_rank for index in indices]
    assert len(set(flat)) == len(flat)


def test_consumed_samples_counts_global_positions():
    ranks = [sampler(rank, 4) for rank in range(4)]
    iterators = [iter(rank) for rank in ranks]
    for iterator in iterators:
        for _ in range(5):
            next(iterator)
    assert {rank.state_dict()["consumed_samples"] for rank in ranks} == {20}
    assert ranks[0].state_dict() == {"consumed_samples": 20, "seed": 7, "shuffle": True}


@pytest.mark.parametrize("consumed_batches", [0, 3, 9])
def test_resume_in_a_fresh_sampler_continues_exactly(consumed_batches: int):
    world, micro = 2, 4
    uninterrupted = [sampler(rank, world) for rank in range(world)]
    expected = [take(s, (consumed_batches + 5) * micro)[consumed_batches * micro :] for s in uninterrupted]

    first_run = [sampler(rank, world) for rank in range(world)]
    for s in first_run:
        take(s, consumed_batches * micro)
    states = [s.state_dict() for s in first_run]
    resumed = [sampler(rank, world) for rank in range(world)]
    for s, state in zip(resumed, states, strict=True):
        s.load_state_dict(state)
    assert [take(s, 5 * micro) for s in resumed] == expected


def test_resume_from_two_ranks_on_one_with_the_same_global_batch_sees_the_same_steps():
    global_batch, steps_before, steps_after = 8, 6, 8  # crosses the epoch boundary at 37 samples
    two = [sampler(rank, 2) for rank in range(2)]
    per_rank_batch = global_batch // 2
    for s in two:
        take(s, steps_before * per_rank_batch)
    state = two[0].state_dict()
    assert state["consumed_samples"] == steps_before * global_batch

    one = sampler(0, 1)
    one.load_state_dict(state)
    resumed_steps = [set(batch) for batch in _batches(take(one, steps_after * global_batch), global_batch)]

    reference = [sampler(rank, 2) for rank in range(2)]
    streams = [take(s, (steps_before + steps_after) * per_rank_batch) for s in reference]
    reference_steps = [
        set(a) | set(b)
        for a, b in zip(_batches(streams[0], per_rank_batch), _batches(streams[1], per_rank_batch), strict=True)
    ][steps_before:]
    assert resumed_steps == reference_steps


def test_skipping_far_ahead_is_immediate():
    s = sampler(1, 2)
    s.load_state_dict({"consumed_samples": 10**12})
    assert take(s, 1) == [s.index_at(10**12 + 1)]


def _batches(stream: list[int], size: int) -> list[list[int]]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]
