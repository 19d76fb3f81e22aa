"""The report on fabricated cells: every file, every table row against the cells, findings from numbers."""

from __future__ import annotations

import csv
import json
import re
import statistics

import pytest

from _experiments_helpers import fabricate_cells, md_tables as _md_tables
from backdoorlab.experiments import findings
from backdoorlab.experiments.records import CSV_COLUMNS, EXTRA_CSV_COLUMNS, aggregate_cells, pct, signed_points
from backdoorlab.experiments.report import build_tables, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cells = fabricate_cells()
    paths = write_report(out, cells, {"name": "fabricated", "quick": False, "seeds": [0], "device": "cpu"})
    return out, cells, paths


def test_every_file_is_written(written):
    out, cells, paths = written
    for name in ("report_md", "report_html", "cells_json", "cells_csv", "tables_json",
                 "fig1_attack", "fig2_ac", "fig3_fp_threshold", "fig4_defences"):
        assert paths[name].is_file(), name
        assert paths[name].stat().st_size > 0
    for name in ("fig1_attack", "fig2_ac", "fig3_fp_threshold", "fig4_defences"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_cells_json_and_csv_round_trip(written):
    out, cells, _ = written
    assert json.loads((out / "cells.json").read_text()) == cells
    with open(out / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS + EXTRA_CSV_COLUMNS)
    assert len(rows) == len(cells)
    for row, cell in zip(rows, cells):
        assert row["key"] == cell["key"] and row["defence"] == cell["defence"]
        assert float(row["attack_success"]) == pytest.approx(cell["attack_success"])
        assert (row["neurons_pruned"] == "") == (cell["neurons_pruned"] is None)


def test_tables_match_the_cells(written):
    out, cells, _ = written
    md = (out / "report.md").read_text()
    tables = _md_tables(md)
    by = {(c["setting"], c["defence"]): c for c in cells}
    # main table: "ASR (acc)" for every setting x defence column
    main = tables["Main table: attack success after each defence"]
    header = main[0]
    labels = {c["defence_label"]: c["defence"] for c in cells}
    n_settings = len({c["setting"] for c in cells})
    assert len(main) - 1 == n_settings
    for row in main[1:]:
        for col, val in zip(header[3:], row[3:]):
            c = by[(row[0], labels[col])]
            assert val == f"{pct(c['attack_success'])} ({pct(c['accuracy'])})"
    # table 4: one row per filter cell, removals and deltas as in the cell
    t4 = tables["Table 4: data-filtering defences (AC, SS, DP)"]
    filt = [c for c in cells if c["kind"] == "filter"]
    assert len(t4) - 1 == len(filt)
    for row in t4[1:]:
        c = by[(row[0], labels[row[1]])]
        assert row[2:] == [str(c["poisoned_present"]), str(c["removed_poisoned"]), pct(c["removed_poisoned_share"]),
                           str(c["removed_clean"]), pct(c["removed_clean_share"]), pct(c["accuracy"]),
                           signed_points(c["delta_accuracy"]), pct(c["attack_success"]),
                           signed_points(c["delta_attack_success"])]
    # table 5: pruned/total and threshold
    t5 = tables["Table 5: Fine-Pruning"]
    rep = [c for c in cells if c["kind"] == "repair"]
    assert len(t5) - 1 == len(rep)
    for row in t5[1:]:
        c = by[(row[0], labels[row[1]])]
        assert row[4] == f"{c['neurons_pruned']}/{c['n_channels']}"
        assert row[3] == f"{100 * c['fp_threshold']:g}"
        assert row[7] == pct(c["attack_success"])
    # table 6: combinations carry both removal and pruning columns
    t6 = tables["Table 6: combined defences"]
    comb = [c for c in cells if c["kind"] == "combination"]
    assert len(t6) - 1 == len(comb)
    for row in t6[1:]:
        c = by[(row[0], labels[row[1]])]
        assert row[2] == str(c["removed_poisoned"]) and row[6] == f"{c['neurons_pruned']}/{c['n_channels']}"
        assert row[9] == pct(c["attack_success"]) and row[10] == signed_points(c["delta_attack_success"])
    # table A: clean vs poisoned
    ta = tables["Table A: the attack (clean vs poisoned model)"]
    for row in ta[1:]:
        clean, none = by[(row[0], "clean")], by[(row[0], "none")]
        assert row[5] == pct(clean["accuracy"]) and row[6] == pct(none["accuracy"])
        assert row[7] == signed_points(none["accuracy"] - clean["accuracy"])


def test_tables_json_names_the_cells_behind_each_row(written):
    out, cells, _ = written
    data = json.loads((out / "tables.json").read_text())
    keys = {c["key"] for c in cells}
    for t in data["tables"]:
        assert len(t["rows"]) == len(t["sources"])
        for src in t["sources"]:
            assert src and set(src) <= keys
    assert data["findings"] == findings.compute_findings(aggregate_cells(cells))


def test_html_is_self_contained(written):
    out, _, _ = written
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # four figures, no previews in fabricated cells
    assert "<table>" in page and "Table 6: combined defences" in page
    assert 'src="figures/' not in page and "src='figures/" not in page


def _set(cells, defence, values, field="attack_success"):
    """Give ``defence`` the value ``values[seed]`` of ``field`` on each seed."""
    for c in cells:
        if c["defence"] == defence:
            c[field] = values[c["seed"]]


@pytest.mark.parametrize("ac_fp, says, not_says", [
    ({0: 0.05, 1: 0.10, 2: 0.00},
     "AC(size)→FP lowered attack success more on all 3 seeds, by 35.0 points on average", None),
    ({0: 0.60, 1: 0.70, 2: 0.50},
     "FP→AC(size) lowered attack success more on all 3 seeds, by 20.0 points on average", None),
    ({0: 0.405, 1: 0.445, 2: 0.352}, "about equally", None),
    # one seed the other way: the means still favour AC→FP, but no direction is stated
    ({0: 0.05, 1: 0.10, 2: 0.60},
     "not distinguishable across seeds (per-seed differences -35.0, -35.0, +25.0 points)",
     "lowered attack success more"),
], ids=["ac-fp-better", "fp-ac-better", "tied", "mixed"])
def test_order_finding_states_a_direction_only_when_every_seed_shows_it(ac_fp, says, not_says):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1, 2), rng_seed=3)
    _set(cells, "fp>ac", {0: 0.40, 1: 0.45, 2: 0.35})
    _set(cells, "ac>fp", ac_fp)
    (sentence,) = findings.order_findings(aggregate_cells(cells))
    assert says in sentence
    if not_says is not None:
        assert not_says not in sentence


