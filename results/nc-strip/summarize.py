"""Collect the NC / STRIP / diagnostic JSONs of results/nc-strip into summary.csv, summary.json and
one mask-grid PNG per variant (the report's own ``mask_grid``); prints the Markdown tables.

Usage (from the repository root)::

    python3 results/nc-strip/summarize.py [--variants src a2o]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from backdoorlab.experiments.report import mask_grid
from datasets_gen.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
LABELS = {"src": "source-specific (class 8 → 14, 15 % of class 8)",
          "a2o": "all-to-one (every class → 14, 10 % of each class)"}


def _load(name: str) -> dict | None:
    p = HERE / name
    return json.loads(p.read_text()) if p.is_file() else None


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def row(v: str) -> dict:
    model, nc, strip, diag = (_load(f"{v}_{k}.json") for k in ("model", "nc", "strip", "diagnose"))
    r: dict = {"variant": v, "label": LABELS.get(v, v)}
    if model:
        r.update(clean_accuracy=model["clean_accuracy"], attack_success=model["attack_success_rate"],
                 n_test=model["n_test"], n_triggered=model["n_triggered"])
    if nc:
        st = nc["steps"][0]
        rep = st["report"]
        t = int(model["target_class"])  # the evaluate JSON of the same variant
        r.update(nc_flagged=" ".join(map(str, rep["flagged_classes"])) or "none",
                 nc_target_detected=rep["target_detected"], nc_target_index=rep["anomaly_index"][t],
                 nc_target_l1=rep["mask_l1"][t], nc_median_l1=rep["median_l1"],
                 nc_min_l1_class=int(np.argmin(rep["mask_l1"])), nc_max_index=max(rep["anomaly_index"]),
                 nc_reached=sum(map(bool, rep["reached"])), nc_epochs_run_max=max(rep["epochs_run"]),
                 nc_search_seconds=rep["search_seconds"], nc_unlearn_lr=rep.get("unlearn_lr"),
                 nc_clean_accuracy_after=st["clean_accuracy"], nc_attack_success_after=st["attack_success_rate"],
                 nc_seconds=nc["seconds"])
        grid = mask_grid(np.asarray(rep["masks"], dtype=np.uint8), rep["flagged_classes"], t)
        import cv2

        ok, png = cv2.imencode(".png", grid)
        if ok:
            atomic_write_bytes(HERE / f"{v}_nc_mask_grid.png", png.tobytes())
    if strip:
        rep = strip["steps"][0]["report"]
        r.update(strip_threshold=rep["threshold"], strip_clean_split_rejected_pct=rep["clean_rejected_pct"],
                 strip_triggered_rejected_pct=rep.get("test_triggered_rejected_pct"),
                 strip_clean_test_rejected_pct=rep.get("test_clean_rejected_pct"),
                 strip_entropy_clean_split=rep["clean_entropy_mean"],
                 strip_entropy_triggered=rep.get("test_triggered_entropy_mean"),
                 strip_entropy_clean_test=rep.get("test_entropy_mean"),
                 strip_n_overlays=strip["config"]["strip"]["n_overlays"] if "strip" in strip.get("config", {}) else None,
                 strip_seconds=strip["seconds"])
    if diag:
        tr = diag["transfer"]
        r.update(transfer_source=" ".join(f"{c}:{x:.3f}" for c, x in tr["source"].items()) or "–",
                 transfer_other_mean=tr["other_classes_mean"], transfer_other_min=tr["other_classes_min"],
                 transfer_other_max=tr["other_classes_max"])
        for u in diag["true_trigger_unlearning"]:
            r[f"true_unlearn_lr{u['unlearn_lr']:g}_clean_accuracy"] = u["clean_accuracy"]
            r[f"true_unlearn_lr{u['unlearn_lr']:g}_attack_success"] = u["attack_success_rate"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="*", default=["src", "a2o"])
    args = ap.parse_args(argv)
    rows = [row(v) for v in args.variants]
    atomic_write_json(HERE / "summary.json", rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(HERE / "summary.csv", buf.getvalue())
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
