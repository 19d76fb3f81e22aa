"""Neural Cleanse's unlearning repair at several settings, chosen on the clean split only.

Behind results/nc-strip-full/report.md. For one variant, its backdoored model and a finished
``defend --pipeline nc`` report (its mask PNGs must exist), the flagged classes' reversed triggers are
fed to NC's own ``_unlearn`` at every setting of a small grid (rate x epochs x stamped share), twice:

* **selection** (what a defender can do): the clean split is cut into two halves by whole tracks
  (class by class, alternate tracks); the repair is fitted on one half and judged on the other, and
  the other way round. Reported: the clean accuracy of the held-out half before and after, and the
  share of the held-out half's non-flagged-class images that the *reversed* trigger still sends to a
  flagged class (the defender's only view of the backdoor);
* **test** (reported, never used to choose): the repair fitted on the whole clean split, with the
  test split's clean accuracy and the real trigger's attack success.

Usage::

    python3 results/nc-strip-full/unlearn_sweep.py --data V.h5 --model M.pt --nc-report nc.json --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nc-strip"))
from diagnose import reversed_triggers_from_report, trigger_tensors  # noqa: E402

from backdoorlab.data import to_float_chw  # noqa: E402
from backdoorlab.defences import NeuralCleanse  # noqa: E402
from backdoorlab.defences.base import class_mix_weights  # noqa: E402
from backdoorlab.defences.neural_cleanse import stamp  # noqa: E402
from backdoorlab.defences.pipeline import load_context  # noqa: E402
from backdoorlab.evaluate import evaluate  # noqa: E402
from datasets_gen.atomic import atomic_write_json  # noqa: E402
from datasets_gen.poison import Recipe  # noqa: E402


def track_halves(labels: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Boolean mask of half A: per class, alternate whole tracks (a class with one track goes to A)."""
    half = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        for i, t in enumerate(np.unique(tracks[labels == c])):
            if i % 2 == 0:
                half[(labels == c) & (tracks == t)] = True
    return half


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """Accuracy on (x, y); with row weights ``w``, the weighted mean (the training class mix)."""
    model.eval()
    pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, x.shape[0], 512)])
    hit = (pred == y).double()
    return float(hit.mean() if w is None else (hit * w).sum() / w.sum())


@torch.no_grad()
def class_accuracy(model, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> np.ndarray:
    """Per-class accuracy on (x, y), NaN for a class absent from y."""
    model.eval()
    pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, x.shape[0], 512)]).numpy()
    yy = y.numpy()
    return np.array([np.mean(pred[yy == c] == c) if (yy == c).any() else np.nan for c in range(n_classes)])


