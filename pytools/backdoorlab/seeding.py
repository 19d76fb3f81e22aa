"""Random streams keyed by integers, independent of any global RNG.

Training draws several per-epoch streams (the shuffle, the augmentation parameters); each must
depend only on its key — ``(seed, epoch)`` plus a salt that tells the streams apart — so a run is
reproducible and a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys`` through NumPy's ``SeedSequence`` (which mixes
    them, so neighbouring keys give unrelated streams)."""
    if not keys:
        raise ValueError("keyed_generator needs at least one key")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    g = torch.Generator()
    g.manual_seed(int(state >> 1))  # manual_seed takes a signed 64-bit value
    return g
