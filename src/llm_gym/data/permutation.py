"""Seeded permutations that stay the same across numpy versions and machines."""

import numpy as np


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
