"""Per-input STRIP entropies behind results/nc-strip-full/report.md: why a threshold set at 5 % false
rejection on the clean split rejects more than 5 % of the clean *test* inputs.

Scores (Strip's own ``strip_entropy``, N overlays drawn from the clean split, the step's seeds and salts)
every row of the clean split, a seeded sample of the clean test split and of the triggered test split,
and writes them to a CSV (split, row, label, entropy, mean brightness). Then compares thresholds
chosen on the clean split only (what a defender can do):

* ``plain``: the 5 % quantile of the clean split's entropies (Strip's rule before this study);
* ``class_weighted``: the same quantile with each clean row weighted by (its class's share of the
  training split) / (its class's share of the clean split): the clean split is held out by whole
  tracks, 1–2 per class, so its class mix is flat, while the inputs at run time follow the training
  class mix;
* ``leave_track_out`` (``--leave-track-out``): the clean split re-scored with overlays never drawn from the input's own
  track (an input blended with a near-copy of itself stays confident);

and reports, for each, the rejected share of clean test and triggered test inputs, plus per-class mean
entropies of the clean split and the test split.

Usage::

    python3 results/nc-strip-full/strip_scores.py --data V.h5 --model M.pt --json out.json --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time

import numpy as np
import torch

from backdoorlab.data import to_float_chw
from backdoorlab.defences.pipeline import load_context
from backdoorlab.defences.strip import _SALTS, strip_entropy, superimpose
from backdoorlab.seeding import keyed_generator
from datasets_gen.atomic import atomic_write_json, atomic_write_text


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w) / w.sum()
    return float(v[np.searchsorted(cum, q, side="left")])


@torch.no_grad()
def leave_track_out_entropy(model, images: torch.Tensor, tracks: np.ndarray, n_overlays: int, seed: int,
                            batch_size: int = 64) -> np.ndarray:
    """STRIP entropy of every clean row, its overlays drawn from the clean rows of *other* tracks."""
    gen = keyed_generator(int(seed), 0x4C54)
    out = np.empty(images.shape[0])
    model.eval()
    n = images.shape[0]
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        picks = torch.randint(0, n, (idx.size, n_overlays), generator=gen).numpy()
        for j, i in enumerate(idx):  # redraw the picks that fall on the input's own track
            bad = tracks[picks[j]] == tracks[i]
            while bad.any():
                picks[j, bad] = torch.randint(0, n, (int(bad.sum()),), generator=gen).numpy()
                bad = tracks[picks[j]] == tracks[i]
        blended = superimpose(images[idx], images[torch.from_numpy(picks)], "add").reshape(-1, *images.shape[1:])
        logp = torch.log_softmax(model(blended).double(), dim=1)
        out[idx] = (-(logp.exp() * logp).sum(1)).reshape(idx.size, n_overlays).mean(1).numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--n-overlays", type=int, default=100)
    ap.add_argument("--frr", type=float, default=0.05)
    ap.add_argument("--test-sample", type=int, default=1000, help="rows of each test split scored (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--leave-track-out", action="store_true",
                    help="also re-score the clean split with overlays from other tracks only (N more passes per row)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ctx, _ = load_context(args.data, args.model, device="cpu", seed=args.seed)
    model = ctx.model.eval()
    pool = to_float_chw(ctx.clean.load_images())
    scores, labels, bright = {}, {}, {}
    for split in ("clean", "test", "test_triggered"):
        data = getattr(ctx, split)
        if split != "clean" and len(data) > args.test_sample:  # the same sample as Strip.detect draws
            rng = np.random.default_rng([int(args.seed), _SALTS[split]])
            data = data.subset(np.sort(rng.choice(len(data), args.test_sample, replace=False)))
        scores[split] = strip_entropy(model, data, pool, n_overlays=args.n_overlays, blend="add", seed=args.seed,
                                      salt=_SALTS[split], device="cpu", progress=True)
        labels[split] = np.asarray(data.labels if split != "test_triggered" else data.original_labels, dtype=np.int64)
        bright[split] = data.load_images().float().mean((1, 2, 3)).numpy() / 255
        print(f"{split}: {len(data)} scored, mean entropy {scores[split].mean():.3f}", flush=True)
    if args.leave_track_out:
        tracks = np.asarray(ctx.clean.provenance)
        scores["clean_leave_track_out"] = leave_track_out_entropy(model, pool, tracks, args.n_overlays, args.seed)
        labels["clean_leave_track_out"], bright["clean_leave_track_out"] = labels["clean"], bright["clean"]

    n_classes = int(model.n_classes)
    train_share = np.bincount(np.asarray(ctx.train.labels), minlength=n_classes) / len(ctx.train)
    clean_share = np.bincount(labels["clean"], minlength=n_classes) / len(labels["clean"])
    w = train_share[labels["clean"]] / clean_share[labels["clean"]]
    thresholds = {
        "plain": float(np.quantile(scores["clean"], args.frr)),
        "class_weighted": weighted_quantile(scores["clean"], w, args.frr),
        # not available to a defender: the threshold that gives exactly frr on the clean test sample
        "oracle_test": float(np.quantile(scores["test"], args.frr)),
    }
    if args.leave_track_out:
        thresholds["leave_track_out"] = float(np.quantile(scores["clean_leave_track_out"], args.frr))
        thresholds["leave_track_out_class_weighted"] = weighted_quantile(scores["clean_leave_track_out"], w, args.frr)
    rates = {name: {"threshold": t,
                    "clean_split_rejected_pct": 100 * float((scores["clean"] < t).mean()),
                    "test_clean_rejected_pct": 100 * float((scores["test"] < t).mean()),
                    "test_triggered_rejected_pct": 100 * float((scores["test_triggered"] < t).mean())}
             for name, t in thresholds.items()}
    per_class = {int(c): {"clean_split_mean": float(scores["clean"][labels["clean"] == c].mean()),
                          "clean_split_n": int((labels["clean"] == c).sum()),
                          "test_mean": float(scores["test"][labels["test"] == c].mean())
                          if (labels["test"] == c).any() else None,
                          "test_n": int((labels["test"] == c).sum()),
                          "train_share": float(train_share[c])}
                 for c in range(n_classes) if (labels["clean"] == c).any()}
    corr = {s: float(np.corrcoef(bright[s], scores[s])[0, 1]) for s in ("clean", "test", "test_triggered")}
    out = {"data": args.data, "model": args.model, "n_overlays": args.n_overlays, "frr": args.frr,
           "scored": {s: int(v.size) for s, v in scores.items()},
           "entropy_mean": {s: float(v.mean()) for s, v in scores.items()},
           "thresholds": rates, "per_class": per_class, "brightness_entropy_corr": corr,
           "seconds": time.perf_counter() - started}
    atomic_write_json(args.json, out)
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["split", "row", "label", "entropy", "brightness"])
    for s in scores:
        for i, (y, e, b) in enumerate(zip(labels[s], scores[s], bright[s])):
            wr.writerow([s, i, int(y), f"{e:.6f}", f"{b:.4f}"])
    atomic_write_text(args.csv, buf.getvalue())
    for name, r in rates.items():
        print(f"{name:32s} thr {r['threshold']:.4f}  clean split {r['clean_split_rejected_pct']:5.1f} %  "
              f"clean test {r['test_clean_rejected_pct']:5.1f} %  triggered {r['test_triggered_rejected_pct']:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
