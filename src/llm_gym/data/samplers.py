"""The order in which training samples are seen: one global sequence, shared out among data-parallel ranks.

Global position ``p`` (0, 1, 2, ... over the whole run) is sample ``perm_e[p mod N]`` with ``e = p div N``
and ``perm_e`` the permutation of epoch ``e`` drawn from ``(seed, e)``. Rank ``r`` of ``W`` takes the
positions with ``p mod W = r``. A global batch that is a multiple of ``W`` therefore holds the same samples
for any number of ranks, and resuming needs only the count of positions consumed, in O(1).
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from llm_gym.data.permutation import seeded_permutation
from llm_gym.seeds import Seed


class ResumableDistributedSampler:
    """An endless stream of sample indices for one data-parallel rank, resumable at any consumed count.

    ``consumed_samples`` counts global positions (all ranks together) already handed out: after this rank
    has yielded ``k`` indices from a start ``c``, it is ``c + k·W``.
    """

    def __init__(
        self, config: "ResumableDistributedSamplerConfig", dataset_length: int, dp_rank: int, dp_world_size: int
    ):
        if dataset_length < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_world_size})")
        self.dataset_length, self.dp_rank, self.dp_world_size = dataset_length, dp_rank, dp_world_size
        self.seed, self.shuffle = config.seed, config.shuffle
        self.consumed_samples = 0
        self._epoch_order: tuple[int, np.ndarray | None] = (-1, None)

    def index_at(self, position: int) -> int:
        """The sample at global position ``position``."""
        epoch, offset = divmod(position, self.dataset_length)
        if not self.shuffle:
            return offset
        if self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, seeded_permutation(self.dataset_length, self.seed, epoch))
        return int(self._epoch_order[1][offset])

    def __iter__(self) -> Iterator[int]:
        start, world = self.consumed_samples, self.dp_world_size
        # The first position at or after the start that belongs to this rank; ranks cover [start, start + W).
        position = start + (self.dp_rank - start) % world
        while True:
            index = self.index_at(position)
            self.consumed_samples += world
            yield index
            position += world

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["consumed_samples"]`` global positions.

        The order comes from this sampler's configured ``seed``; a checkpoint's seed is informational, so a
        deliberate config change (another seed) takes effect instead of being overruled by the checkpoint.
        """
        self.consumed_samples = int(state["consumed_samples"])


class ResumableDistributedSamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: Seed
    shuffle: bool = True


SAMPLERS = {"ResumableDistributedSampler": (ResumableDistributedSampler, ResumableDistributedSamplerConfig)}
