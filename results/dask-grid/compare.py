"""Cells of the four benchmark runs side by side (accuracy / attack success per cell), and whether
runs of one mode agree with each other and with the other mode, all fields but wall times.
Usage: python3 results/dask-grid/compare.py /tmp/dask/bench > results/dask-grid/cells.md"""
import json
import sys
from pathlib import Path

from backdoorlab.experiments.records import without_run_fields

root = Path(sys.argv[1])
runs = {p.name: json.loads((p / "cells.json").read_text()) for p in sorted(root.iterdir())
        if p.is_dir() and (p / "cells.json").is_file()}
names = list(runs)
print("`python3 results/dask-grid/compare.py /tmp/dask/bench` over the runs of `results/dask-grid/bench.sh 1` (see README.md)\n")
print("| setting | defence | " + " | ".join(f"{n} acc / ASR" for n in names) + " |")
print("|---|---|" + "---|" * len(names))
first = runs[names[0]]
for i, c in enumerate(first):
    vals = [f"{r[i]['accuracy']:.4f} / {r[i]['attack_success']:.4f}" for r in runs.values()]
    print(f"| {c['setting']} | {c['defence']} | " + " | ".join(vals) + " |")
print()
for a in names:
    for b in names:
        if a < b:
            same = [without_run_fields(x) == without_run_fields(y) for x, y in zip(runs[a], runs[b])]
            print(f"- {a} vs {b}: {sum(same)} of {len(same)} cells equal in every field but wall times")
