"""Fabricated cell records for the report tests (no training: numbers drawn from a seeded RNG).

The records have exactly the fields the runner writes, so the report, plots and findings can be
tested on many shapes of grid in milliseconds; the end-to-end test then checks the same
properties on a real tiny run.
"""

from __future__ import annotations

import numpy as np

from backdoorlab.experiments.config import DEFENCE_CATALOG, DefenceSpec

SETTINGS = [("gtsrb", "yellow square", 0.03), ("gtsrb", "yellow square", 0.07), ("gtsrb", "yellow square", 0.10),
            ("gtsrb", "white pattern", 0.07), ("ytaf", "green glasses", 0.05)]
DEFENCES = ["clean", "none", "ac", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac"]
# The defence ids of the paper's grid (AC named by its analysis; combinations with the size metric).
PAPER_DEFENCES = ["clean", "none", "ac-size", "ac-silhouette", "ss", "dp", "fp-last", "fp-second-last", "ac>fp",
                  "fp>ac"]
_EXTRA = {
    "ac-size": DefenceSpec(id="ac-size", pipeline="ac", kind="filter", configs={"ac": {"analysis": "smaller"}},
                           label="AC (size metric, paper)"),
    "ac-silhouette": DefenceSpec(id="ac-silhouette", pipeline="ac", kind="filter",
                                 configs={"ac": {"analysis": "silhouette-scores"}}, label="AC (silhouette, ours)"),
}
_ANALYSIS = {"ac": "silhouette-scores", "ac>fp": "smaller", "fp>ac": "smaller"}


def _spec(did: str) -> DefenceSpec:
    if did in _EXTRA:
        return _EXTRA[did]
    e = DEFENCE_CATALOG[did]
    return DefenceSpec(id=did, pipeline=e["pipeline"], kind=e["kind"], configs=e["configs"])


def channel_activity(rng, n_last=128, n_second=128):
    """Per-channel means as the runner records them on the undefended model (Figs. 7/8)."""
    return {layer: {"clean": rng.random(n).tolist(), "triggered": rng.random(n).tolist()}
            for layer, n in (("last_conv", n_last), ("second_last_conv", n_second))}


def fabricate_cells(settings=SETTINGS, defences=DEFENCES, seeds=(0,), rng_seed=0, sweep=(0.02, 0.06),
                    paper_rows=None, with_channels=False, analyses=False):
    """Cells of a grid with random numbers.

    ``paper_rows``: one paper row label (or None) per setting; ``with_channels``: the undefended
    cells carry ``channel_activity``; ``analyses``: cells with an AC step record ``ac_analysis``.
    """
    rng = np.random.default_rng(rng_seed)
    cells = []
    specs = [_spec(d) for d in defences]
    for i, (dataset, trigger, share) in enumerate(settings):
        sid = f"{dataset}-{trigger.replace(' ', '-')}@{round(share * 100, 4):g}%"
        extra = []
        if i == 0:
            for t in sweep:
                extra.append(DefenceSpec(id=f"fp-last@{t * 100:g}%", pipeline="fp", kind="repair",
                                         configs={"fp": {"layer": "last_conv", "threshold": t}}, sweep=True))
        for seed in seeds:
            n_train, n_pois = 1000, int(round(share * 300))
            before_acc, before_asr = float(rng.uniform(0.9, 0.97)), float(rng.uniform(0.85, 1.0))
            for spec in specs + extra:
                c = {"setting": sid, "dataset": dataset, "trigger": trigger, "preset": f"{dataset}-preset",
                     "paper_row": paper_rows[i] if paper_rows else None,
                     "poison_share": share, "defence": spec.id, "defence_label": spec.display_label(),
                     "kind": spec.kind, "pipeline": spec.pipeline, "sweep": spec.sweep, "seed": seed, "n_train": n_train,
                     "poisoned_present": n_pois, "before_accuracy": before_acc, "before_attack_success": before_asr,
                     "removed_poisoned": None, "removed_clean": None, "removed_poisoned_share": None,
                     "removed_clean_share": None, "neurons_pruned": None, "n_channels": None, "layer": None,
                     "fp_threshold": None, "preview": None, "steps": [],
                     "versions": {"backdoorlab": "0.1.0", "torch": "x", "numpy": "y"},
                     "timings": {"total_s": float(rng.uniform(1, 5))}, "config": {"defence": spec.id},
                     "key": f"{len(cells):016x}"}
                if spec.kind == "clean":
                    c.update(accuracy=float(rng.uniform(0.93, 0.98)), attack_success=float(rng.uniform(0, 0.05)),
                             before_accuracy=None, before_attack_success=None, poisoned_present=0)
                elif spec.kind == "attack":
                    c.update(accuracy=before_acc, attack_success=before_asr)
                    if with_channels:
                        c["channel_activity"] = channel_activity(rng)
                else:
                    c.update(accuracy=float(rng.uniform(0.8, 0.97)), attack_success=float(rng.uniform(0, 1)))
                    if spec.kind in ("filter", "combination"):
                        rp = int(rng.integers(0, n_pois + 1))
                        rc = int(rng.integers(0, 300))
                        c.update(removed_poisoned=rp, removed_clean=rc,
                                 removed_poisoned_share=rp / n_pois, removed_clean_share=rc / (n_train - n_pois))
                    if spec.pipeline.endswith("fp") or spec.pipeline.startswith("fp"):
                        fp = spec.configs["fp"]
                        c.update(neurons_pruned=int(rng.integers(0, 128)), n_channels=128,
                                 layer=fp.get("layer", "last_conv"),
                                 fp_threshold=fp["threshold"])
                if analyses and "ac" in spec.pipeline.split(">"):
                    c["ac_analysis"] = spec.configs.get("ac", {}).get("analysis", _ANALYSIS.get(spec.id))
                if c["before_accuracy"] is not None:
                    c["delta_accuracy"] = c["accuracy"] - c["before_accuracy"]
                    c["delta_attack_success"] = c["attack_success"] - c["before_attack_success"]
                else:
                    c["delta_accuracy"] = c["delta_attack_success"] = None
                cells.append(c)
    return cells


def tiny_study(shares=(0.5,), seeds=(0,)) -> dict:
    """A whole study in seconds: the toy variant, the GTSRB CNN, one or two epochs everywhere."""
    fp = {"layer": "last_conv", "threshold": 0.04, "finetune_epochs": 1, "search": "bisect"}
    # AC's global PCA pre-reduction defaults to 256 dims, more than this set's 60 rows
    ac = {"n_components": 4, "prereduce_dims": 32}
    return {
        "name": "tiny",
        "seeds": list(seeds),
        "device": "cpu",
        "datasets": {"toy": {
            "source": "toy", "model": "gtsrb_cnn",
            "train": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.003},
            "toy": {"n_classes": 3, "n_train_per_class": 20, "n_test_per_class": 6, "n_clean_per_class": 8,
                    "group_size": 20}}},
        "settings": [{"dataset": "toy", "trigger": "yellow square", "shares": list(shares),
                      "recipe": {"trigger": "square:4:yellow", "source_class": 0, "target_class": 1}}],
        "defences": [
            "none",
            {"id": "ac", "pipeline": "ac", "configs": {"ac": dict(ac)}},
            "ss",
            {"id": "dp", "pipeline": "dp", "configs": {"dp": {"epochs": 1}}},
            {"id": "fp-last", "pipeline": "fp", "configs": {"fp": dict(fp)}},
            {"id": "fp-second-last", "pipeline": "fp", "configs": {"fp": dict(fp, layer="second_last_conv")}},
            {"id": "ac>fp", "pipeline": "ac>fp", "configs": {"ac": dict(ac), "fp": dict(fp)}},
            {"id": "fp>ac", "pipeline": "fp>ac", "configs": {"ac": dict(ac), "fp": dict(fp)}},
        ],
        "fp_thresholds": [0.02],
        "threshold_sweep": "first",
    }


def md_tables(md: str) -> dict[str, list[list[str]]]:
    """Parse the Markdown tables of a report: ``{title: rows}`` with the header row first."""
    out, title, rows = {}, None, []
    for line in md.splitlines():
        if line.startswith("### "):
            if title and rows:
                out[title] = rows
            title, rows = line[4:].strip(), []
        elif line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    if title and rows:
        out[title] = rows
    return out
