"""Batches for training (endless, resumable, with worker processes) and for evaluation (finite, in order)."""

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, model_validator

from llm_gym.data.collators import IGNORE_INDEX, Batch
from llm_gym.data.samplers import ResumableDistributedSampler
from llm_gym.errors import UserError

Collator = Callable[[list[torch.Tensor]], Batch]


class _MicroBatches:
    """The sampler's endless index stream in lists of ``micro_batch_size``: a batch sampler for torch."""

    def __init__(self, sampler: ResumableDistributedSampler, micro_batch_size: int):
        self.sampler, self.micro_batch_size = sampler, micro_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.sampler)
        while True:
            yield [next(indices) for _ in range(self.micro_batch_size)]


class ResumableDataLoader:
    """Collated micro batches for this rank, forever, over torch's ``DataLoader`` and its worker processes.

    Its state counts the batches handed to the caller, not those that workers prefetched, so a checkpoint
    taken between two steps resumes at exactly the next batch. ``iter()`` continues from that state.
    """

    def __init__(
        self,
        config: "ResumableDataLoaderConfig",
        dataset: torch.utils.data.Dataset,
        sampler: ResumableDistributedSampler,
        collator: Collator,
        micro_batch_size: int,
    ):
        self.dataset, self.sampler, self.collator = dataset, sampler, collator
        self.micro_batch_size, self.num_workers = micro_batch_size, config.num_workers
        self.pin_memory, self.prefetch_factor = config.pin_memory, config.prefetch_factor
        self.consumed_samples = sampler.consumed_samples

    @property
    def samples_per_batch(self) -> int:
        """Global samples one micro batch on every rank takes."""
        return self.micro_batch_size * self.sampler.dp_world_size

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.load_state_dict({"consumed_samples": self.consumed_samples})
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_MicroBatches(self.sampler, self.micro_batch_size),
            collate_fn=self.collator,
            num_workers=self.num_workers,
            # Pinning needs an accelerator; without one it would only warn.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.prefetch_factor,
            # Without a generator of its own, starting the iterator draws the workers' base seed from the
            # global RNG: a resumed run, which restores that RNG and then starts a new iterator, would
            # draw once more than the uninterrupted run and shift every dropout mask after the resume.
            generator=torch.Generator().manual_seed(self.sampler.seed + self.sampler.dp_rank),
        )
        for batch in loader:
            self.consumed_samples += self.samples_per_batch
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed_samples = int(state["consumed_samples"])


class ResumableDataLoaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: NonNegativeInt = 0
    pin_memory: bool = False
    prefetch_factor: PositiveInt | None = None

    @model_validator(mode="after")
    def _prefetch_needs_workers(self) -> "ResumableDataLoaderConfig":
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ValueError("prefetch_factor needs num_workers > 0")
        return self


DATALOADERS = {"DataLoader": (ResumableDataLoader, ResumableDataLoaderConfig)}


def eval_batches(
    dataset: torch.utils.data.Dataset,
    collator: Collator,
    micro_batch_size: int,
    dp_rank: int,
    dp_world_size: int,
    max_samples: int | None,
) -> Iterator[Batch]:
    """The split's first ``max_samples`` samples (all if None) in order, rank ``r`` taking samples ``r, r + W, ...``.

    Which samples are evaluated does not depend on the micro batch size or the number of ranks, so runs that
    differ only in layout report the same losses. Every rank runs equally many forward passes of full micro
    batches, as sharded models and compiled blocks want: rows past a rank's last sample repeat sample 0 with
    every target set to ``IGNORE_INDEX``, so they count no tokens and add no loss. The collator must return
    one row per sample, in order (``targets`` of shape ``[micro_batch_size, ...]``).
    """
    num_samples = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    if num_samples == 0:
        raise UserError("an evaluation dataset has no samples")
    samples_per_rank = math.ceil(num_samples / dp_world_size)
    num_batches = math.ceil(samples_per_rank / micro_batch_size)
    own_samples = range(dp_rank, num_samples, dp_world_size)
    return _eval_batches(dataset, collator, micro_batch_size, own_samples, num_batches)


def _eval_batches(
    dataset: torch.utils.data.Dataset,
    collator: Collator,
    micro_batch_size: int,
    own_samples: range,
    num_batches: int,
) -> Iterator[Batch]:
    for batch_index in range(num_batches):
        indices = own_samples[batch_index * micro_batch_size : (batch_index + 1) * micro_batch_size]
        fillers = micro_batch_size - len(indices)
        batch = collator([dataset[index] for index in indices] + [dataset[0]] * fillers)
        if fillers:
            targets = batch.targets
            is_filler = torch.arange(micro_batch_size, device=targets.device) >= len(indices)
            targets = targets.masked_fill(is_filler.view(-1, *[1] * (targets.dim() - 1)), IGNORE_INDEX)
            batch = dataclasses.replace(batch, targets=targets)
        yield batch
