"""``backdoorlab bench prune``: speed of Fine-Pruning's channel search, fast paths against the naive loop.

Fine-Pruning removes channels of one layer in ascending order of mean activation until clean-set
accuracy drops by more than a threshold. The naive loop re-runs the whole network over the clean
set for every channel count. Our fast path (``TailEvaluator``) runs the network up to the pruned
layer once, caches what the rest of the network needs, and per count runs only the rest;
``bisect`` additionally halves the count range (exact when accuracy falls monotonically with the
count). All three run here on the same model, clean set and channel order; the naive loop gets its
input batches pre-loaded too, so the ratio measures network compute, not HDF5 reads.

Reported per layer: seconds of each search (set-up included: the head pass and the cache), the
speed-up of each fast path over the naive loop, the channel count each one chose (linear fast must
equal naive), and the number of accuracy evaluations.

Without ``--data``/``--model`` it builds a small toy variant at 32x32 and trains the paper's GTSRB
CNN on it for a few epochs (seeded), so it runs anywhere in about a minute.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backdoorlab import checkpoint, native
from backdoorlab.activations import channel_means
from backdoorlab.bench import add_run_args
from backdoorlab.data import H5Split
from backdoorlab.defences.fine_pruning import FullEvaluator, PruningSearch, TailEvaluator
from backdoorlab.defences.params import check_fraction
from backdoorlab.models import build_model
from backdoorlab.train import TrainConfig, train_model
from datasets_gen.atomic import atomic_write_json, json_safe
from datasets_gen.toy import make_toy_variant


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdoorlab bench prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="HDF5 variant (its clean split is the tuning set); default: a toy variant")
    p.add_argument("--model", help="checkpoint matching --data; default: train gtsrb_cnn on the toy variant")
    p.add_argument("--layers", default="last_conv,second_last_conv", help="comma-separated roles or module names")
    p.add_argument("--threshold", type=float, default=0.04, help="allowed clean-accuracy drop (default 0.04)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept (default 3)")
    return add_run_args(p, batch_size=256, threads=1)


def _toy_setup(workdir: Path, seed: int, device: str):
    path = make_toy_variant(workdir / "toy.h5", n_classes=6, n_train_per_class=150, n_test_per_class=20,
                            n_clean_per_class=120, image_size=(32, 32), poison_share=0.3, seed=seed)
    model = build_model("gtsrb_cnn", 6, seed=seed)
    train_model(model, H5Split(path, "train"), TrainConfig(epochs=4, batch_size=32, optimizer="adam", lr=1e-3),
                seed=seed, device=device, progress=False)
    return path, model


def _best_of(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_layer(model, clean, layer: str, threshold: float, *, repeats: int, batch_size: int, device: str) -> dict:
    """Time the three searches on one layer; returns a JSON-ready dict."""
    name = model.layer_name(layer)
    means = channel_means(model, clean, layer, batch_size=batch_size, device=device, progress=False)
    order = np.asarray(native.pruning_order(means.astype(np.float32)), dtype=np.int64)
    max_pruned = order.size - 1

    def naive():
        ev = FullEvaluator(model, clean, layer, batch_size=batch_size, device=device)
        s = PruningSearch(ev.accuracy, order, threshold)
        return s.linear(max_pruned), len(s.curve)

    def fast_linear():
        ev = TailEvaluator(model, clean, layer, batch_size=batch_size, device=device)
        s = PruningSearch(ev.accuracy, order, threshold)
        return s.linear(max_pruned), len(s.curve)

    def fast_bisect():
        ev = TailEvaluator(model, clean, layer, batch_size=batch_size, device=device)
        s = PruningSearch(ev.accuracy, order, threshold)
        return s.bisect(max_pruned), len(s.curve)

    t_naive, (n_naive, e_naive) = _best_of(naive, repeats)
    t_lin, (n_lin, e_lin) = _best_of(fast_linear, repeats)
    t_bis, (n_bis, e_bis) = _best_of(fast_bisect, repeats)
    if n_lin != n_naive:
        raise RuntimeError(f"fast linear search chose {n_lin} channels, the naive loop {n_naive}: they must agree")
    return {
        "layer": layer, "module": name, "n_channels": int(order.size), "n_clean": len(clean),
        "naive_full_forward": {"seconds": t_naive, "pruned": n_naive, "evaluations": e_naive},
        "cached_tail_linear": {"seconds": t_lin, "pruned": n_lin, "evaluations": e_lin,
                               "speedup_vs_naive": t_naive / t_lin},
        "cached_tail_bisect": {"seconds": t_bis, "pruned": n_bis, "evaluations": e_bis,
                               "speedup_vs_naive": t_naive / t_bis, "agrees_with_linear": n_bis == n_lin},
    }


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    check_fraction("threshold", args.threshold)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if (args.data is None) != (args.model is None):
        raise ValueError("give both --data and --model, or neither (toy set-up)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            print("building a toy variant and training gtsrb_cnn on it (seeded) ...", flush=True)
            data, model = _toy_setup(Path(tmp), args.seed, args.device)
        else:
            data = Path(args.data)
            model, _ = checkpoint.load(args.model, device=args.device)
        clean = H5Split(data, "clean")
        model.eval()
        results = []
        for layer in [s.strip() for s in args.layers.split(",") if s.strip()]:
            r = bench_layer(model, clean, layer, args.threshold, repeats=args.repeats,
                            batch_size=args.batch_size, device=args.device)
            results.append(r)
            nv, li, bi = r["naive_full_forward"], r["cached_tail_linear"], r["cached_tail_bisect"]
            print(f"{layer} ({r['module']}, {r['n_channels']} channels, clean set {r['n_clean']}): "
                  f"pruned {li['pruned']}/{r['n_channels']}")
            print(f"  naive full forward : {nv['seconds']:.3f} s  ({nv['evaluations']} evaluations)")
            print(f"  cached tail, linear: {li['seconds']:.3f} s  ({li['evaluations']} evaluations)  "
                  f"x{li['speedup_vs_naive']:.1f} vs naive")
            print(f"  cached tail, bisect: {bi['seconds']:.3f} s  ({bi['evaluations']} evaluations)  "
                  f"x{bi['speedup_vs_naive']:.1f} vs naive, pruned {bi['pruned']} "
                  f"({'same as' if bi['agrees_with_linear'] else 'differs from'} linear)")
    out = {"benchmark": "prune", "data": None if args.data is None else str(args.data),
           "model": args.model, "threshold": args.threshold, "repeats": args.repeats, "threads": args.threads,
           "device": args.device, "seed": args.seed, "torch": torch.__version__, "machine": platform.machine(),
           "results": results}
    if args.json:
        atomic_write_json(args.json, json_safe(out))
    return 0
