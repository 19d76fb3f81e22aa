"""Diagnostics behind results/nc-strip/report.md: why NC and STRIP do (not) reach the issue's figures.

For one variant and its backdoored model (seed 0, CPU), writes a JSON with

* ``transfer``: the variant's own trigger stamped on the clean test images of every class but the
  target, and the share of each class then predicted as the target. NC and STRIP presume a
  source-agnostic backdoor (high on every class); a backdoor planted on one source class may obey the
  trigger only there.
* ``reversed_trigger_unlearning`` (with ``--nc-report``): the same repair fed the flagged classes'
  reversed triggers that a ``defend --pipeline nc`` run recorded (mask from the report, mask x pattern
  from its ``trigger_class_K.png``: the stamp ``(1 - m) x + m p`` needs only those two, to uint8
  rounding), at each ``--unlearn-lr``, without repeating the search.
* ``control_finetune`` (part ``control``): the same fine-tune with an empty mask (no image stamped): the
  clean-accuracy cost of fine-tuning one epoch on the clean split alone.
* ``true_trigger_unlearning``: Neural Cleanse's unlearning repair (same code, same schedule: one
  epoch on the clean split, 20 % stamped, true labels, the recipe's optimizer and rate) fed the *real*
  trigger instead of a reversed one: the best that repair can do on this model, which separates a poor
  reversed trigger from a poor repair. With ``--unlearn-lr`` several rates.

Usage::

    python3 results/nc-strip/diagnose.py --data V.h5 --model M.pt --json out.json [--unlearn-lr 1e-3 3e-4] \
        [--nc-report nc.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from backdoorlab.data import to_float_chw
from backdoorlab.defences import NeuralCleanse
from backdoorlab.defences.pipeline import load_context
from backdoorlab.evaluate import evaluate
from datasets_gen.atomic import atomic_write_json
from datasets_gen.poison import Recipe


def trigger_tensors(trigger, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The trigger as NC's (mask (H, W), pattern (3, H, W)) in [0, 1], drawn on a blank image."""
    blank = np.zeros((1, *hw, 3), np.uint8)
    marked = trigger.apply_batch(blank.copy())
    probe = trigger.apply_batch(np.full((1, *hw, 3), 255, np.uint8))
    # a pixel belongs to the trigger where drawing it changed a black or a white canvas
    mask = ((marked[0] != 0).any(-1) | (probe[0] != 255).any(-1)).astype(np.float32)
    pattern = to_float_chw(torch.from_numpy(marked))[0]
    return torch.from_numpy(mask), pattern


def reversed_triggers_from_report(path: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The flagged classes' (masks (k, H, W), patterns (k, 3, H, W)) from an NC report and its PNGs."""
    import cv2
    from pathlib import Path

    rep = json.loads(Path(path).read_text())["steps"][0]["report"]
    flagged = [int(c) for c in rep["flagged_classes"]]
    masks, patterns = [], []
    for c in flagged:
        m = np.asarray(rep["masks"][rep["classes"].index(c)], dtype=np.float32) / 255
        png = Path(rep["mask_pngs"][rep["classes"].index(c)]).with_name(f"trigger_class_{c}.png")
        mp = cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / 255
        # m * p is what the PNG holds; p = (m * p) / m where the mask is on, anything where it is off
        p = np.where(m[None] > 1e-3, mp / np.maximum(m[None], 1e-3), 0).clip(0, 1)
        masks.append(m)
        patterns.append(p)
    return flagged, torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(patterns).astype(np.float32))


