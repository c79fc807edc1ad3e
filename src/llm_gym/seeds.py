"""The seeds a config takes: every random stream of a run derives from ``experiment.seed``."""

from typing import Annotated

from pydantic import Field

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A config's seed. torch and the data order's permutations take 64 bits, and a rank draws from
``seed + rank``: 63 bits leave room for the ranks."""
