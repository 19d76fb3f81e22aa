"""Tiny generated variants and trained models shared by the model/training/activation tests.

Everything is generated (``datasets_gen.toy.make_toy_variant``: coloured shapes, a yellow
square trigger), small enough that a GTSRB CNN trains in a few seconds on two CPU cores.
:func:`write_raw_split` writes a bare HDF5 split by hand, for tests of malformed or foreign files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from datasets_gen.toy import make_toy_variant

# The paper's GTSRB trigger (4x4 yellow square in the image centre); half of the source class
# poisoned, so the backdoor is learnt within the few steps a test can afford.
TOY_TRIGGER = "square:4:yellow@center"
TOY_KW = dict(n_classes=4, n_train_per_class=60, n_test_per_class=20, n_clean_per_class=10,
              poison_share=0.5, trigger=TOY_TRIGGER, source_class=0, target_class=1)


def toy_variant(path: Path, *, seed: int = 0, **overrides) -> Path:
    """A 4-class 32x32 toy variant (240 train / 80 test / 40 clean / 20 triggered rows)."""
    return make_toy_variant(path, seed=seed, **{**TOY_KW, **overrides})


def write_raw_split(path: Path, split: str = "train", *, n: int = 6, shape=(32, 32, 3), dtype=np.uint8,
                    fields: tuple[str, ...] = ("labels",), n_classes: int | None = 3) -> Path:
    """A minimal (possibly malformed) HDF5 file: one split with ``images`` and the given row fields."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        g = f.create_group(split)
        g["images"] = rng.integers(0, 256, size=(n, *shape)).astype(dtype)
        if "labels" in fields:
            g["labels"] = (np.arange(n) % 3).astype(np.int64)
        for name in fields:
            if name == "labels":
                continue
            g[name] = np.zeros(n, dtype=np.int64)
        if n_classes is not None:
            f.attrs["n_classes"] = n_classes
    return path


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_thread():
    """Generator body of a module fixture: torch on one thread, restored afterwards.

    On the shared 2-core machine, two intra-op threads per process under load were ~10x slower
    than one (threads wait for each other's time slices); one thread is also what makes the
    timings of these tests predictable.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
