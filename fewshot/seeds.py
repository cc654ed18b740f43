"""Seeds derived from seeds: independent, reproducible random streams for each purpose of a run."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from a tuple of integers (``(seed, epoch, purpose)``): independent streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
