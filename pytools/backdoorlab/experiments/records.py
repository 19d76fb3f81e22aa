"""The cell record: the fields every finished cell holds, its CSV row, and the mean over seeds.

A cell is one (setting, defence, seed) point of the study. Its record is flat where the paper's
tables need a number and nested only for provenance (the full configuration, the per-step
pipeline report, versions, timings). Fractions are stored as fractions in [0, 1] (accuracy,
attack success, shares of samples removed) and deltas as differences of fractions; the report
prints them as percentages and percentage points. Fields that do not apply to a cell are
``None`` (e.g. ``neurons_pruned`` of a data-filtering defence), never 0, so "did not prune" and
"pruned none" stay distinct.

``aggregate_cells`` averages the seeds of each (setting, defence) pair and keeps every seed's
values beside the mean (``by_seed``): the tables print mean ± sd (n), and the findings compare
defences seed by seed, so a direction is stated only when every seed shows it. The tables, plots
and findings all read those aggregates, so they agree with one another and with ``cells.json``.

Optional fields (absent in cells of older runs, read with defaults): ``paper_row`` (the row label
of the paper's Tables 4–7 this setting reproduces, or None), ``ac_analysis`` (the analysis of the
cell's AC step) and, on the undefended model's cells, ``channel_activity`` (per-channel mean
activation of clean and triggered test inputs in the last two conv layers, for Figs. 7/8).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping

# What two runs of the same cell differ in by design: when, by which command, with which versions
# and how long (with every key ending in "seconds"). The rest of a cell is its result.
RUN_FIELDS: frozenset[str] = frozenset({"timings", "created", "command", "versions"})


def without_run_fields(obj: Any) -> Any:
    """``obj`` (a cell, a list of cells, any nesting) without :data:`RUN_FIELDS` and ``*seconds`` keys:
    what two runs of the same cells must agree on."""
    if isinstance(obj, dict):
        return {k: without_run_fields(v) for k, v in obj.items() if k not in RUN_FIELDS and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [without_run_fields(v) for v in obj]
    return obj


# Flat fields of a cell, in CSV column order. The CSV holds exactly these; cells.json holds the
# whole record (these plus config, steps, versions, timings).
CSV_COLUMNS: tuple[str, ...] = (
    "key", "setting", "dataset", "trigger", "preset", "poison_share", "defence", "defence_label", "kind",
    "pipeline", "sweep", "seed", "n_train", "poisoned_present",
    "before_accuracy", "before_attack_success", "accuracy", "attack_success",
    "delta_accuracy", "delta_attack_success",
    "removed_poisoned", "removed_clean", "removed_poisoned_share", "removed_clean_share",
    "neurons_pruned", "n_channels", "layer", "fp_threshold",
    "time_total_s", "backdoorlab_version", "torch_version", "numpy_version",
)

# Optional fields that cells of older runs lack; cells.csv has them after CSV_COLUMNS (empty when absent).
EXTRA_CSV_COLUMNS: tuple[str, ...] = ("paper_row", "ac_analysis", "poison_count", "share_achieved")

# Required fields and their types (None allowed where a field may not apply).
REQUIRED: dict[str, tuple[type, ...]] = {
    "setting": (str,), "dataset": (str,), "trigger": (str,), "poison_share": (float, int),
    "defence": (str,), "kind": (str,), "pipeline": (str,), "seed": (int,),
    "accuracy": (float, int), "attack_success": (float, int),
}
NUMERIC_FIELDS = ("poison_share", "n_train", "poisoned_present", "before_accuracy", "before_attack_success",
                  "accuracy", "attack_success", "delta_accuracy", "delta_attack_success", "removed_poisoned",
                  "removed_clean", "removed_poisoned_share", "removed_clean_share", "neurons_pruned",
                  "n_channels", "fp_threshold", "time_total_s")
# Fields that identify an aggregate: equal across the seeds of one (setting, defence).
IDENTITY_FIELDS = ("setting", "dataset", "trigger", "preset", "paper_row", "poison_share", "defence",
                   "defence_label", "kind", "pipeline", "ac_analysis", "layer", "fp_threshold", "preview", "sweep")
# The conv layers of ``channel_activity`` and the inputs each holds a per-channel mean for.
CHANNEL_LAYERS = ("last_conv", "second_last_conv")
CHANNEL_INPUTS = ("clean", "triggered")


def validate_cell(cell: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when a cell record is malformed."""
    if not isinstance(cell, Mapping):
        raise TypeError(f"a cell must be a mapping, got {type(cell).__name__}")
    for name, types in REQUIRED.items():
        if name not in cell:
            raise ValueError(f"cell {cell.get('setting')!r}/{cell.get('defence')!r} lacks field {name!r}")
        v = cell[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise ValueError(f"cell field {name!r} must be {types[0].__name__}, got {v!r}")
    for name in ("accuracy", "attack_success", "before_accuracy", "before_attack_success",
                 "removed_poisoned_share", "removed_clean_share"):
        v = cell.get(name)
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
            raise ValueError(f"cell field {name!r} must be a fraction in [0, 1] or null, got {v!r}")
    for name in ("paper_row", "ac_analysis"):
        v = cell.get(name)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"cell field {name!r} must be a string or null, got {v!r}")
    if cell.get("channel_activity") is not None:
        _check_channel_activity(cell["channel_activity"])


