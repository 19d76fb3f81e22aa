"""Collect results/nc-strip-full's JSONs into summary.csv / summary.json and the NC mask grid PNG.

Reads ``V_model.json`` (evaluate), ``V_nc.json`` (defend --pipeline nc), ``V_strip_scores.json``
(strip_scores.py), ``V_strip.json`` (defend --pipeline strip, if run) and ``V_unlearn*.json``
(unlearn_sweep.py) for each variant/seed ``V``; prints the rows.

Usage (from the repository root)::

    python3 results/nc-strip-full/summarize.py [--variants a2o_s0]
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


def _load(name: str):
    p = HERE / name
    return json.loads(p.read_text()) if p.is_file() else None


def row(v: str) -> dict:
    r: dict = {"variant": v}
    model, nc, scores, strip = (_load(f"{v}_{k}.json") for k in ("model", "nc", "strip_scores", "strip"))
    if model:
        r.update(clean_accuracy=model["clean_accuracy"], attack_success=model["attack_success_rate"],
                 n_test=model["n_test"], n_triggered=model["n_triggered"])
    if nc:
        st = nc["steps"][0]
        rep = st["report"]
        t = int(model["target_class"])
        l1 = np.asarray(rep["mask_l1"])
        r.update(nc_flagged=" ".join(map(str, rep["flagged_classes"])) or "none", nc_target_detected=rep["target_detected"],
                 nc_target_index=rep["anomaly_index"][t], nc_target_l1=float(l1[t]), nc_median_l1=rep["median_l1"],
                 nc_min_l1_class=int(np.argmin(l1)), nc_second_smallest_l1=float(np.sort(l1)[1]),
                 nc_max_index_other=max(a for c, a in enumerate(rep["anomaly_index"]) if c != t),
                 nc_reached=int(sum(map(bool, rep["reached"]))), nc_epochs_run_max=max(rep["epochs_run"]),
                 nc_final_cost_target=rep["final_cost"][t], nc_search_seconds=rep["search_seconds"],
                 nc_unlearn_lr=rep.get("unlearn_lr"), nc_unlearn_class_weight=rep.get("unlearn_class_weight"),
                 nc_clean_accuracy_after=st["clean_accuracy"], nc_attack_success_after=st["attack_success_rate"],
                 nc_config=json.dumps(rep["config"], sort_keys=True), nc_seconds=nc["seconds"])
        grid = mask_grid(np.asarray(rep["masks"], dtype=np.uint8), rep["flagged_classes"], t)
        import cv2

        ok, png = cv2.imencode(".png", grid)
        if ok:
            atomic_write_bytes(HERE / f"{v}_nc_mask_grid.png", png.tobytes())
    if scores:
        for name, th in scores["thresholds"].items():
            for k, x in th.items():
                r[f"strip_{name}_{k}"] = x
        for s, m in scores["entropy_mean"].items():
            r[f"strip_entropy_mean_{s}"] = m
    if strip:
        rep = strip["steps"][0]["report"]
        r.update({f"strip_step_{k}": rep.get(k) for k in ("threshold", "class_weight", "clean_rejected_pct",
                                                          "clean_rejected_weighted_pct", "test_triggered_rejected_pct",
                                                          "test_clean_rejected_pct")})
    for p in sorted(HERE.glob(f"{v}_unlearn*.json")):
        sweep = json.loads(p.read_text())
        for u in sweep["rows"]:
            key = f"{p.stem[len(v) + 1:]}_{u['trigger']}_lr{u['lr']:g}_ep{u['epochs']}_w{u['class_weight']}"
            r[f"{key}_heldout_drop_pts"] = u["heldout_accuracy_drop_pts"]
            r[f"{key}_heldout_trainmix_drop_pts"] = u["heldout_accuracy_trainmix_drop_pts"]
            r[f"{key}_test_accuracy"] = u["test_clean_accuracy"]
            r[f"{key}_test_attack_success"] = u["test_attack_success"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="*", default=["a2o_s0"])
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
