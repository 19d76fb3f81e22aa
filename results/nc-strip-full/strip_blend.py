"""STRIP with blend="mean" on one model, a quick check behind report.md (seed 0 by default, as first run).

300 seeded rows of each of the clean split, the clean test split and the triggered test split are
scored with N = 100 averaged overlays from the clean split; the threshold is the 5 % quantile of those
300 clean-split scores. Writes the rejection rates and mean entropies to the JSON named on the
command line. Variant and model: the 2nd and 3rd arguments, by default /tmp/ncfull/a2o.h5 and
/tmp/ncfull/a2o_s0.pt (report.md's commands).
"""
import sys, json, numpy as np, torch
torch.set_num_threads(1)
from backdoorlab.data import to_float_chw
from backdoorlab.defences.pipeline import load_context
from backdoorlab.defences.strip import strip_entropy, _SALTS
data_path, model_path = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ('/tmp/ncfull/a2o.h5', '/tmp/ncfull/a2o_s0.pt')
ctx, _ = load_context(data_path, model_path, device='cpu')
pool = to_float_chw(ctx.clean.load_images())
out = {}
for blend in ("mean",):
    res = {}
    for split in ("clean", "test", "test_triggered"):
        data = getattr(ctx, split)
        rng = np.random.default_rng([0, _SALTS[split], 7])
        data = data.subset(np.sort(rng.choice(len(data), 300, replace=False)))
        res[split] = strip_entropy(ctx.model, data, pool, n_overlays=100, blend=blend, seed=0, salt=_SALTS[split])
    thr = float(np.quantile(res["clean"], 0.05))
    out[blend] = {"threshold": thr, **{f"{s}_rejected_pct": 100 * float((v < thr).mean()) for s, v in res.items()},
                  **{f"{s}_entropy_mean": float(v.mean()) for s, v in res.items()}, "n_per_split": 300}
    print(blend, out[blend], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