def test_one_seed_never_gives_a_direction():
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], rng_seed=3)
    _set(cells, "ac>fp", {0: 0.05})
    _set(cells, "fp>ac", {0: 0.40})
    agg = aggregate_cells(cells)
    (sentence,) = findings.order_findings(agg)
    assert "not distinguishable: 1 seed only" in sentence and "lowered attack success more" not in sentence
    (best,) = findings.best_defence_findings(agg)
    assert "cannot be ranked" in best


def test_the_issue_s_flipping_fp_layers_are_not_a_finding():
    """Regression (issue #13): FP(last) 61.6 % / FP(2nd-last) 11.6 % on one run and 8.0 % / 78.4 % on
    another were each reported as a finding; with both runs as seeds it is not distinguishable."""
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.33)], seeds=(0, 1), rng_seed=1)
    _set(cells, "fp-last", {0: 0.616, 1: 0.080})
    _set(cells, "fp-second-last", {0: 0.116, 1: 0.784})
    agg = aggregate_cells(cells)
    (sentence,) = findings.fp_layer_findings(agg)
    assert "which layer works better is not distinguishable across seeds (per-seed differences +50.0, -70.4 " \
           "points)" in sentence
    (best,) = findings.best_defence_findings(agg)
    assert "lowered attack success more" not in best


def test_best_defence_finding_names_the_minimum():
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1, 2), rng_seed=5)
    _set(cells, "fp-second-last", {0: 0.0, 1: 0.001, 2: 0.002})  # below everything fabricated on every seed
    for c in cells:
        if c["kind"] in ("filter", "repair", "combination") and c["defence"] != "fp-second-last":
            c["attack_success"] = max(c["attack_success"], 0.05)
    (sentence,) = findings.best_defence_findings(aggregate_cells(cells))
    assert sentence.startswith("On gtsrb-yellow-square@7%, FP (2nd-last conv) left the lowest attack success: "
                               "0.1 ± 0.1 %")
    assert sentence.endswith("it was below every other defence on all 3 seeds.")
    # make one rival lower on one seed: no longer a ranking on every seed
    _set(cells, "ss", {0: 0.5, 1: 0.5, 2: 0.0})
    (sentence,) = findings.best_defence_findings(aggregate_cells(cells))
    assert "not distinguishable across seeds from SS" in sentence


