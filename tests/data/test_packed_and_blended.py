"""Packed samples from the token stream, and blends of datasets in fixed proportions, built from config."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_helpers import write_corpus
from pydantic import ValidationError

from llm_gym.assembly import make_registry
from llm_gym.data.datasets import BlendedDataset, BlendedDatasetConfig, PackedDataset, PackedDatasetConfig
from llm_gym.errors import ConfigError
from llm_gym.registry import Component

REGISTRY = make_registry()


def build(node: dict):
    return REGISTRY.build_component_by_config(REGISTRY.validate(Component("dataset"), node))


def packed(prefix: Path, sequence_length: int) -> dict:
    return {"type_hint": "PackedDataset", "config": {"path_prefix": str(prefix), "sequence_length": sequence_length}}


def test_packed_samples_are_overlapping_windows_of_the_stream(counting_corpus: Path):
    dataset = build(packed(counting_corpus, 100))
    assert isinstance(dataset, PackedDataset)
    assert len(dataset) == (1001 - 1) // 100
    for index in (0, 4, len(dataset) - 1):
        sample = dataset[index]
        assert sample.dtype == torch.long and sample.shape == (101,)
        assert sample.tolist() == list(range(index * 100, index * 100 + 101))  # crosses document ends
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_packed_dataset_too_short_for_one_sample(tmp_path: Path):
    prefix = write_corpus(tmp_path / "short", [[1, 2, 3]])
    with pytest.raises(ConfigError, match="3 tokens are too few for one sample of sequence_length 3"):
        PackedDataset(PackedDatasetConfig(path_prefix=prefix, sequence_length=3))


def test_packed_dataset_survives_pickling_without_copying_tokens(counting_corpus: Path):
    import pickle

    dataset = PackedDataset(PackedDatasetConfig(path_prefix=counting_corpus, sequence_length=100))
    payload = pickle.dumps(dataset)
    assert len(payload) < 2000
    assert pickle.loads(payload)[3].tolist() == dataset[3].tolist()


def _three_corpora(tmp_path: Path) -> list[dict]:
    # Each corpus holds one repeated token, so a sample tells which corpus it came from.
    nodes = []
    for token, num_tokens in ((1, 2001), (2, 801), (3, 20001)):
        prefix = write_corpus(tmp_path / f"c{token}", [[token] * num_tokens])
        nodes.append(packed(prefix, 10))
    return nodes


def blend_node(nodes: list[dict], weights: list[float], num_samples=None, seed=0) -> dict:
    return {
        "type_hint": "BlendedDataset",
        "config": {"datasets": nodes, "weights": weights, "num_samples": num_samples, "seed": seed},
    }


def test_blend_proportions_hold_in_total_and_in_every_prefix(tmp_path: Path):
    weights = [0.5, 0.2, 0.3]
    blend = build(blend_node(_three_corpora(tmp_path), weights, num_samples=1000))
    assert isinstance(blend, BlendedDataset) and len(blend) == 1000
    sources = [int(blend[i][0]) for i in range(len(blend))]
    assert Counter(sources) == {1: 500, 2: 200, 3: 300}
    for prefix in (7, 50, 333):
        counts = Counter(sources[:prefix])
        for token, weight in zip((1, 2, 3), weights, strict=True):
            assert abs(counts[token] - weight * prefix) <= 1


def test_blend_draws_a_seeded_random_subset_of_each_dataset(tmp_path: Path):
    prefix = write_corpus(tmp_path / "counting", [list(range(10001))])
    nodes = [packed(prefix, 10), packed(write_corpus(tmp_path / "other", [[0] * 1001]), 10)]
    blend = build(blend_node(nodes, [1, 1], num_samples=100, seed=3))
    firsts = [int(blend[i][0]) for i in range(0, 100, 2)]
    assert firsts != sorted(firsts)  # not the start of the corpus in order
    assert len(set(firsts)) == len(firsts)
    again = build(blend_node(nodes, [1, 1], num_samples=100, seed=3))
    assert all(torch.equal(blend[i], again[i]) for i in range(100))
    other_seed = build(blend_node(nodes, [1, 1], num_samples=100, seed=4))
    assert any(not torch.equal(blend[i], other_seed[i]) for i in range(100))


def test_blend_without_size_stops_before_any_dataset_repeats(tmp_path: Path):
    nodes = _three_corpora(tmp_path)  # 200, 80 and 2000 samples
    blend = build(blend_node(nodes, [0.5, 0.2, 0.3]))
    assert len(blend) == 400  # the first corpus runs out first: 200 / 0.5
    assert Counter(int(blend[i][0]) for i in range(len(blend)))[1] == 200


class _Indices(torch.utils.data.Dataset):
    """A dataset whose sample ``i`` is ``(its id, i)``: blends of it show which sample each index reads."""

    sequence_length = 4

    def __init__(self, dataset_id: int, size: int):
        self.dataset_id, self.size = dataset_id, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, int]:
        assert 0 <= index < self.size
        return self.dataset_id, index


def blend_of_sizes(sizes, weights, num_samples=None, seed=0) -> BlendedDataset:
    factories = [lambda d=d, size=size: _Indices(d, int(size)) for d, size in enumerate(sizes)]
    # Built directly from factories, so the config's own dataset nodes are not needed: constructed unvalidated.
    config = BlendedDatasetConfig.model_construct(
        datasets=[], weights=list(weights), num_samples=num_samples, seed=seed
    )
    return BlendedDataset(config, factories)


def test_every_prefix_of_a_blend_stays_within_its_stated_distance_of_the_weights():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 12))
        weights = rng.dirichlet(np.ones(k) * rng.choice([0.1, 1.0, 10.0])) + 1e-3
        blend = blend_of_sizes([50] * k, weights, num_samples=int(rng.integers(1, 400)))
        share = weights / weights.sum()
        counts = np.eye(k)[blend.dataset_index].cumsum(axis=0)
        ideal = np.arange(1, len(blend) + 1)[:, None] * share
        assert (np.abs(counts - ideal) <= 0.5 + k * share / 2 + 1e-9).all()


def test_a_blend_without_size_is_the_longest_that_repeats_no_sample():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 6))
        sizes, weights = rng.integers(1, 60, k), rng.dirichlet(np.ones(k)) + 1e-3
        blend = blend_of_sizes(sizes, weights)
        reads = [blend[i] for i in range(len(blend))]
        assert len(set(reads)) == len(reads)
        one_more = blend_of_sizes(sizes, weights, num_samples=len(blend) + 1)
        assert (np.bincount(one_more.dataset_index, minlength=k) > sizes).any()


def test_each_pass_over_a_blended_dataset_is_a_fresh_permutation():
    blend = blend_of_sizes([10, 10], [1, 1], num_samples=60)  # three passes over each
    reads = [blend[i][1] for i in range(60) if blend[i][0] == 0]
    passes = [reads[start : start + 10] for start in (0, 10, 20)]
    assert all(sorted(one_pass) == list(range(10)) for one_pass in passes)
    assert len({tuple(one_pass) for one_pass in passes}) == 3


def test_blend_config_errors(tmp_path: Path):
    nodes = _three_corpora(tmp_path)
    with pytest.raises(ValidationError, match="2 weights for 3 datasets"):
        REGISTRY.validate(Component("dataset"), blend_node(nodes, [1, 1]))
    mixed = [nodes[0], {**nodes[1], "config": {**nodes[1]["config"], "sequence_length": 20}}]
    with pytest.raises(ConfigError, match="share one sequence_length"):
        build(blend_node(mixed, [1, 1]))
    assert np.isclose(build(blend_node(nodes, [2, 2, 4], num_samples=8)).weights, [0.25, 0.25, 0.5]).all()
