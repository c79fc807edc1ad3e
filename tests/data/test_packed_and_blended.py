"""Packed samples from the token stream, and blends of datasets in fixed proportions, built from config."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_helpers import write_corpus
from pydantic import ValidationError

from llm_gym.assembly import make_registry
from llm_gym.data import datasets as datasets_module
from llm_gym.data.datasets import BlendedDataset, BlendedDatasetConfig, PackedDataset, PackedDatasetConfig
from llm_gym.data.indexed import merge_corpora
from llm_gym.data.prefixes import shard_prefix
from llm_gym.errors import ConfigError, UserError
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


def _shards(tmp_path: Path, sizes: list[int]) -> list[Path]:
    """Corpora of the tokens 0, 1, 2, ... cut into consecutive shards of ``sizes`` tokens (some empty or
    shorter than a sample), each of a few documents."""
    prefixes, start = [], 0
    for index, size in enumerate(sizes):
        tokens = list(range(start, start + size))
        documents = [tokens[cut : cut + 7] for cut in range(0, size, 7)]
        prefixes.append(write_corpus(shard_prefix(tmp_path / "train", index, len(sizes)), documents))
        start += size
    return prefixes


SHARD_SIZES = [40, 0, 3, 111, 1, 0, 64, 25]


@pytest.mark.parametrize("sequence_length", [1, 5, 16, 200])
def test_packed_dataset_over_shards_equals_the_merged_corpus_sample_for_sample(tmp_path: Path, sequence_length: int):
    shards = _shards(tmp_path, SHARD_SIZES)
    merge_corpora(shards, tmp_path / "merged")
    merged = build(packed(tmp_path / "merged", sequence_length))
    over_shards = build(packed(tmp_path / "train-*-of-00008", sequence_length))
    assert over_shards.path_prefixes == shards
    assert len(over_shards) == len(merged) == (sum(SHARD_SIZES) - 1) // sequence_length
    assert all(torch.equal(over_shards[index], merged[index]) for index in range(len(merged)))
    assert over_shards[len(merged) - 1].tolist()[-1] == (len(merged)) * sequence_length


def test_packed_dataset_over_a_list_of_prefixes_and_globs_keeps_the_order_given(tmp_path: Path):
    shards = _shards(tmp_path, [10, 10, 10])
    extra = write_corpus(tmp_path / "extra", [[100, 101, 102, 103, 104]])
    node = packed(tmp_path, 4)
    node["config"]["path_prefix"] = [str(shards[2]), str(extra), str(shards[0])]
    dataset = build(node)
    assert dataset.path_prefixes == [shards[2], extra, shards[0]]
    assert [dataset[index].tolist() for index in range(3)] == [
        [20, 21, 22, 23, 24],
        [24, 25, 26, 27, 28],
        [28, 29, 100, 101, 102],
    ]
    node["config"]["path_prefix"] = [str(extra), str(tmp_path / "train-*")]
    assert build(node).path_prefixes == [extra, *shards]
    node["config"]["path_prefix"] = str(tmp_path / "train-0000[01]-*")  # a subset by glob looks like a lost shard
    with pytest.raises(UserError, match=r"shard 2 missing .* name the shards one by one"):
        build(node)


def test_packed_dataset_over_shards_pickles_small_and_maps_files_as_it_reads(tmp_path: Path):
    import pickle

    _shards(tmp_path, SHARD_SIZES)
    dataset = PackedDataset(PackedDatasetConfig(path_prefix=str(tmp_path / "train-*"), sequence_length=8))
    payload = pickle.dumps(dataset)
    assert len(payload) < 4000
    copy = pickle.loads(payload)
    assert not copy._tokens._maps
    assert copy[5].tolist() == dataset[5].tolist() == list(range(40, 49))
    assert len(copy._tokens._maps) == 2  # only the shards sample 5 spans


def test_packed_dataset_refusals(tmp_path: Path):
    _shards(tmp_path, [10, 10])
    with pytest.raises(UserError, match="no tokenized corpus matches"):
        build(packed(tmp_path / "nothing-*", 4))
    write_corpus(tmp_path / "wide", [[1, 2, 3, 4, 5]], dtype=np.int32)
    node = packed(tmp_path, 2)
    node["config"]["path_prefix"] = [str(tmp_path / "train-*"), str(tmp_path / "wide")]
    with pytest.raises(ConfigError, match=r"holds int32 tokens but .* holds uint16"):
        build(node)
    node["config"]["path_prefix"] = []
    with pytest.raises(ValidationError, match="at least 1 item"):
        REGISTRY.validate(Component("dataset"), node)
    node["config"]["path_prefix"] = [str(tmp_path / "train-*"), str(tmp_path / "train-00000-of-00002")]
    with pytest.raises(UserError, match="named twice"):
        build(node)


def test_thousands_of_shards_raise_the_open_files_limit_or_say_what_to_do(tmp_path: Path, monkeypatch):
    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(datasets_module.resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(datasets_module.resource, "setrlimit", lambda _, pair: limits.update(soft=pair[0]))
    datasets_module._allow_open_files(2000)
    assert limits["soft"] == 2000 + datasets_module._SPARE_OPEN_FILES
    with pytest.raises(
        ConfigError, match=r"reads 5,000 corpus files, but .* at most 4,096 files .* llm_gym data merge"
    ):
        datasets_module._allow_open_files(5000)


def test_blend_over_sharded_datasets(tmp_path: Path):
    shards = _shards(tmp_path, [30, 30])
    other = write_corpus(tmp_path / "other", [[5000] * 61])
    blend = build(blend_node([packed(tmp_path / "train-*", 10), packed(other, 10)], [1, 1], num_samples=10))
    sources = Counter(int(blend[index][0] >= 5000) for index in range(10))
    assert sources == {0: 5, 1: 5} and len(blend.datasets[0].path_prefixes) == len(shards)