def reversed_unlearning(ctx, nc_report: str, clean_x, clean_y, lrs) -> dict:
    flagged, masks, patterns = reversed_triggers_from_report(nc_report)
    rows = []
    if flagged:
        for lr in lrs:
            nc = NeuralCleanse(unlearn_lr=lr)
            model, used = nc._unlearn(ctx, clean_x, clean_y, masks, patterns, progress=False)
            ev = evaluate(model, ctx.test, ctx.test_triggered, target_class=int(ctx.target_class), device="cpu")
            rows.append({"unlearn_lr": used, "clean_accuracy": ev["clean_accuracy"],
                         "attack_success_rate": ev["attack_success_rate"]})
            print(f"reversed-trigger unlearning lr {used:g}: clean acc {ev['clean_accuracy']:.4f}, "
                  f"attack success {ev['attack_success_rate']:.4f}", flush=True)
    return {"nc_report": nc_report, "flagged": flagged, "mask_l1": masks.sum((1, 2)).tolist(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--unlearn-lr", type=float, nargs="*", default=[None],
                    help="unlearning rates to try (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nc-report", help="a `defend --pipeline nc --report` JSON whose mask PNGs exist")
    ap.add_argument("--parts", nargs="*", default=["transfer", "true", "reversed"],
                    choices=["transfer", "true", "reversed", "control"], help="which diagnostics to run (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    ctx, _ = load_context(args.data, args.model, device="cpu", seed=args.seed)
    recorded = ctx.train.attrs["recipe"]  # the variant records the recipe plus what the build achieved
    recipe = Recipe.from_dict({k: v for k, v in recorded.items() if k in Recipe.__dataclass_fields__})
    trigger = recipe.build_trigger()
    target = int(ctx.target_class)
    out: dict = {"data": args.data, "model": args.model, "trigger": trigger.spec, "target_class": target,
                 "source_classes": recipe.source_classes}

    # 1. does the real trigger flip every class, or only the source?
    if "transfer" in args.parts:
        transfer(ctx, trigger, target, recipe, out)
        before = evaluate(ctx.model, ctx.test, ctx.test_triggered, target_class=target, device="cpu")
        out["before"] = {"clean_accuracy": before["clean_accuracy"], "attack_success_rate": before["attack_success_rate"]}

    # 2. NC's unlearning with the real trigger (the ceiling of the repair)
    mask, pattern = trigger_tensors(trigger, tuple(ctx.clean.load_images().shape[1:3]))
    clean_x = to_float_chw(ctx.clean.load_images())
    clean_y = torch.from_numpy(np.asarray(ctx.clean.labels, dtype=np.int64))
    out["true_trigger_mask_pixels"] = float(mask.sum())
    if "true" in args.parts:
        rows = []
        for lr in args.unlearn_lr:
            nc = NeuralCleanse(unlearn_lr=lr)
            model, used = nc._unlearn(ctx, clean_x, clean_y, mask[None], pattern[None], progress=False)
            ev = evaluate(model, ctx.test, ctx.test_triggered, target_class=target, device="cpu")
            rows.append({"unlearn_lr": used, "unlearn_epochs": nc.unlearn_epochs, "unlearn_share": nc.unlearn_share,
                         "clean_accuracy": ev["clean_accuracy"], "attack_success_rate": ev["attack_success_rate"]})
            print(f"true-trigger unlearning lr {used:g}: clean acc {ev['clean_accuracy']:.4f}, "
                  f"attack success {ev['attack_success_rate']:.4f}", flush=True)
        out["true_trigger_unlearning"] = rows
    if "control" in args.parts:
        # the same fine-tune with an empty mask: no image carries a trigger, so what it costs in clean accuracy
        # is the cost of fine-tuning on the clean split alone
        rows = []
        for lr in args.unlearn_lr:
            model, used = NeuralCleanse(unlearn_lr=lr)._unlearn(ctx, clean_x, clean_y, torch.zeros_like(mask)[None],
                                                                pattern[None], progress=False)
            ev = evaluate(model, ctx.test, ctx.test_triggered, target_class=target, device="cpu")
            rows.append({"unlearn_lr": used, "clean_accuracy": ev["clean_accuracy"],
                         "attack_success_rate": ev["attack_success_rate"]})
            print(f"control fine-tune (no trigger) lr {used:g}: clean acc {ev['clean_accuracy']:.4f}, "
                  f"attack success {ev['attack_success_rate']:.4f}", flush=True)
        out["control_finetune"] = rows
    if args.nc_report and "reversed" in args.parts:
        out["reversed_trigger_unlearning"] = reversed_unlearning(ctx, args.nc_report, clean_x, clean_y, args.unlearn_lr)
    out["seconds"] = time.perf_counter() - started
    atomic_write_json(args.json, out)
    print(json.dumps({k: v for k, v in out.items() if k in ("before", "true_trigger_unlearning")}, indent=1))
    return 0


def transfer(ctx, trigger, target: int, recipe, out: dict) -> None:
    """The real trigger on every clean test image; the share of each class predicted as the target."""
    images = ctx.test.load_images().numpy().copy()
    labels = np.asarray(ctx.test.labels)
    trigger.apply_batch(images)
    stamped = torch.from_numpy(images)
    with torch.no_grad():
        preds = np.concatenate([ctx.model.eval()(to_float_chw(stamped[i:i + 512])).argmax(1).numpy()
                                for i in range(0, len(stamped), 512)])
    per_class = {int(c): float((preds[labels == c] == target).mean()) for c in np.unique(labels) if c != target}
    sources = recipe.source_classes if isinstance(recipe.source_classes, list) else []
    others = [v for c, v in per_class.items() if c not in sources]
    out["transfer"] = {"per_class": per_class,
                       "source": {int(c): per_class.get(int(c)) for c in sources},
                       "other_classes_mean": float(np.mean(others)), "other_classes_median": float(np.median(others)),
                       "other_classes_min": float(np.min(others)), "other_classes_max": float(np.max(others)),
                       "all_non_target_mean": float((preds[labels != target] == target).mean())}


if __name__ == "__main__":
    sys.exit(main())
