"""Training samples from tokenized corpora: packed fixed-length windows, and weighted blends of them."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from llm_gym.data.indexed import IndexedDataset, bin_path
from llm_gym.data.permutation import seeded_permutation
from llm_gym.data.prefixes import resolve_prefixes
from llm_gym.errors import ConfigError
from llm_gym.registry import Component
from llm_gym.seeds import Seed

try:
    import resource
except ImportError:  # not on Windows
    resource = None

# Files a process keeps for itself beyond the corpora's maps (libraries, sockets, loader pipes).
_SPARE_OPEN_FILES = 256


class _TokenStream:
    """The tokens of several corpora back to back as one stream, without merging them: each ``.bin`` is
    memory-mapped when first read, so a corpus of thousands of shards holds one open file per shard it read."""

    def __init__(self, prefixes: Sequence[Path], token_counts: Sequence[int], dtype: np.dtype):
        self.prefixes, self.token_counts, self.dtype = list(prefixes), list(token_counts), np.dtype(dtype)
        self.starts = np.concatenate([[0], np.cumsum(self.token_counts, dtype=np.int64)])
        self._maps: dict[int, np.ndarray] = {}
        _allow_open_files(sum(count > 0 for count in self.token_counts))

    @classmethod
    def open(cls, prefixes: Sequence[Path]) -> "_TokenStream":
        """Check every corpus (see :class:`IndexedDataset`) and that they hold tokens of one dtype."""
        counts, dtypes = [], []
        for prefix in prefixes:  # one index open at a time
            corpus = IndexedDataset(prefix)
            counts.append(corpus.num_tokens)
            dtypes.append(corpus.dtype)
        for prefix, dtype in zip(prefixes, dtypes, strict=True):
            if dtype != dtypes[0]:
                raise ConfigError(
                    f"{prefix} holds {dtype} tokens but {prefixes[0]} holds {dtypes[0]}: one dataset cannot read "
                    "corpora of different tokenizers"
                )
        return cls(prefixes, counts, dtypes[0])

    @property
    def num_tokens(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream, as int64."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            end = min(stop, int(self.starts[first + 1]))
            if end > start:
                offset = int(self.starts[first])
                pieces.append(self._tokens(first)[start - offset : end - offset])
            start = end
            first += 1
        return np.concatenate(pieces, dtype=np.int64)

    def _tokens(self, index: int) -> np.ndarray:
        if index not in self._maps:
            self._maps[index] = np.memmap(bin_path(self.prefixes[index]), dtype=self.dtype, mode="r")
        return self._maps[index]

    def __getstate__(self) -> dict:
        # Worker processes map the files again; pickling must not copy the corpus, nor check it again.
        return {"prefixes": self.prefixes, "token_counts": self.token_counts, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefixes"], state["token_counts"], np.dtype(state["dtype"]))


def _allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files (``ulimit -n``) as far as its hard limit allows, if
    ``count`` memory maps need it; refuse a corpus that cannot be kept open."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + _SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ConfigError(
            f"the dataset reads {count:,} corpus files, but this process may open at most {hard:,} files (ulimit -Hn); "
            "raise the limit, or merge the shards first with llm_gym data merge"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class PackedDataset(torch.utils.data.Dataset):
    """The corpus as one token stream (documents back to back, each ending in EOS), cut into samples.

    Sample ``i`` is tokens ``[i·L, (i+1)·L + 1)`` for ``L = sequence_length``: inputs and targets shifted by
    one, so consecutive samples share one token and no token is wasted. Reads go to the memory maps.

    ``path_prefix`` may name several corpora (a list, glob patterns; see :mod:`llm_gym.data.prefixes`): their
    tokens are one stream in that order, sample for sample what the corpus merged from them gives.
    """

    def __init__(self, config: "PackedDatasetConfig"):
        path_prefix, sequence_length = config.path_prefix, config.sequence_length
        patterns = [path_prefix] if isinstance(path_prefix, str) else list(path_prefix)
        self.path_prefixes, self.sequence_length = resolve_prefixes(patterns), sequence_length
        self._tokens = _TokenStream.open(self.path_prefixes)
        self._num_samples = (self._tokens.num_tokens - 1) // sequence_length
        if self._num_samples < 1:
            named = self.path_prefixes[0] if len(self.path_prefixes) == 1 else f"{len(self.path_prefixes)} corpora"
            raise ConfigError(
                f"{named}: {self._tokens.num_tokens} tokens are too few for one sample of "
                f"sequence_length {sequence_length} + 1"
            )

    def __len__(self) -> int:
        return self._num_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._num_samples:
            raise IndexError(f"sample {index} out of range for {self._num_samples} samples")
        start = index * self.sequence_length
        return torch.from_numpy(self._tokens.read(start, start + self.sequence_length + 1))


def _as_text(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PrefixText = Annotated[str, BeforeValidator(_as_text)]
"""A prefix as written (a trailing slash kept for the check that refuses it), also given as a ``Path``."""


class PackedDatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: PrefixText | Annotated[list[PrefixText], Field(min_length=1)] = Field(
        description="PREFIX of a tokenized PREFIX.bin + PREFIX.idx, a glob pattern of prefixes "
        "(data/tok/train-*-of-00064), or a list of these: read back to back in that order, each glob's matches "
        "sorted; relative to the working directory; kept as written, so a trailing / (a directory) is refused"
    )
    sequence_length: PositiveInt


class BlendedDataset(torch.utils.data.Dataset):
    """Samples drawn from several datasets in fixed proportions (Megatron-style blending), deterministic.

    The ``j``-th sample of dataset ``d`` is due at ``(j + ½) / w_d`` and the blend takes samples in order of
    due time (Sainte-Laguë apportionment), so every prefix of the blend follows the weights: dataset ``d``
    is off its share by at most ``½ + k·w_d / 2`` samples among ``k`` datasets. Within a dataset, samples are
    taken in a seeded random order (a fresh one on each pass), so a small share of a large corpus is a
    random subset of it rather than its beginning. Which sample each index reads is computed once, here.
    """

    def __init__(self, config: "BlendedDatasetConfig", datasets: list[Callable[[], torch.utils.data.Dataset]]):
        """``datasets`` are ``config.datasets``, as factories."""
        weights, num_samples, seed = config.weights, config.num_samples, config.seed
        self.datasets = [factory() for factory in datasets]
        lengths = [getattr(dataset, "sequence_length", None) for dataset in self.datasets]
        if len(set(lengths)) > 1:
            raise ConfigError(f"the blended datasets must share one sequence_length, got {lengths}")
        self.sequence_length = lengths[0]
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.seed = seed
        sizes = np.array([len(dataset) for dataset in self.datasets], dtype=np.int64)
        if num_samples is None:
            # As many samples as the blend takes before any dataset repeats. A dataset d has taken at least
            # (i - k/2)·w_d - ½ of the first i samples, so a blend of this length holds a repeat.
            with_a_repeat = int(np.ceil(np.min((sizes + 1.5) / self.weights) + len(sizes) / 2))
            dataset_index, position, sample_index = self._blend(with_a_repeat, sizes)
            num_samples = int(np.flatnonzero(position >= sizes[dataset_index])[0])
            dataset_index, sample_index = dataset_index[:num_samples], sample_index[:num_samples]
        else:
            dataset_index, _, sample_index = self._blend(num_samples, sizes)
        self.dataset_index, self.sample_index = dataset_index, sample_index

    def _blend(self, num_samples: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per blended sample: its dataset, its position in that dataset's stream, the sample it reads."""
        # The num_samples-th due time is below num_samples - 1 + k/2, which bounds every dataset's draws.
        candidates = np.floor((num_samples + len(sizes) / 2) * self.weights + 0.5).astype(np.int64) + 1
        due = np.concatenate(
            [(np.arange(count) + 0.5) / weight for count, weight in zip(candidates, self.weights, strict=True)]
        )
        owner = np.repeat(np.arange(len(candidates), dtype=np.int16), candidates)
        position = np.concatenate([np.arange(count, dtype=np.int64) for count in candidates])
        reads = np.concatenate(
            [
                self._shuffled_passes(dataset_id, int(size), int(count))
                for dataset_id, (size, count) in enumerate(zip(sizes, candidates, strict=True))
            ]
        )
        order = np.argsort(due, kind="stable")[:num_samples]
        return owner[order], position[order], reads[order]

    def _shuffled_passes(self, dataset_id: int, size: int, count: int) -> np.ndarray:
        """The first ``count`` samples of one dataset's stream: pass after pass, each in its own seeded order."""
        passes = -(-count // size)
        return np.concatenate([seeded_permutation(size, self.seed, dataset_id, epoch) for epoch in range(passes)])[
            :count
        ]

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.datasets[int(self.dataset_index[index])][int(self.sample_index[index])]


class BlendedDatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[Component("dataset")] = Field(min_length=1)
    weights: list[PositiveFloat] = Field(min_length=1, description="relative; normalised to sum to 1")
    num_samples: PositiveInt | None = Field(None, description="null: as many as fit before any dataset repeats")
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_weight_per_dataset(self) -> "BlendedDatasetConfig":
        if len(self.weights) != len(self.datasets):
            raise ValueError(f"{len(self.weights)} weights for {len(self.datasets)} datasets")
        return self


DATASETS = {
    "PackedDataset": (PackedDataset, PackedDatasetConfig),
    "BlendedDataset": (BlendedDataset, BlendedDatasetConfig),
}
