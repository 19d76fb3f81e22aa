"""The study report: tables shaped like the paper's, written as Markdown, HTML, CSV and JSON.

From the finished cells this module builds

* the **main table** — attack success (and clean accuracy) of every defence per setting;
* **Table A** — the attack itself: clean vs poisoned model (the numbers behind Fig. 1);
* **Table 4** — data-filtering defences (AC, SS, DP): poisoned samples present, removed poisoned
  and clean (counts and %), accuracy, Δ accuracy, attack success, Δ attack success;
* **Table 5** — Fine-Pruning: layer, threshold, neurons pruned, accuracy and attack success with
  their Δ;
* **Table 6** — combinations (AC→FP, FP→AC, …) with the columns of both kinds;
* **the paper beside ours** — for every setting that reproduces a row of the paper's Tables 4–7
  (``paper_row``), each of the paper's numbers next to ours (mean ± sd, n) and the difference,
  from the reference data shipped in the package (:mod:`backdoorlab.experiments.paper`);
* **the paper's claims** — each claim of the paper checked on this run (agree / disagree / not
  distinguishable / not run, see :mod:`backdoorlab.experiments.claims`);

and writes ``cells.json`` (every cell record, in full), ``cells.csv`` (one flat row per cell),
``tables.json`` (the tables as data, with the cache keys behind each row), ``report.md`` and
``report.html`` (self-contained: figures and trigger previews embedded as base64 PNG), plus the
figures of :mod:`backdoorlab.experiments.plots` and the findings of
:mod:`backdoorlab.experiments.findings`. Every Δ is measured against the undefended poisoned model
of the same setting and seed (``before_*`` in the cell), in percentage points.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from datasets_gen.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

from . import claims as claims_mod
from . import findings as findings_mod
from . import paper, plots
from .records import (CSV_COLUMNS, EXTRA_CSV_COLUMNS, aggregate_cells, csv_row, index_by, mean_sd, pct, signed_points,
                      validate_cell)


@dataclass
class Table:
    """One report table: header, formatted rows, and the cache keys each row was computed from."""

    id: str
    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    sources: list[list[str]] = field(default_factory=list)

    def add(self, row: Sequence[Any], keys: Iterable[str]) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"table {self.id}: row has {len(row)} cells for {len(self.columns)} columns")
        self.rows.append([str(x) for x in row])
        self.sources.append([k for k in keys if k])


def _sd_suffix(rec: Mapping[str, Any], f: str) -> str:
    sd = rec.get(f + "_sd")
    return "" if sd is None else f" ± {100 * sd:.1f}"


def _n_suffix(rec: Mapping[str, Any], f: str, common: int) -> str:
    """' (n=2)' when fewer seeds than the study's usual number hold this value (failed or missing)."""
    n = rec.get(f + "_n", rec.get("n_seeds", 1))
    return f" (n={n})" if n is not None and n < common else ""


def _val(rec: Mapping[str, Any], f: str, common: int) -> str:
    """A rate as 'mean ± sd' in %, with '(n=k)' when it rests on fewer seeds than the others."""
    return pct(rec.get(f)) + _sd_suffix(rec, f) + _n_suffix(rec, f, common)


def _cnt(rec: Mapping[str, Any], f: str, common: int) -> str:
    """A count as 'mean ± sd' (one decimal where not whole), with '(n=k)' like :func:`_val`."""
    sd = rec.get(f + "_sd")
    return _count(rec.get(f)) + ("" if sd is None else f" ± {sd:.1f}") + _n_suffix(rec, f, common)


def _delta(rec: Mapping[str, Any], f: str) -> str:
    """A difference of fractions in signed points, '± sd' with several seeds."""
    return signed_points(rec.get(f)) + _sd_suffix(rec, f)


def _common_n(agg: Sequence[Mapping[str, Any]]) -> int:
    return max((r.get("n_seeds") or 1) for r in agg) if agg else 1


def _seeds_caption(common: int) -> str:
    return ("" if common <= 1 else f" Values are mean ± standard deviation over the {common} seeds; '(n=k)' marks "
            "a value resting on fewer seeds.")


def _share(x: float | None) -> str:
    return "–" if x is None else f"{round(100 * x, 4):g}"


