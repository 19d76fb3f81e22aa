"""The paper's reference numbers (Tables 4–7 of Milakovic & Mayer, DBSec 2022), shipped as package data.

The three CSV files in ``paper_data/`` are the project's transcription of the paper's Tables 4/7
(Activation Clustering), 5 (Fine-Pruning) and 6 (combinations): percentages as printed, deltas in
percentage points against the backdoored model, counts as counts. They live inside the package so
an installed wheel can compare a run with the paper without the repository beside it; this module
is their only reader.

It also names the **roles** of the paper's columns — which defence of our grid a paper column
corresponds to (``ac-size`` is AC with the paper's size metric, ``fp-last`` Fine-Pruning of the
last conv layer, ...) — and the **quantities** the report compares: for each paper column, the
role of the cell it is compared with and how to read the same number from that cell's per-seed
fields, in the paper's unit. The report and the claim checks both use these, so a paper column is
mapped to our cells in one place only.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Mapping

#: Where the numbers come from (printed beside every comparison in the report).
SOURCE = ("Milakovic & Mayer, \"Combining Defences against Data-Poisoning Based Backdoor Attacks on Neural "
          "Networks\", DBSec 2022 (LNCS 13383), Tables 4–7, as transcribed in the package's "
          "backdoorlab/experiments/paper_data/*.csv (percentages as printed; deltas in points against the "
          "backdoored model)")

#: Table id -> (file name, title of the paper's table).
TABLES: dict[str, tuple[str, str]] = {
    "table4": ("table4_7_activation_clustering.csv", "Tables 4/7: Activation Clustering (size metric)"),
    "table5": ("table5_fine_pruning.csv", "Table 5: Fine-Pruning, second-to-last vs last conv layer"),
    "table6": ("table6_combinations.csv", "Table 6: combinations AC→FP and FP→AC"),
}

# The header each file must have: a changed transcription must fail loudly, not shift columns.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "table4": ("dataset", "setting", "poisoned", "removed_poisoned", "removed_poisoned_pct", "removed_clean",
               "removed_clean_pct", "clean_acc_after_pct", "delta_acc_pts", "asr_after_pct", "delta_asr_pts"),
    "table5": ("dataset", "setting", "second_last_pruned", "second_last_channels", "second_last_delta_acc_pts",
               "second_last_asr_pct", "second_last_delta_asr_pts", "last_pruned", "last_channels",
               "last_delta_acc_pts", "last_asr_pct", "last_delta_asr_pts"),
    "table6": ("dataset", "setting", "asr_ac_alone_pct", "asr_fp_alone_pct", "fp_layer", "acfp_pruned",
               "acfp_channels", "acfp_clean_acc_pct", "acfp_asr_pct", "fpac_poisoned", "fpac_removed_poisoned",
               "fpac_removed_overall", "fpac_removed_overall_pct", "fpac_clean_acc_pct", "fpac_asr_pct"),
}
_TEXT_COLUMNS = {"dataset", "setting", "fp_layer"}
_FP_LAYERS = {"last": "last_conv", "second_last": "second_last_conv"}


@functools.lru_cache(maxsize=None)
def _load(table: str) -> tuple[dict[str, Any], ...]:
    if table not in TABLES:
        raise KeyError(f"unknown paper table {table!r}; known: {sorted(TABLES)}")
    name = TABLES[table][0]
    return parse_table(table, resources.files(__package__).joinpath("paper_data", name).read_text(encoding="utf-8"))


def parse_table(table: str, text: str) -> tuple[dict[str, Any], ...]:
    """Parse and check one paper CSV (header, numbers, unique rows); ``ValueError`` names the bad line."""
    name = TABLES[table][0]
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != _COLUMNS[table]:
        raise ValueError(f"paper_data/{name}: header {reader.fieldnames} is not the expected {list(_COLUMNS[table])}")
    rows, seen = [], set()
    for i, raw in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for col, v in raw.items():
            if col in _TEXT_COLUMNS:
                row[col] = v.strip()
                continue
            try:
                x = float(v)  # "+4.04", "-0.74" and "0" all parse
            except (TypeError, ValueError):
                raise ValueError(f"paper_data/{name} line {i}: column {col!r} is not a number: {v!r}") from None
            if not math.isfinite(x):
                raise ValueError(f"paper_data/{name} line {i}: column {col!r} is not finite: {v!r}")
            row[col] = x
        if table == "table6" and row["fp_layer"] not in _FP_LAYERS:
            raise ValueError(f"paper_data/{name} line {i}: fp_layer must be one of {sorted(_FP_LAYERS)}, "
                             f"got {row['fp_layer']!r}")
        key = (row["dataset"], row["setting"])
        if key in seen:
            raise ValueError(f"paper_data/{name} line {i}: duplicate row {key}")
        seen.add(key)
        rows.append(row)
    return tuple(rows)


def rows(table: str) -> list[dict[str, Any]]:
    """The rows of a paper table, in the paper's order (copies: callers may not change the reference)."""
    return [dict(r) for r in _load(table)]