def _check_channel_activity(ca: Any) -> None:
    """``{layer: {"clean": [C floats], "triggered": [C floats]}}`` for some of :data:`CHANNEL_LAYERS`."""
    if not isinstance(ca, Mapping):
        raise ValueError(f"cell field 'channel_activity' must be a mapping of layers, got {type(ca).__name__}")
    for layer, by_input in ca.items():
        if layer not in CHANNEL_LAYERS:
            raise ValueError(f"channel_activity: unknown layer {layer!r}; expected {list(CHANNEL_LAYERS)}")
        if not isinstance(by_input, Mapping) or set(by_input) != set(CHANNEL_INPUTS):
            raise ValueError(f"channel_activity[{layer!r}] must map exactly {list(CHANNEL_INPUTS)} to lists")
        lengths = set()
        for inp in CHANNEL_INPUTS:
            vals = by_input[inp]
            if (not isinstance(vals, (list, tuple)) or not vals
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                               for x in vals)):
                raise ValueError(f"channel_activity[{layer!r}][{inp!r}] must be a non-empty list of finite numbers")
            lengths.add(len(vals))
        if len(lengths) != 1:
            raise ValueError(f"channel_activity[{layer!r}]: clean and triggered have different channel counts "
                             f"{sorted(lengths)}")


def csv_row(cell: Mapping[str, Any]) -> dict[str, Any]:
    """The flat CSV row of a cell (``CSV_COLUMNS`` then ``EXTRA_CSV_COLUMNS``; versions and total time
    lifted out of their dicts)."""
    versions = cell.get("versions") or {}
    timings = cell.get("timings") or {}
    row = {c: cell.get(c) for c in CSV_COLUMNS + EXTRA_CSV_COLUMNS}
    row["time_total_s"] = timings.get("total_s")
    row["backdoorlab_version"] = versions.get("backdoorlab")
    row["torch_version"] = versions.get("torch")
    row["numpy_version"] = versions.get("numpy")
    return row


def aggregate_cells(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average the seeds of each (setting, defence) pair.

    Returns one record per pair, in the order pairs first appear in ``cells``, with the identity
    fields, the mean of every numeric field (``None`` when no seed has it), ``<field>_sd`` (sample
    standard deviation, ``None`` with one seed), ``<field>_n`` (seeds that have it), ``n_seeds``,
    ``seeds``, ``keys``, ``by_seed`` (``{seed: {numeric field: value}}``, for comparisons seed by
    seed) and ``channel_activity`` (``{seed: ...}`` of the seeds that recorded it).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in cells:
        validate_cell(c)
        groups.setdefault((c["setting"], c["defence"]), []).append(c)
    out = []
    for (setting, defence), members in groups.items():
        first = members[0]
        rec: dict[str, Any] = {f: first.get(f) for f in IDENTITY_FIELDS}
        for f in IDENTITY_FIELDS:
            vals = {repr(m.get(f)) for m in members}
            if len(vals) > 1 and f not in ("preview", "defence_label"):
                raise ValueError(f"seeds of {setting!r}/{defence!r} disagree on {f!r}: {sorted(vals)}")
        for f in NUMERIC_FIELDS:
            vals = [float(m[f]) for m in members if m.get(f) is not None]
            rec[f] = statistics.fmean(vals) if vals else None
            rec[f + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            rec[f + "_n"] = len(vals)
        seeds = [int(m["seed"]) for m in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{setting!r}/{defence!r} has more than one cell for seed(s) "
                             f"{sorted({s for s in seeds if seeds.count(s) > 1})}")
        rec["n_seeds"] = len(members)
        rec["seeds"] = sorted(seeds)
        rec["keys"] = [m.get("key") for m in members]
        rec["by_seed"] = {int(m["seed"]): {f: m.get(f) for f in NUMERIC_FIELDS} for m in members}
        rec["channel_activity"] = {int(m["seed"]): m["channel_activity"] for m in members
                                   if m.get("channel_activity")}
        out.append(rec)
    return out


def index_by(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``{(setting, defence): record}`` for lookups."""
    return {(r["setting"], r["defence"]): r for r in records}


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None below two values) and count of the non-missing values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string ('97.3'); '–' for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100.0 * x:.{digits}f}"


def signed_points(x: float | None, digits: int = 1) -> str:
    """A difference of fractions in percentage points with its sign ('+0.4', '-12.3')."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    v = round(100.0 * x, digits)
    if v == 0:
        v = 0.0  # no '-0.0'
    return f"{v:+.{digits}f}"
