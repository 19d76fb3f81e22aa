"""Does the trigger survive STRIP's superimposition? Behind results/nc-strip-full/report.md.

STRIP rejects an input when its blends with clean images keep one confident prediction (low
entropy); that needs the trigger to keep working in the blend. For a sample of triggered test inputs
(and, as the yardstick, clean test inputs) this blends each with ``--n-overlays`` clean-split images
by the Strip step's own ``superimpose`` — ``add`` (the paper's image addition, saturated at 1) and
``mean`` — and reports the share of blends the model still assigns to the target class, the share
that keeps the input's own prediction, and the mean entropy. One seeded sample, one seed.

Usage::

    python3 results/nc-strip-full/strip_survival.py --data V.h5 --model M.pt --json out.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from backdoorlab.data import to_float_chw
from backdoorlab.defences.pipeline import load_context
from backdoorlab.defences.strip import BLENDS, superimpose
from backdoorlab.seeding import keyed_generator
from datasets_gen.atomic import atomic_write_json


def survival(model, inputs: torch.Tensor, pool: torch.Tensor, target: int, blend: str, n_overlays: int,
             seed: int, batch: int = 16) -> dict:
    gen = keyed_generator(seed, 0x5355)
    to_target, keeps_own, entropy = [], [], []
    with torch.inference_mode():
        own = model(inputs).argmax(1)
        for start in range(0, inputs.shape[0], batch):
            x = inputs[start:start + batch]
            picks = torch.randint(0, pool.shape[0], (x.shape[0], n_overlays), generator=gen)
            blended = superimpose(x, pool[picks], blend).reshape(-1, *x.shape[1:])
            logp = torch.log_softmax(model(blended).double(), 1)
            pred = logp.argmax(1).reshape(x.shape[0], n_overlays)
            to_target.append((pred == target).double().mean(1))
            keeps_own.append((pred == own[start:start + batch, None]).double().mean(1))
            entropy.append(-(logp.exp() * logp).sum(1).reshape(x.shape[0], n_overlays).mean(1))
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    t, k, e = cat(to_target), cat(keeps_own), cat(entropy)
    return {"blends_to_target": float(t.mean()), "blends_keep_own_prediction": float(k.mean()),
            "inputs_with_majority_of_blends_to_target": float((t > 0.5).mean()),
            "mean_entropy": float(e.mean()), "own_prediction_is_target": float((own == target).double().mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--sample", type=int, default=300, help="inputs per split (default 300)")
    ap.add_argument("--n-overlays", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ctx, _ = load_context(args.data, args.model, device="cpu", seed=args.seed)
    model = ctx.model.eval()
    pool = to_float_chw(ctx.clean.load_images())
    rng = np.random.default_rng(args.seed)
    out = {"data": args.data, "model": args.model, "target_class": int(ctx.target_class), "sample": args.sample,
           "n_overlays": args.n_overlays, "seed": args.seed, "splits": {}}
    for split in ("test_triggered", "test"):
        data = getattr(ctx, split)
        rows = np.sort(rng.choice(len(data), min(args.sample, len(data)), replace=False))
        inputs = to_float_chw(data.subset(rows).load_images())
        out["splits"][split] = {b: survival(model, inputs, pool, int(ctx.target_class), b, args.n_overlays, args.seed)
                                for b in BLENDS}
        for b, r in out["splits"][split].items():
            print(f"{split:15s} {b:4s} blends -> target {r['blends_to_target']:.3f}, keep own prediction "
                  f"{r['blends_keep_own_prediction']:.3f}, mean entropy {r['mean_entropy']:.3f} nats", flush=True)
    atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