def row(table: str, dataset: str, setting: str) -> dict[str, Any] | None:
    """The paper's row ``setting`` of family ``dataset`` (``gtsrb``, ``ytaf``, ``lfw``) in ``table``, or None."""
    for r in _load(table):
        if r["dataset"] == dataset and r["setting"] == setting:
            return dict(r)
    return None


def paper_rows() -> list[tuple[str, str]]:
    """Every (dataset, setting) the paper reports, in its order (the three tables share their rows)."""
    return [(r["dataset"], r["setting"]) for r in _load("table4")]


def fp_layer(dataset: str) -> str | None:
    """The conv layer the paper's combinations prune for a family (Table 6's ``fp_layer``), or None."""
    layers = {r["fp_layer"] for r in _load("table6") if r["dataset"] == dataset}
    if len(layers) != 1:
        return None
    return _FP_LAYERS[layers.pop()]


# ----------------------------------------------------------------------------------------------
# roles: which of our defences a paper column describes

ROLES = ("clean", "none", "ac-size", "ac-silhouette", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac")
# Defence ids of older results: "ac-smaller" ran the size metric, plain "ac" the silhouette analysis.
_ID_ROLES = {r: r for r in ROLES} | {"ac-smaller": "ac-size", "ac": "ac-silhouette"}


def role_of(rec: Mapping[str, Any]) -> str | None:
    """The paper role of a cell or aggregate (one of :data:`ROLES`), or None (sweeps, custom defences).

    The defence id decides; an AC cell that records its analysis (``ac_analysis``) is placed by
    that instead, so a study that calls the size metric "ac" is still compared with Table 4, and a
    combination whose AC step used another analysis than the size metric is not the paper's.
    """
    if rec.get("sweep"):
        return None
    role = _ID_ROLES.get(str(rec.get("defence")))
    analysis = rec.get("ac_analysis")
    if role in ("ac>fp", "fp>ac") and analysis not in (None, "smaller"):
        return None  # the paper's combinations run AC with the size metric; another is not its column
    if role in ("ac-size", "ac-silhouette") and analysis:
        if analysis == "smaller":
            return "ac-size"
        if analysis == "silhouette-scores":
            return "ac-silhouette"
        return None  # another analysis (distance, relative size): neither the paper's column nor ours
    return role


# ----------------------------------------------------------------------------------------------
# quantities: a paper column next to the same number read from our cells


def _pct(field: str) -> Callable[[Mapping[str, Any]], float | None]:
    def get(v: Mapping[str, Any]) -> float | None:
        x = v.get(field)
        return None if x is None else 100.0 * float(x)
    return get


def _num(field: str) -> Callable[[Mapping[str, Any]], float | None]:
    def get(v: Mapping[str, Any]) -> float | None:
        x = v.get(field)
        return None if x is None else float(x)
    return get


def _removed_overall(v: Mapping[str, Any]) -> float | None:
    if v.get("removed_poisoned") is None or v.get("removed_clean") is None:
        return None
    return float(v["removed_poisoned"]) + float(v["removed_clean"])


def _removed_overall_pct(v: Mapping[str, Any]) -> float | None:
    total = _removed_overall(v)
    if total is None or not v.get("n_train"):
        return None
    return 100.0 * total / float(v["n_train"])


@dataclass(frozen=True)
class Quantity:
    """One paper column and how to read it from our cells.

    ``role`` is the defence whose cells hold the number (``"fp-paper-layer"``: the FP alone on the
    layer the paper's combinations prune, Table 6's ``fp_layer``); ``value`` reads it from one
    seed's numeric fields in the paper's unit; ``unit`` is ``"%"``, ``"pts"`` or ``"count"``.
    """

    table: str
    column: str
    label: str
    role: str
    unit: str
    value: Callable[[Mapping[str, Any]], float | None]


def _fp_columns(prefix: str, role: str, layer: str) -> list[Quantity]:
    return [Quantity("table5", f"{prefix}_pruned", f"{layer}: channels pruned", role, "count", _num("neurons_pruned")),
            Quantity("table5", f"{prefix}_channels", f"{layer}: channels in layer", role, "count", _num("n_channels")),
            Quantity("table5", f"{prefix}_delta_acc_pts", f"{layer}: Δ clean accuracy", role, "pts",
                     _pct("delta_accuracy")),
            Quantity("table5", f"{prefix}_asr_pct", f"{layer}: attack success", role, "%", _pct("attack_success")),
            Quantity("table5", f"{prefix}_delta_asr_pts", f"{layer}: Δ attack success", role, "pts",
                     _pct("delta_attack_success"))]


QUANTITIES: dict[str, list[Quantity]] = {
    "table4": [
        Quantity("table4", "poisoned", "poisoned training images", "ac-size", "count", _num("poisoned_present")),
        Quantity("table4", "removed_poisoned", "removed poisoned", "ac-size", "count", _num("removed_poisoned")),
        Quantity("table4", "removed_poisoned_pct", "removed poisoned (% of poisoned)", "ac-size", "%",
                 _pct("removed_poisoned_share")),
        Quantity("table4", "removed_clean", "removed clean", "ac-size", "count", _num("removed_clean")),
        Quantity("table4", "removed_clean_pct", "removed clean (% of clean)", "ac-size", "%",
                 _pct("removed_clean_share")),
        Quantity("table4", "clean_acc_after_pct", "clean accuracy after", "ac-size", "%", _pct("accuracy")),
        Quantity("table4", "delta_acc_pts", "Δ clean accuracy", "ac-size", "pts", _pct("delta_accuracy")),
        Quantity("table4", "asr_after_pct", "attack success after", "ac-size", "%", _pct("attack_success")),
        Quantity("table4", "delta_asr_pts", "Δ attack success", "ac-size", "pts", _pct("delta_attack_success")),
    ],
    "table5": (_fp_columns("second_last", "fp-second-last", "2nd-last conv")
               + _fp_columns("last", "fp-last", "last conv")),
    "table6": [
        Quantity("table6", "asr_ac_alone_pct", "AC alone: attack success", "ac-size", "%", _pct("attack_success")),
        Quantity("table6", "asr_fp_alone_pct", "FP alone (paper's layer): attack success", "fp-paper-layer", "%",
                 _pct("attack_success")),
        Quantity("table6", "acfp_pruned", "AC→FP: channels pruned", "ac>fp", "count", _num("neurons_pruned")),
        Quantity("table6", "acfp_channels", "AC→FP: channels in layer", "ac>fp", "count", _num("n_channels")),
        Quantity("table6", "acfp_clean_acc_pct", "AC→FP: clean accuracy", "ac>fp", "%", _pct("accuracy")),
        Quantity("table6", "acfp_asr_pct", "AC→FP: attack success", "ac>fp", "%", _pct("attack_success")),
        Quantity("table6", "fpac_poisoned", "FP→AC: poisoned training images", "fp>ac", "count",
                 _num("poisoned_present")),
        Quantity("table6", "fpac_removed_poisoned", "FP→AC: removed poisoned", "fp>ac", "count",
                 _num("removed_poisoned")),
        Quantity("table6", "fpac_removed_overall", "FP→AC: removed overall", "fp>ac", "count", _removed_overall),
        Quantity("table6", "fpac_removed_overall_pct", "FP→AC: removed overall (% of training set)", "fp>ac", "%",
                 _removed_overall_pct),
        Quantity("table6", "fpac_clean_acc_pct", "FP→AC: clean accuracy", "fp>ac", "%", _pct("accuracy")),
        Quantity("table6", "fpac_asr_pct", "FP→AC: attack success", "fp>ac", "%", _pct("attack_success")),
    ],
}


def resolve_role(role: str, dataset: str) -> str:
    """``"fp-paper-layer"`` -> ``"fp-last"`` / ``"fp-second-last"`` for the family; other roles unchanged."""
    if role != "fp-paper-layer":
        return role
    layer = fp_layer(dataset)
    if layer is None:
        raise KeyError(f"the paper names no Fine-Pruning layer for data set {dataset!r}")
    return "fp-last" if layer == "last_conv" else "fp-second-last"
