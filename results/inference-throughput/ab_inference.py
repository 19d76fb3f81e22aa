"""Inference loops of an older tree against this tree's, alternated in one process.

    PYTHONPATH=<this tree>/pytools:<this tree> python3 ab_inference.py OLD_TREE ARCH HxW PER_CLASS ROUNDS

OLD_TREE's ``evaluate.py`` and ``activations.py`` are loaded beside this tree's (everything they
import is this tree's), so the two differ only in those loops. On a toy variant of 10 classes x
PER_CLASS training images of HxW pixels, ``predict`` and ``extract(last_conv)`` are timed in
ROUNDS rounds, old and new in turn (the order flips every round); prints whether the outputs are
the same and the per-round speed ratio new/old (median and quartiles).
"""

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backdoorlab import activations, evaluate
from backdoorlab.data import H5Split
from backdoorlab.models import build_model
from datasets_gen.toy import make_toy_variant

old_tree, arch, size_arg, per_class, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
size = tuple(int(v) for v in size_arg.split("x"))
torch.set_num_threads(2)


def load_old(name):
    spec = importlib.util.spec_from_file_location(f"old_{name}", f"{old_tree}/pytools/backdoorlab/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


old_eval, old_acts = load_old("evaluate"), load_old("activations")
data = make_toy_variant(Path(tempfile.mkdtemp()) / "toy.h5", n_classes=10, n_train_per_class=per_class,
                        n_test_per_class=2, n_clean_per_class=0, image_size=size, seed=0)
ds = H5Split(data, "train")
model = build_model(arch, 10, seed=0)
fns = {"predict": (lambda: old_eval.predict(model, ds, device="cpu"), lambda: evaluate.predict(model, ds, device="cpu")),
       "extract last_conv": (lambda: old_acts.extract(model, ds, "last_conv", device="cpu", progress=False),
                             lambda: activations.extract(model, ds, "last_conv", device="cpu", progress=False))}
for name, (old, new) in fns.items():
    a, b = old(), new()
    same = "same" if np.array_equal(a, b) else f"max rel diff {float(np.abs(a - b).max() / np.abs(a).max()):.2g}"
    print(f"{arch} {name}: {same}")
for name, (old, new) in fns.items():
    ratios, t_new = [], []
    for r in range(rounds):
        times = {}
        for key, fn in ((("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))):
            t0 = time.perf_counter()
            fn()
            times[key] = time.perf_counter() - t0
        ratios.append(times["old"] / times["new"])
        t_new.append(times["new"])
    q = statistics.quantiles(ratios, n=4)
    print(f"{arch} {name}: new/old speed median {statistics.median(ratios):.2f} (quartiles {q[0]:.2f}-{q[2]:.2f}, "
          f"{rounds} rounds), new {len(ds) / statistics.median(t_new):.0f} img/s")
