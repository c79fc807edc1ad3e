"""Seeded permutations that stay the same across numpy versions and machines, and the seeds a config takes."""

from typing import Annotated

import numpy as np
from pydantic import Field

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A config's seed. torch and these permutations take 64 bits, and a rank draws from ``seed + rank``: 63 bits
leave room for the ranks."""


def seeded_permutation(size: int, *seed: int) -> np.ndarray:
    """A permutation of ``range(size)`` determined by the non-negative integers ``seed``.

    Uses numpy's legacy ``RandomState``, whose stream numpy keeps frozen, so a resumed run on another
    installation still sees the same order.
    """
    words = []
    for value in seed:
        words.extend((value & 0xFFFFFFFF, value >> 32 & 0xFFFFFFFF))
    order = np.random.RandomState(words).permutation(size)
    return order.astype(np.int32) if size < 2**31 else order
