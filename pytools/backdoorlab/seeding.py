"""Random streams keyed by integers, independent of any global RNG.

Training draws several per-epoch streams (the shuffle, the augmentation parameters); each must
depend only on its key — ``(seed, epoch)`` plus a salt that tells the streams apart — so a run is
reproducible and a resumed run sees exactly what an uninterrupted one would.

:func:`check_seed` is the one place that says which seeds the package takes: every consumer of a
seed accepts any integer in ``[0, 2**64)`` (NumPy's ``SeedSequence``, ``torch.manual_seed``, the
native kernels' ``uint64`` seed, the ``seed`` attribute of an HDF5 variant), and nothing larger
(HDF5 has no integer type for ``2**70``; ``torch.manual_seed`` refuses it), so a seed is checked
against that range before any work starts rather than deep inside the work.
"""

from __future__ import annotations

import numpy as np
import torch

#: The largest seed every consumer accepts (an unsigned 64-bit integer).
SEED_MAX = 2**64 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an ``int`` when it is an integer in ``[0, SEED_MAX]``.

    Parameters
    ----------
    seed : int or numpy integer
    name : str
        How the caller calls it in messages (``"--seed"``, ``"seeds[]"``, ...).

    Raises
    ------
    TypeError
        Not an integer (a bool or a float such as ``1.0`` is refused too: a seed is never rounded).
    ValueError
        Negative or above :data:`SEED_MAX`.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be in [0, 2**64 - 1], got {seed}")
    return seed



def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys`` through NumPy's ``SeedSequence`` (which mixes
    them, so neighbouring keys give unrelated streams)."""
    if not keys:
        raise ValueError("keyed_generator needs at least one key")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    g = torch.Generator()
    g.manual_seed(int(state >> 1))  # manual_seed takes a signed 64-bit value
    return g
