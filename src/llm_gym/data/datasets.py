"""Training samples from tokenized corpora: packed fixed-length windows, and weighted blends of them."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from llm_gym.config.component import Component
from llm_gym.data.indexed import IndexedDataset
from llm_gym.data.permutation import seeded_permutation
from llm_gym.errors import ConfigError


class PackedDataset(torch.utils.data.Dataset):
    """The corpus as one token stream (documents back to back, each ending in EOS), cut into samples.

    Sample ``i`` is tokens ``[i·L, (i+1)·L + 1)`` for ``L = sequence_length``: inputs and targets shifted by
    one, so consecutive samples share one token and no token is wasted. Reads go to the memory map.
    """

    def __init__(self, path_prefix: str | os.PathLike, sequence_length: int):
        self.path_prefix, self.sequence_length = Path(path_prefix), sequence_length
        self._corpus = IndexedDataset(path_prefix)
        self._num_samples = (self._corpus.num_tokens - 1) // sequence_length
        if self._num_samples < 1:
            raise ConfigError(
                f"{path_prefix}: {self._corpus.num_tokens} tokens are too few for one sample of "
                f"sequence_length {sequence_length} + 1"
            )

    def __len__(self) -> int:
        return self._num_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._num_samples:
            raise IndexError(f"sample {index} out of range for {self._num_samples} samples")
        start = index * self.sequence_length
        window = self._corpus.tokens[start : start + self.sequence_length + 1]
        return torch.from_numpy(window.astype(np.int64))


class PackedDatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: Path = Field(description="PREFIX of a tokenized PREFIX.bin + PREFIX.idx")
    sequence_length: PositiveInt


class BlendedDataset(torch.utils.data.Dataset):
    """Samples drawn from several datasets in fixed proportions (Megatron-style blending), deterministic.

    Sample ``i`` comes from the dataset that is furthest behind its share after ``i`` samples, so every
    prefix of the blend matches the weights to within one sample per dataset. Within a dataset, samples
    are taken in a seeded random order (a fresh one on each pass), so a small share of a large corpus is
    a random subset of it rather than its beginning.
    """

    def __init__(
        self,
        datasets: list[Callable[[], torch.utils.data.Dataset]],
        weights: list[float],
        num_samples: int | None,
        seed: int,
    ):
        self.datasets = [factory() for factory in datasets]
        lengths = [getattr(dataset, "sequence_length", None) for dataset in self.datasets]
        if len(set(lengths)) > 1:
            raise ConfigError(f"the blended datasets must share one sequence_length, got {lengths}")
        self.sequence_length = lengths[0]
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        sizes = np.array([len(dataset) for dataset in self.datasets], dtype=np.int64)
        # Without a size: as many samples as the blend can take before any dataset repeats.
        self._num_samples = int(num_samples if num_samples is not None else np.min(sizes / self.weights))
        self.seed = seed
        self.dataset_index, self.sample_index = self._blend(sizes)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _blend(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The k-th sample of dataset d is due at (k + 0.5) / w_d; merging the due times in order is the
        # largest-deficit rule (Sainte-Laguë), computed at once.
        counts = np.ceil(self._num_samples * self.weights).astype(np.int64) + 1
        due = np.concatenate(
            [(np.arange(count) + 0.5) / weight for count, weight in zip(counts, self.weights, strict=True)]
        )
        owner = np.repeat(np.arange(len(counts), dtype=np.int16), counts)
        rank = np.concatenate([np.arange(count, dtype=np.int64) for count in counts])
        order = np.argsort(due, kind="stable")[: self._num_samples]
        return owner[order], rank[order]

    def __len__(self) -> int:
        return self._num_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        dataset_id, position = int(self.dataset_index[index]), int(self.sample_index[index])
        dataset = self.datasets[dataset_id]
        epoch, offset = divmod(position, len(dataset))
        return dataset[int(self._order(dataset_id, epoch, len(dataset))[offset])]

    def _order(self, dataset_id: int, epoch: int, size: int) -> np.ndarray:
        """The sample order of one pass over a dataset; the current pass of each dataset is kept."""
        cached_epoch, order = self._orders.get(dataset_id, (None, None))
        if cached_epoch != epoch:
            order = seeded_permutation(size, self.seed, dataset_id, epoch)
            self._orders[dataset_id] = (epoch, order)
        return order


class BlendedDatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[Component("dataset")] = Field(min_length=1)
    weights: list[PositiveFloat] = Field(min_length=1, description="relative; normalised to sum to 1")
    num_samples: PositiveInt | None = Field(None, description="null: as many as fit before any dataset repeats")
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_weight_per_dataset(self) -> "BlendedDatasetConfig":
        if len(self.weights) != len(self.datasets):
            raise ValueError(f"{len(self.weights)} weights for {len(self.datasets)} datasets")
        return self


DATASETS = {
    "PackedDataset": (PackedDataset, PackedDatasetConfig),
    "BlendedDataset": (BlendedDataset, BlendedDatasetConfig),
}