def test_findings_say_nothing_without_the_cells_they_need():
    cells = [c for c in fabricate_cells() if c["defence"] in ("clean", "none")]
    agg = aggregate_cells(cells)
    assert findings.order_findings(agg) == [] and findings.ac_findings(agg) == []
    assert findings.fp_layer_findings(agg) == [] and findings.threshold_findings(agg) == []
    assert len(findings.attack_findings(agg)) == 3  # one per (data set, trigger)


def test_seeds_are_averaged_with_sd(tmp_path):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1))
    agg = aggregate_cells(cells)
    rec = next(r for r in agg if r["defence"] == "ac")
    members = [c for c in cells if c["defence"] == "ac"]
    assert rec["n_seeds"] == 2 and rec["seeds"] == [0, 1]
    assert rec["attack_success"] == pytest.approx(sum(c["attack_success"] for c in members) / 2)
    assert rec["attack_success_sd"] is not None
    tables = {t.id: t for t in build_tables(agg)}
    row = next(r for r in tables["table4"].rows if r[1] == "AC (silhouette, ours)")
    assert "±" in row[9]
    # every number of a row carries its spread: counts, shares and deltas too
    rp = [c["removed_poisoned"] for c in members]
    sd = statistics.stdev(rp)
    assert row[3] == f"{sum(rp) / 2:.1f}".removesuffix(".0") + f" ± {sd:.1f}"
    assert row[4].count("±") == 1 and row[8].count("±") == 1 and row[10].count("±") == 1
    write_report(tmp_path, cells, {"name": "two seeds"})
    md = (tmp_path / "report.md").read_text()
    assert "(mean ± sd of 2 seeds)" in md
    assert "mean ± standard deviation over the 2 seeds" in md
    # a value resting on fewer seeds than the rest is marked with its n
    short = [c for c in fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1))
             if not (c["defence"] == "ss" and c["seed"] == 1)]
    rec = next(r for r in aggregate_cells(short) if r["defence"] == "ss")
    assert rec["n_seeds"] == 1 and rec["attack_success_n"] == 1
    row = next(r for r in {t.id: t for t in build_tables(aggregate_cells(short))}["table4"].rows if r[1] == "SS")
    assert row[9].endswith("(n=1)") and "±" not in row[9]


def test_missing_figures_are_explained_not_drawn(tmp_path):
    cells = [c for c in fabricate_cells() if c["defence"] in ("clean", "none", "fp-last")]
    paths = write_report(tmp_path, cells, {"name": "no ac"})
    assert "fig2_ac" not in paths and not (tmp_path / "figures" / "fig2_ac.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "Not drawn: Activation Clustering is not in this study." in md
    assert "_No cells of this kind in this study._" in md  # tables 4 and 6 stay, empty


def test_failures_are_listed(tmp_path):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)])
    meta = {"name": "x", "failures": [{"setting": "s", "defence": "dp", "seed": 0, "error": "ValueError: boom"}]}
    write_report(tmp_path, cells, meta)
    assert "ValueError: boom" in (tmp_path / "report.md").read_text()
    assert "ValueError: boom" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("field,value,match", [
    ("accuracy", 1.5, "fraction in \\[0, 1\\]"),
    ("attack_success", None, "must be float"),
    ("seed", "0", "must be int"),
])
def test_malformed_cells_are_refused(tmp_path, field, value, match):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)])
    cells[1][field] = value
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path, cells)


def test_empty_cells_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no finished cells"):
        write_report(tmp_path, [])


def test_disagreeing_seeds_are_refused():
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1))
    for c in cells:
        if c["seed"] == 1:
            c["poison_share"] = 0.08
    with pytest.raises(ValueError, match="disagree on 'poison_share'"):
        aggregate_cells(cells)


def test_number_formats():
    assert pct(0.9734) == "97.3" and pct(None) == "–"
    assert signed_points(-0.1234) == "-12.3" and signed_points(0.004) == "+0.4" and signed_points(-0.0001) == "+0.0"
    assert re.fullmatch(r"[+-]\d+\.\d", signed_points(0.5))