def _count(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _pruned(rec: Mapping[str, Any]) -> str:
    n, c = rec.get("neurons_pruned"), rec.get("n_channels")
    if n is None:
        return "–"
    sd = rec.get("neurons_pruned_sd")
    return (f"{_count(n)}/{_count(c)}" if c is not None else _count(n)) + ("" if sd is None else f" ± {sd:.1f}")


def _layer(rec: Mapping[str, Any]) -> str:
    return {"last_conv": "last conv", "second_last_conv": "2nd-last conv"}.get(rec.get("layer"), rec.get("layer") or "–")


def _settings_in_order(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in agg:
        seen.setdefault(r["setting"], None)
    return list(seen)


def _defences_in_order(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in agg:
        seen.setdefault(r["defence"], None)
    return list(seen)


def build_tables(agg: Sequence[Mapping[str, Any]]) -> list[Table]:
    """The report's tables from aggregated records (see :func:`records.aggregate_cells`)."""
    idx = index_by(agg)
    settings = _settings_in_order(agg)
    defences = _defences_in_order(agg)
    settings_of: dict[str, set] = {}
    for r in agg:
        settings_of.setdefault(r["defence"], set()).add(r["setting"])
    label = {r["defence"]: (r.get("defence_label") or r["defence"]) for r in agg}
    kind = {r["defence"]: r["kind"] for r in agg}
    sweep = {r["defence"] for r in agg if r.get("sweep")}
    main_defences = [d for d in defences if kind[d] != "clean" and d not in sweep]
    n = _common_n(agg)
    seeds_txt = _seeds_caption(n)

    tables: list[Table] = []

    main = Table("main", "Main table: attack success after each defence",
                 "Attack success rate in % on the triggered test images, with clean test accuracy in % in "
                 "brackets, for every setting (rows) and defence (columns). 'no defence' is the poisoned model."
                 + seeds_txt,
                 ["Setting", "Trigger", "Share %"] + [label[d] for d in main_defences])
    for s in settings:
        recs = [idx.get((s, d)) for d in main_defences]
        any_rec = next(r for r in agg if r["setting"] == s)
        row = [s, any_rec["trigger"], _share(any_rec["poison_share"])]
        row += [("–" if r is None else f"{_val(r, 'attack_success', n)} ({_val(r, 'accuracy', n)})") for r in recs]
        main.add(row, [k for r in recs if r for k in r["keys"]])
    tables.append(main)

    attack = Table("attack", "Table A: the attack (clean vs poisoned model)",
                   "Clean test accuracy and attack success of the model trained without the poisoned rows "
                   "(clean) and of the poisoned model; Δ accuracy = poisoned − clean, in points." + seeds_txt,
                   ["Setting", "Data", "Trigger", "Share %", "Poisoned samples", "Clean acc %", "Poisoned acc %",
                    "Δ acc", "ASR clean model %", "ASR poisoned model %"])
    for s in settings:
        none, clean = idx.get((s, "none")), idx.get((s, "clean"))
        ref = none or clean
        if ref is None:
            continue
        d_acc = (none["accuracy"] - clean["accuracy"]) if (none and clean) else None
        attack.add([s, ref["dataset"], ref["trigger"], _share(ref["poison_share"]),
                    _count(none.get("poisoned_present")) if none else "–",
                    _val(clean, "accuracy", n) if clean else "–",
                    _val(none, "accuracy", n) if none else "–",
                    signed_points(d_acc),
                    _val(clean, "attack_success", n) if clean else "–",
                    _val(none, "attack_success", n) if none else "–"],
                   (none or {}).get("keys", []) + (clean or {}).get("keys", []))
    tables.append(attack)

    t4 = Table("table4", "Table 4: data-filtering defences (AC, SS, DP)",
               "Poisoned training samples present, removed poisoned and removed clean samples (count and % of "
               "the poisoned resp. clean samples), then the retrained model's clean accuracy and attack success "
               "with their change against the poisoned model (Δ, points)." + seeds_txt,
               ["Setting", "Defence", "Poisoned present", "Removed poisoned", "Removed poisoned %",
                "Removed clean", "Removed clean %", "Acc %", "Δ acc", "ASR %", "Δ ASR"])
    t5 = Table("table5", "Table 5: Fine-Pruning",
               "Channels of the pruned layer removed (pruned/total) until clean-set accuracy fell by more than "
               "the threshold, then fine-tuned on the clean set; Δ against the poisoned model, points." + seeds_txt,
               ["Setting", "Defence", "Layer", "Threshold %", "Neurons pruned", "Acc %", "Δ acc", "ASR %", "Δ ASR"])
    t6 = Table("table6", "Table 6: combined defences",
               "Defences in sequence (AC→FP: filter, retrain, then prune; FP→AC: prune and fine-tune, then "
               "filter with the pruned model's activations and retrain). Removals from the filtering step, "
               "neurons from the pruning step; Δ against the poisoned model, points." + seeds_txt,
               ["Setting", "Order", "Removed poisoned", "Removed poisoned %", "Removed clean", "Removed clean %",
                "Neurons pruned", "Acc %", "Δ acc", "ASR %", "Δ ASR"])
    for s in settings:
        for d in defences:
            r = idx.get((s, d))
            if r is None:
                continue
            tail = [_val(r, "accuracy", n), _delta(r, "delta_accuracy"),
                    _val(r, "attack_success", n), _delta(r, "delta_attack_success")]
            if r["kind"] == "filter":
                t4.add([s, label[d], _count(r.get("poisoned_present")), _cnt(r, "removed_poisoned", n),
                        _val(r, "removed_poisoned_share", n), _cnt(r, "removed_clean", n),
                        _val(r, "removed_clean_share", n)] + tail, r["keys"])
            elif r["kind"] == "repair":
                t5.add([s, label[d], _layer(r), _share(r.get("fp_threshold")), _pruned(r)] + tail, r["keys"])
            elif r["kind"] == "combination":
                t6.add([s, label[d], _cnt(r, "removed_poisoned", n), _val(r, "removed_poisoned_share", n),
                        _cnt(r, "removed_clean", n), _val(r, "removed_clean_share", n), _pruned(r)] + tail,
                       r["keys"])
    tables += [t4, t5, t6]
    return tables


# ----------------------------------------------------------------------------------------------
# the paper's tables beside ours


def _paper_num(v: float, unit: str) -> str:
    if unit == "count":
        return f"{v:.0f}"
    return f"{v:+.2f}" if unit == "pts" else f"{v:.2f}"


def _ours_num(m: float, sd: float | None, unit: str) -> str:
    if unit == "count":
        body = f"{m:.1f}".removesuffix(".0") + ("" if sd is None else f" ± {sd:.1f}")
    else:
        body = (f"{m:+.1f}" if unit == "pts" else f"{m:.1f}") + ("" if sd is None else f" ± {sd:.1f}")
    return body


def paper_tables(agg: Sequence[Mapping[str, Any]]) -> list[Table]:
    """The paper's Tables 4/7, 5 and 6 with our numbers beside each of theirs.

    Rows: every row of the paper for the data-set families that have at least one setting with a
    ``paper_row``; one line per (paper row, our setting, paper column). A paper row no setting
    reproduces is listed once as not run. Empty when no cell names a paper row.
    """
    mapped: dict[tuple[str, str], dict[str, dict[str, Mapping[str, Any]]]] = {}
    for r in agg:
        role = paper.role_of(r)
        if r.get("paper_row") and role is not None:
            if paper.row("table4", r["dataset"], r["paper_row"]) is None:
                raise ValueError(f"setting {r['setting']!r} names paper_row {r['paper_row']!r}, which is not a row "
                                 f"of the paper's tables for data set {r['dataset']!r}; rows: "
                                 f"{[s for d, s in paper.paper_rows() if d == r['dataset']]}")
            mapped.setdefault((r["dataset"], r["paper_row"]), {}).setdefault(r["setting"], {}).setdefault(role, r)
    families = {d for d, _ in mapped}
    if not families:
        return []
    tables = []
    for tid, (_, title) in paper.TABLES.items():
        t = Table(f"paper_{tid}", f"{title}: the paper beside ours",
                  "Each of the paper's numbers for this table next to ours for the same row (our setting), as "
                  "mean ± standard deviation over n seeds, and the difference ours − paper (points for % and Δ "
                  "columns). Δ columns are against the backdoored model in both. Source: " + paper.SOURCE + ".",
                  ["Paper row", "Our setting", "Quantity", "Paper", "Ours", "n", "Ours − paper"])
        for dataset, row_label in paper.paper_rows():
            if dataset not in families:
                continue
            prow = paper.row(tid, dataset, row_label)
            settings = mapped.get((dataset, row_label), {})
            name = f"{dataset}: {row_label}"
            if not settings:
                t.add([name, "–", "(every column)", "–", "not run", "0", "–"], [])
                continue
            for setting, roles in settings.items():
                for q in paper.QUANTITIES[tid]:
                    rec = roles.get(paper.resolve_role(q.role, dataset))
                    pv = prow[q.column]
                    if rec is None:
                        t.add([name, setting, q.label, _paper_num(pv, q.unit), "not run", "0", "–"], [])
                        continue
                    m, sd, k = mean_sd(q.value(v) for v in (rec.get("by_seed") or {}).values())
                    if m is None:
                        t.add([name, setting, q.label, _paper_num(pv, q.unit), "–", "0", "–"], rec["keys"])
                        continue
                    t.add([name, setting, q.label, _paper_num(pv, q.unit), _ours_num(m, sd, q.unit), str(k),
                           f"{m - pv:+.1f}"], rec["keys"])
        tables.append(t)
    return tables


# ----------------------------------------------------------------------------------------------
# rendering


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def table_markdown(t: Table) -> str:
    lines = [f"### {t.title}", "", t.caption, ""]
    if not t.rows:
        lines.append("_No cells of this kind in this study._")
        return "\n".join(lines) + "\n"
    lines.append("| " + " | ".join(_md_escape(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(t.columns))) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def table_html(t: Table) -> str:
    parts = [f"<h3 id='{html.escape(t.id)}'>{html.escape(t.title)}</h3>", f"<p class='caption'>{html.escape(t.caption)}</p>"]
    if not t.rows:
        parts.append("<p><em>No cells of this kind in this study.</em></p>")
        return "\n".join(parts)
    parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr></thead><tbody>")
    for row in t.rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
.caption{color:#555;font-size:0.9em}img{max-width:100%;border:1px solid #ddd;margin:0.3em 0}
code{background:#f6f6f6;padding:0 3px}.fail{color:#a00}
h3#claims+p+table td{text-align:left;vertical-align:top}
"""


def _img_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def claims_table(claims: Sequence[claims_mod.Claim]) -> Table:
    """The claim checks as a report table (the keys of the cells behind each verdict as sources)."""
    t = Table("claims", "The paper's claims against this run",
              "Each claim of the paper (SPEC.md), the paper's own numbers for it, ours, and the verdict. A "
              "setting supports a claim when every seed shows it (at least "
              f"{findings_mod.MIN_SEEDS} seeds; per-seed differences under {findings_mod.TIE_POINTS:g} point count "
              "as none); the claim agrees when more than half of the tested settings support it, disagrees when "
              "more than half contradict it, and is 'not distinguishable' otherwise. Paper numbers from "
              + paper.SOURCE + ".",
              ["Claim", "The paper", "This run", "Verdict"])
    for c in claims:
        t.add([c.claim, c.paper, c.ours, c.verdict], c.keys)
    return t


def _paper_section_note(tables: Sequence[Table]) -> str | None:
    if any(t.id.startswith("paper_") for t in tables):
        return None
    return ("_No setting of this study reproduces a row of the paper's Tables 4–7 (no cell names a `paper_row`: "
            "other data, triggers or shares), so no number is put beside the paper's; the paper's claims are "
            "checked above._")



# ---------------------------------------------------------------------------- NC and STRIP details

#: Pixels per mask pixel in the NC mask grids, and masks per grid row.
_MASK_SCALE, _MASK_COLS = 2, 11


def mask_grid(masks: np.ndarray, flagged: Iterable[int] = (), target: int | None = None) -> np.ndarray:
    """Every class's reversed mask in one BGR image (white = mask on), classes in rows of 11.

    The frame of a flagged class is red, the attack's target's (when not flagged) blue, others grey;
    a flagged target's frame is red: the reader sees at once whether NC named the right class.

    Parameters
    ----------
    masks : array of shape (K, H, W), uint8 (255 = fully on)
    flagged : class ids NC flagged
    target : the attack's target class, if known
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] == 0 or masks.dtype != np.uint8:
        raise ValueError(f"masks must be a non-empty uint8 array (K, H, W), got {masks.dtype} {masks.shape}")
    k, h, w = masks.shape
    flagged = {int(c) for c in flagged}
    pad = 2
    cell_h, cell_w = h * _MASK_SCALE + 2 * pad, w * _MASK_SCALE + 2 * pad
    cols = min(k, _MASK_COLS)
    rows = -(-k // cols)
    grid = np.full((rows * (cell_h + 2), cols * (cell_w + 2), 3), 255, np.uint8)
    for i in range(k):
        colour = (0, 0, 220) if i in flagged else (220, 90, 0) if i == target else (170, 170, 170)
        r, c = divmod(i, cols)
        y, x = r * (cell_h + 2), c * (cell_w + 2)
        grid[y:y + cell_h, x:x + cell_w] = colour
        big = np.repeat(np.repeat(masks[i], _MASK_SCALE, 0), _MASK_SCALE, 1)
        grid[y + pad:y + cell_h - pad, x + pad:x + cell_w - pad] = big[:, :, None]
    return grid


def _defence_steps(cells: Sequence[Mapping[str, Any]], name: str) -> list[tuple[Mapping[str, Any], Mapping]]:
    """(cell, step) for every step named ``name`` in the defence cells, in report order."""
    found = [(c, st) for c in cells for st in (c.get("steps") or []) if st.get("name") == name]
    return sorted(found, key=lambda cs: (str(cs[0]["setting"]), str(cs[0]["defence"]), int(cs[0]["seed"])))


def _rel_if_inside(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix() if p.is_file() else None
    except ValueError:
        return None


def nc_strip_details(cells: Sequence[Mapping[str, Any]], root: Path) -> tuple[list[Table], list[dict]]:
    """The Neural Cleanse and STRIP tables of a study and one mask-grid figure per NC step.

    The grids are drawn from the masks every NC step records (``report["masks"]``) into
    ``root/figures/nc_masks/``; the flagged classes' reversed triggers (mask x pattern) are linked when
    the step wrote them inside ``root`` (the runner gives every cell a mask folder).
    """
    import cv2

    nc_table = Table("nc_details", "Neural Cleanse: reversed triggers",
                     "Per NC step: the classes flagged (anomaly index > 2 on the small side), the attack's target "
                     "with its anomaly index and mask L1 norm (pixels), the median norm over classes, how many "
                     "classes' searches reached the attack-success threshold, and the model after the step.",
                     ["setting", "defence", "seed", "flagged", "target: index / L1", "median L1", "converged",
                      "accuracy after", "attack success after"])
    strip_table = Table("strip_details", "STRIP: rejection at test time",
                        "Per STRIP step: the entropy threshold (nats) set on the clean split at the chosen false-"
                        "rejection rate, the triggered test inputs rejected, the clean test inputs wrongly rejected, "
                        "and the mean entropies.",
                        ["setting", "defence", "seed", "threshold", "triggered rejected", "clean rejected",
                         "entropy triggered / clean"])
    figures: list[dict] = []
    for cell, st in _defence_steps(cells, "nc"):
        rep = st.get("report") or {}
        keys = [cell.get("key") or ""]
        flagged = [int(c) for c in rep.get("flagged_classes", [])]
        target = cell.get("target_class")
        index, l1 = rep.get("anomaly_index") or [], rep.get("mask_l1") or []
        tgt = (f"{index[target]:.2f} / {l1[target]:.1f}" if isinstance(target, int) and target < len(index)
               else "–")
        nc_table.add([cell["setting"], cell["defence"], cell["seed"], ", ".join(map(str, flagged)) or "none", tgt,
                      f"{rep.get('median_l1', float('nan')):.1f}",
                      f"{sum(map(bool, rep.get('reached', [])))}/{len(rep.get('reached', []))}",
                      pct(st.get("clean_accuracy")), pct(st.get("attack_success_rate"))], keys)
        masks = rep.get("masks")
        if not masks:
            continue
        rel = Path("figures") / "nc_masks" / f"{_slug_name(cell)}_step{st.get('step', 1)}.png"
        ok, png = cv2.imencode(".png", mask_grid(np.asarray(masks, dtype=np.uint8), flagged, target))
        if not ok:
            raise RuntimeError(f"could not encode the NC mask grid of {rel}")
        atomic_write_bytes(root / rel, png.tobytes())
        triggers = [(c, _rel_if_inside(str(Path(p).with_name(f"trigger_class_{c}.png")), root))
                    for c, p in zip(rep.get("classes", []), rep.get("mask_pngs") or []) if c in flagged]
        figures.append({"title": f"NC masks: {cell['setting']} / {cell['defence']} (seed {cell['seed']})",
                        "caption": (f"Reversed masks of all {len(masks)} classes, class 0 top left, 11 per row "
                                    f"(white = on). Red frame: flagged ({', '.join(map(str, flagged)) or 'none'}); "
                                    f"blue frame: the attack's target {target} when not flagged."),
                        "path": rel.as_posix(), "triggers": [(c, r) for c, r in triggers if r]})
    for cell, st in _defence_steps(cells, "strip"):
        rep = st.get("report") or {}

        def _pct_or_dash(k: str) -> str:
            return f"{rep[k]:.1f} %" if rep.get(k) is not None else "–"

        ent = (f"{rep['test_triggered_entropy_mean']:.3f} / {rep['test_entropy_mean']:.3f}"
               if rep.get("test_triggered_entropy_mean") is not None and rep.get("test_entropy_mean") is not None
               else "–")
        strip_table.add([cell["setting"], cell["defence"], cell["seed"], f"{rep.get('threshold', float('nan')):.3f}",
                         _pct_or_dash("test_triggered_rejected_pct"), _pct_or_dash("test_clean_rejected_pct"), ent],
                        [cell.get("key") or ""])
    tables = [t for t in (nc_table, strip_table) if t.rows]
    return tables, figures


def _slug_name(cell: Mapping[str, Any]) -> str:
    s = f"{cell['setting']}_{cell['defence']}_s{cell['seed']}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def _details_markdown(tables: Sequence[Table], figures: Sequence[Mapping[str, Any]]) -> list[str]:
    if not tables:
        return []
    out = ["## Neural Cleanse and STRIP", ""]
    for t in tables:
        out.append(table_markdown(t))
    for fig in figures:
        out += [f"### {fig['title']}", "", fig["caption"], "", f"![{fig['title']}]({fig['path']})", ""]
        for c, rel in fig["triggers"]:
            out += [f"Reversed trigger of class {c} (mask x pattern): ![trigger {c}]({rel})", ""]
    return out


def _details_html(tables: Sequence[Table], figures: Sequence[Mapping[str, Any]], root: Path) -> list[str]:
    if not tables:
        return []
    e = html.escape
    body = ["<h2>Neural Cleanse and STRIP</h2>"] + [table_html(t) for t in tables]
    for fig in figures:
        body.append(f"<h3>{e(fig['title'])}</h3><p class='caption'>{e(fig['caption'])}</p>"
                    f"<img alt='{e(fig['title'])}' src='{_img_data_uri(root / fig['path'])}'>")
        for c, rel in fig["triggers"]:
            body.append(f"<p>Reversed trigger of class {c} (mask x pattern): <img alt='trigger {c}' "
                        f"style='width:96px;image-rendering:pixelated' src='{_img_data_uri(root / rel)}'></p>")
    return body


def render_markdown(meta: Mapping[str, Any], tables: Sequence[Table], figures: Mapping[str, Mapping[str, str]],
                    previews: Mapping[str, str], findings: Sequence[str],
                    claims: Sequence[claims_mod.Claim] = (), details: tuple = ((), ())) -> str:
    """The Markdown report; figures and previews are linked relative to the results folder."""
    out = [f"# backdoorlab study report: {meta.get('name', 'study')}", ""]
    out += _meta_lines(meta) + [""]
    if claims:
        out += ["## Against the paper", "", table_markdown(claims_table(claims))]
    out += ["## Findings", "", f"Directions are stated only where every seed shows them (at least "
            f"{findings_mod.MIN_SEEDS} seeds); otherwise the finding says 'not distinguishable' and gives the "
            "per-seed differences.", ""]
    out += [f"- {s}" for s in findings] or ["- (no findings: too few cells)"]
    out += ["", "## Tables", ""]
    for t in tables:
        if t.id == "paper_table4":
            out += ["## The paper's tables beside ours", ""]
        out.append(table_markdown(t))
    note = _paper_section_note(tables)
    if note:
        out += ["## The paper's tables beside ours", "", note, ""]
    out += ["## Figures", ""]
    for name, fig in figures.items():
        out += [f"### {fig['title']}", "", fig["caption"], ""]
        out.append(f"![{fig['title']}]({fig['path']})" if fig.get("path") else f"_{fig.get('missing', 'not drawn')}_")
        out.append("")
    out += _details_markdown(*details)
    out += ["## Trigger previews", "", "Clean (top) vs poisoned (bottom) training samples of each variant, as "
            "written by datasets_gen beside the variant.", ""]
    if previews:
        for setting, rel in previews.items():
            out += [f"**{setting}**", "", f"![preview {setting}]({rel})", ""]
    else:
        out.append("_No preview grids were written by the data-set generator._")
    failures = meta.get("failures") or []
    if failures:
        out += ["", "## Cells that failed", ""]
        out += [f"- `{f['setting']}` / `{f['defence']}` (seed {f['seed']}): {f['error']}" for f in failures]
    pending = meta.get("pending") or []
    if pending:
        out += ["", "## Cells not run yet", "", f"{len(pending)} cells of the grid have no result in this folder "
                "yet; the tables and findings above leave them out.", ""]
        out += [f"- `{p['setting']}` / `{p['defence']}` (seed {p['seed']})" for p in pending]
    return "\n".join(out) + "\n"


def _meta_lines(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    if meta.get("description"):
        lines += [str(meta["description"]), ""]
    if meta.get("command"):
        lines.append(f"- Command of this report: `{meta['command']}`")
    for cmd in meta.get("cell_commands") or []:
        lines.append(f"- Cells computed by: `{cmd}`")
    mode = "quick (reduced data, epochs and settings)" if meta.get("quick") else "full"
    lines.append(f"- Mode: {mode}; seeds: {meta.get('seeds')}; device: {meta.get('device')}")
    lines.append(f"- Cells: {meta.get('n_cells')} ({meta.get('n_computed', 0)} computed in this run, "
                 f"{meta.get('n_cached', 0)} from the cache, {len(meta.get('failures') or [])} failed)")
    if meta.get("wall_time_s") is not None:
        lines.append(f"- Wall time of this run: {meta['wall_time_s']:.1f} s")
    v = meta.get("versions") or {}
    if v:
        lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    for note in meta.get("notes") or []:
        lines.append(f"- Note: {note}")
    lines.append("- Data: `cells.json` (every cell in full), `cells.csv` (one row per cell), `tables.json`, "
                 "`study.json` (the resolved configuration)")
    return lines


def render_html(meta: Mapping[str, Any], tables: Sequence[Table], figures: Mapping[str, Mapping[str, str]],
                previews: Mapping[str, str], findings: Sequence[str], root: Path,
                claims: Sequence[claims_mod.Claim] = (), details: tuple = ((), ())) -> str:
    """A self-contained HTML page: the same content as the Markdown, images embedded as base64."""
    e = html.escape
    body = [f"<h1>backdoorlab study report: {e(str(meta.get('name', 'study')))}</h1><ul>"]
    body += [f"<li>{e(line[2:])}</li>" for line in _meta_lines(meta) if line.startswith("- ")]
    body.append("</ul>")
    if claims:
        body += ["<h2>Against the paper</h2>", table_html(claims_table(claims))]
    body.append(f"<h2>Findings</h2><p class='caption'>Directions are stated only where every seed shows them (at "
                f"least {findings_mod.MIN_SEEDS} seeds); otherwise 'not distinguishable' with the per-seed "
                "differences.</p><ul>")
    body += [f"<li>{e(s)}</li>" for s in findings] or ["<li>(no findings: too few cells)</li>"]
    body.append("</ul><h2>Tables</h2>")
    for t in tables:
        if t.id == "paper_table4":
            body.append("<h2>The paper's tables beside ours</h2>")
        body.append(table_html(t))
    note = _paper_section_note(tables)
    if note:
        body.append(f"<h2>The paper's tables beside ours</h2><p><em>{e(note.strip('_').replace('`', ''))}</em></p>")
    body.append("<h2>Figures</h2>")
    for fig in figures.values():
        body.append(f"<h3>{e(fig['title'])}</h3><p class='caption'>{e(fig['caption'])}</p>")
        if fig.get("path"):
            body.append(f"<img alt='{e(fig['title'])}' src='{_img_data_uri(root / fig['path'])}'>")
        else:
            body.append(f"<p><em>{e(fig.get('missing', 'not drawn'))}</em></p>")
    body += _details_html(*details, root)
    body.append("<h2>Trigger previews</h2><p class='caption'>Clean vs poisoned training samples of each variant.</p>")
    for setting, rel in previews.items():
        body.append(f"<h4>{e(setting)}</h4><img alt='preview {e(setting)}' src='{_img_data_uri(root / rel)}'>")
    if not previews:
        body.append("<p><em>No preview grids were written by the data-set generator.</em></p>")
    failures = meta.get("failures") or []
    if failures:
        body.append("<h2 class='fail'>Cells that failed</h2><ul>")
        body += [f"<li><code>{e(f['setting'])}</code> / <code>{e(f['defence'])}</code> (seed {f['seed']}): "
                 f"{e(f['error'])}</li>" for f in failures]
        body.append("</ul>")
    pending = meta.get("pending") or []
    if pending:
        body.append(f"<h2>Cells not run yet</h2><p>{len(pending)} cells of the grid have no result in this folder "
                    "yet; the tables and findings above leave them out.</p><ul>")
        body += [f"<li><code>{e(p['setting'])}</code> / <code>{e(p['defence'])}</code> (seed {p['seed']})</li>"
                 for p in pending]
        body.append("</ul>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>backdoorlab report: {e(str(meta.get('name', 'study')))}</title><style>{_CSS}</style></head>"
            "<body>" + "\n".join(body) + "</body></html>\n")


def write_cells_csv(path: Path, cells: Sequence[Mapping[str, Any]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS + EXTRA_CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for c in cells:
        w.writerow({k: ("" if v is None else v) for k, v in csv_row(c).items()})
    return atomic_write_text(path, buf.getvalue())


def write_report(out: str | Path, cells: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
                 *, progress: bool = False) -> dict[str, Path]:
    """Write every report file for ``cells`` into ``out``.

    Parameters
    ----------
    out : path
        The results folder; ``figures/`` is created inside it. Preview paths in the cells
        (``cell['preview']``) are relative to it.
    cells : sequence of dict
        Finished cell records (see :mod:`backdoorlab.experiments.records`); at least one.
    meta : dict, optional
        Study facts shown at the top: ``name``, ``quick``, ``seeds``, ``device``, ``versions``,
        ``wall_time_s``, ``n_computed``, ``n_cached``, ``failures``, ``notes``, ``description``.

    Returns
    -------
    dict
        ``{"report_md", "report_html", "cells_json", "cells_csv", "tables_json", <figure names>}`` → paths.
    """
    out = Path(out)
    if not cells:
        raise ValueError("no finished cells to report on (every cell failed or the grid is empty)")
    for c in cells:
        validate_cell(c)
    meta = dict(meta or {})
    meta.setdefault("n_cells", len(cells))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    agg = aggregate_cells(cells)
    tables = build_tables(agg) + paper_tables(agg)
    figures = plots.make_figures(agg, out / "figures", root=out)
    found = findings_mod.compute_findings(agg)
    claims = claims_mod.check_claims(agg)
    details = nc_strip_details(cells, out)
    previews: dict[str, str] = {}
    for r in agg:
        rel = r.get("preview")
        if rel and (out / rel).is_file() and r["setting"] not in previews:
            previews[r["setting"]] = rel

    paths: dict[str, Path] = {}
    paths["cells_json"] = atomic_write_json(out / "cells.json", list(cells))
    paths["cells_csv"] = write_cells_csv(out / "cells.csv", cells)
    paths["tables_json"] = atomic_write_json(out / "tables.json", {
        "tables": [asdict(t) for t in tables], "findings": found, "claims": [c.to_dict() for c in claims],
        "paper_source": paper.SOURCE,
        "figures": {k: v.get("path") for k, v in figures.items()}, "previews": previews})
    paths["report_md"] = atomic_write_text(out / "report.md",
                                           render_markdown(meta, tables, figures, previews, found, claims, details))
    paths["report_html"] = atomic_write_text(out / "report.html",
                                             render_html(meta, tables, figures, previews, found, out, claims, details))
    for name, fig in figures.items():
        if fig.get("path"):
            paths[name] = out / fig["path"]
    if progress:
        print(f"report written to {paths['report_md']} ({time.perf_counter() - t0:.1f} s)")
    return paths


def load_cells(out: str | Path) -> list[dict]:
    """Read ``cells.json`` of a results folder (for re-rendering or checks)."""
    p = Path(out) / "cells.json"
    if not p.is_file():
        raise FileNotFoundError(f"no cells.json in {Path(out)}")
    return json.loads(p.read_text(encoding="utf-8"))
