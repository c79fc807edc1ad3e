"""Batches for training (endless, resumable, with worker processes) and for evaluation (finite, in order)."""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, model_validator

from llm_gym.data.samplers import ResumableDistributedSampler
from llm_gym.errors import UserError

Collator = Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]


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
        dataset: torch.utils.data.Dataset,
        sampler: ResumableDistributedSampler,
        collator: Collator,
        micro_batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        self.dataset, self.sampler, self.collator = dataset, sampler, collator
        self.micro_batch_size, self.num_workers = micro_batch_size, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.consumed_samples = sampler.consumed_samples

    @property
    def samples_per_batch(self) -> int:
        """Global samples one micro batch on every rank takes."""
        return self.micro_batch_size * self.sampler.dp_world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
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
    max_batches: int | None,
) -> Iterator[dict[str, torch.Tensor]]:
    """An evaluation split in order, rank ``r`` taking samples ``r, r + W, ...``; every rank the same count.

    Samples that do not fill a batch on every rank are left out, so all ranks run equally many steps (as
    sharded models need); ``max_batches`` caps the batches per rank.
    """
    samples_per_batch = micro_batch_size * dp_world_size
    num_batches = len(dataset) // samples_per_batch
    if num_batches == 0:
        raise UserError(
            f"an evaluation dataset of {len(dataset)} samples is smaller than one batch across ranks "
            f"(micro_batch_size {micro_batch_size} × {dp_world_size} ranks)"
        )
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    return _eval_batches(dataset, collator, micro_batch_size, dp_rank, dp_world_size, num_batches)


def _eval_batches(
    dataset: torch.utils.data.Dataset,
    collator: Collator,
    micro_batch_size: int,
    dp_rank: int,
    dp_world_size: int,
    num_batches: int,
) -> Iterator[dict[str, torch.Tensor]]:
    samples_per_batch = micro_batch_size * dp_world_size
    for batch in range(num_batches):
        first = batch * samples_per_batch + dp_rank
        yield collator([dataset[first + k * dp_world_size] for k in range(micro_batch_size)])