@torch.no_grad()
def reversed_asr(model, x: torch.Tensor, y: torch.Tensor, flagged: list[int], masks, patterns) -> float:
    """Share of the images of non-flagged classes that a flagged class's reversed trigger sends to it."""
    model.eval()
    keep = ~torch.isin(y, torch.tensor(flagged))
    hits = []
    for j, c in enumerate(flagged):
        xs = stamp(x[keep], masks[j], patterns[j])
        hits.append(torch.cat([model(xs[i:i + 512]).argmax(1) for i in range(0, xs.shape[0], 512)]) == c)
    return float(torch.cat(hits).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--nc-report", help="a finished `defend --pipeline nc` report; without it only the real trigger "
                    "(with --real-trigger) is unlearned, as if NC had flagged the target")
    ap.add_argument("--json", required=True)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--share", type=float, nargs="+", default=[0.2])
    ap.add_argument("--class-weight", nargs="+", default=["none", "train"], choices=["none", "train"])
    ap.add_argument("--optimizer", nargs="+", default=[None], choices=["adam", "sgd", "adadelta"],
                    help="unlearning optimizer (default: the training recipe's; sgd uses the recipe's momentum)")
    ap.add_argument("--real-trigger", action="store_true", help="also run every setting with the real trigger")
    ap.add_argument("--control", action="store_true",
                    help="also the same fine-tune with an empty mask (no image stamped): the cost of fine-tuning alone")
    ap.add_argument("--no-test", action="store_true",
                    help="selection only: skip the whole-split fit and the test split (choose first, then test the choice)")
    ap.add_argument("--classes", type=int, nargs="+",
                    help="unlearn only these of the report's flagged classes (default: all flagged, as the NC step does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ctx, _ = load_context(args.data, args.model, device="cpu", seed=args.seed)
    target = int(ctx.target_class)
    if args.nc_report:
        flagged, masks, patterns = reversed_triggers_from_report(args.nc_report)
        if not flagged:
            raise SystemExit(f"{args.nc_report} flags no class: nothing to unlearn")
        if args.classes:
            if not set(args.classes) <= set(flagged):
                raise SystemExit(f"--classes {args.classes} are not all flagged ({flagged})")
            pos = [flagged.index(c) for c in args.classes]
            flagged, masks, patterns = list(args.classes), masks[pos], patterns[pos]
        triggers = {"reversed": (masks, patterns)}
    elif not args.real_trigger:
        raise SystemExit("without --nc-report, --real-trigger is needed: there is no trigger to unlearn")
    else:
        flagged, triggers = [target], {}
    if args.real_trigger:
        recorded = ctx.train.attrs["recipe"]
        recipe = Recipe.from_dict({k: v for k, v in recorded.items() if k in Recipe.__dataclass_fields__})
        m, p = trigger_tensors(recipe.build_trigger(), tuple(ctx.clean.image_shape[:2]))
        triggers["real"] = (m[None].expand(len(flagged), -1, -1), p[None].expand(len(flagged), -1, -1, -1))
        if not args.nc_report:
            masks, patterns = triggers["real"]  # the held-out "reversed" ASR then uses the real trigger
    if args.control:
        some = next(iter(triggers.values()))
        triggers["control"] = (torch.zeros_like(some[0]), some[1])
    x = to_float_chw(ctx.clean.load_images())
    y = torch.from_numpy(np.asarray(ctx.clean.labels, dtype=np.int64))
    a = torch.from_numpy(track_halves(y.numpy(), np.asarray(ctx.clean.provenance)))
    # held-out accuracy also under the training class mix (the clean split's is flat, the test split's is not)
    n_classes = int(ctx.model.n_classes)
    wmix = torch.from_numpy(class_mix_weights(np.asarray(ctx.train.labels), y.numpy(), int(ctx.model.n_classes)))
    folds = [(a, ~a), (~a, a)]
    before_test = ({"clean_accuracy": None, "attack_success_rate": None} if args.no_test else
                   evaluate(ctx.model, ctx.test, ctx.test_triggered, target_class=target, device="cpu"))
    out = {"data": args.data, "model": args.model, "nc_report": args.nc_report, "flagged": flagged,
           "mask_l1": masks.sum((1, 2)).tolist(), "halves": [int(a.sum()), int((~a).sum())],
           "before": {"heldout_accuracy": [accuracy(ctx.model, x[h], y[h]) for _, h in folds],
                      "heldout_accuracy_trainmix": [accuracy(ctx.model, x[h], y[h], wmix[h]) for _, h in folds],
                      "heldout_reversed_asr": [reversed_asr(ctx.model, x[h], y[h], flagged, masks, patterns)
                                               for _, h in folds],
                      "test_clean_accuracy": before_test["clean_accuracy"],
                      "test_attack_success": before_test["attack_success_rate"]},
           "rows": []}
    print(json.dumps(out["before"]), flush=True)
    base_ctx = ctx
    for (tname, (tm, tp)), lr, epochs, share, cw, opt in itertools.product(
            triggers.items(), args.lr, args.epochs, args.share, args.class_weight, args.optimizer):
        ctx = base_ctx if opt is None else base_ctx.replace(
            train_config=dataclasses.replace(base_ctx.train_config, optimizer=opt))
        opt = ctx.train_config.optimizer
        nc = NeuralCleanse(unlearn_lr=lr, unlearn_epochs=epochs, unlearn_share=share, unlearn_class_weight=cw)
        sel_acc, sel_acc_mix, sel_asr, sel_class_drop = [], [], [], []
        for fit, held in folds:
            model, _ = nc._unlearn(ctx, x[fit], y[fit], tm, tp, progress=False)
            sel_acc.append(accuracy(model, x[held], y[held]))
            sel_acc_mix.append(accuracy(model, x[held], y[held], wmix[held]))
            # the class hurt most on the held-out half: a repair that erases a class's own feature shows here
            drop = class_accuracy(ctx.model, x[held], y[held], n_classes) - class_accuracy(model, x[held], y[held], n_classes)
            sel_class_drop.append((int(np.nanargmax(drop)), float(np.nanmax(drop))))
            sel_asr.append(reversed_asr(model, x[held], y[held], flagged, masks, patterns))
        if args.no_test:
            ev = {"clean_accuracy": None, "attack_success_rate": None}
        else:
            model, _ = nc._unlearn(ctx, x, y, tm, tp, progress=False)
            ev = evaluate(model, ctx.test, ctx.test_triggered, target_class=target, device="cpu")
        row = {"trigger": tname, "lr": lr, "epochs": epochs, "share": share, "class_weight": cw, "optimizer": opt,
               "heldout_accuracy": sel_acc, "heldout_accuracy_mean": float(np.mean(sel_acc)),
               "heldout_accuracy_drop_pts": 100 * float(np.mean(out["before"]["heldout_accuracy"]) - np.mean(sel_acc)),
               "heldout_accuracy_trainmix": sel_acc_mix,
               "heldout_accuracy_trainmix_drop_pts":
                   100 * float(np.mean(out["before"]["heldout_accuracy_trainmix"]) - np.mean(sel_acc_mix)),
               "heldout_worst_class_drop": [{"class": c, "drop": d} for c, d in sel_class_drop],
               "heldout_reversed_asr": sel_asr, "heldout_reversed_asr_mean": float(np.mean(sel_asr)),
               "test_clean_accuracy": ev["clean_accuracy"], "test_attack_success": ev["attack_success_rate"],
               "test_per_class_accuracy": ev.get("per_class_accuracy"),
               "test_accuracy_drop_pts": None if args.no_test else 100 * (before_test["clean_accuracy"] - ev["clean_accuracy"])}
        out["rows"].append(row)
        test_part = "" if args.no_test else (f" | test acc {ev['clean_accuracy']:.4f} (drop {row['test_accuracy_drop_pts']:+.2f}),"
                                             f" ASR {ev['attack_success_rate']:.4f}")
        print(f"{tname:8s} {opt} lr {lr:g} ep {epochs} share {share:g} weight {cw}: held-out acc drop "
              f"{row['heldout_accuracy_drop_pts']:+.2f} pts (train mix {row['heldout_accuracy_trainmix_drop_pts']:+.2f}), "
              f"worst class {' / '.join(f'{c}: {d:.2f}' for c, d in sel_class_drop)}, "
              f"held-out reversed ASR {row['heldout_reversed_asr_mean']:.3f}{test_part}", flush=True)
    out["seconds"] = time.perf_counter() - started
    atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
