# strip_entropy of an older tree (OLD_TREE) against this tree's, alternated in one process:
#   PYTHONPATH=<this tree>/pytools:<this tree> python3 ab_strip.py OLD_TREE ARCH HxW
import importlib.util, statistics, time, sys
import numpy as np, torch
torch.set_num_threads(2)
from backdoorlab.defences import strip as new_strip
from backdoorlab.models import build_model
spec = importlib.util.spec_from_file_location("backdoorlab.defences.old_strip", f"{sys.argv[1]}/pytools/backdoorlab/defences/strip.py")
old_strip = importlib.util.module_from_spec(spec); spec.loader.exec_module(old_strip)
arch, size = sys.argv[2], tuple(int(v) for v in sys.argv[3].split("x"))
g = torch.Generator().manual_seed(0)
x = torch.rand(128, 3, *size, generator=g); pool = torch.rand(200, 3, *size, generator=g)
m = build_model(arch, 10, seed=0)
f_old = lambda: old_strip.strip_entropy(m, x, pool, n_overlays=20, device="cpu")
f_new = lambda: new_strip.strip_entropy(m, x, pool, n_overlays=20, device="cpu")
a, b = f_old(), f_new()
print(arch, "max abs diff of the entropies", float(np.abs(a - b).max()), "model training:", m.training)
ratios = []
for r in range(7):
    t = {}
    for k, f in ((("old", f_old), ("new", f_new)) if r % 2 == 0 else (("new", f_new), ("old", f_old))):
        t0 = time.perf_counter(); f(); t[k] = time.perf_counter() - t0
    ratios.append(t["old"] / t["new"])
q = statistics.quantiles(ratios, n=4)
print(f"{arch} strip_entropy (128 inputs x 20 overlays): new/old {statistics.median(ratios):.2f} (quartiles {q[0]:.2f}-{q[2]:.2f}), new {128 * 20 / t['new']:.0f} forwards/s")
