"""The paper's reference numbers in the report: shipped data, ours beside theirs, claims, Figs. 7/8."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from _experiments_helpers import PAPER_DEFENCES, fabricate_cells, md_tables
from backdoorlab.experiments import claims as claims_mod
from backdoorlab.experiments import findings, paper
from backdoorlab.experiments.records import aggregate_cells
from backdoorlab.experiments.report import paper_tables, write_report

SHARED_PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"
GTSRB_ROWS = ["yellow square (7%)", "yellow square (2%)", "yellow pattern (6%)", "white square", "white pattern",
              "big yellow square"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gtsrb_paper_cells(seeds=(0, 1, 2), rng_seed=0, rows=GTSRB_ROWS):
    settings = [("gtsrb", r, 0.07) for r in rows]
    return fabricate_cells(settings=settings, defences=PAPER_DEFENCES, seeds=seeds, rng_seed=rng_seed,
                           paper_rows=list(rows), analyses=True)


def _set(cells, setting_prefix, defence, values, field="attack_success"):
    for c in cells:
        if c["setting"].startswith(setting_prefix) and c["defence"] == defence:
            c[field] = values[c["seed"]]


# -- the reference data


def test_reference_tables_ship_inside_the_package():
    folder = resources.files("backdoorlab.experiments").joinpath("paper_data")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".csv"))
    assert names == sorted(f for f, _ in paper.TABLES.values())
    for tid in paper.TABLES:
        assert len(paper.rows(tid)) == 10
    assert paper.paper_rows()[:6] == [("gtsrb", r) for r in GTSRB_ROWS]


@pytest.mark.skipif(not SHARED_PAPER.is_dir(), reason=f"no {SHARED_PAPER} beside the repository")
def test_package_copy_matches_the_shared_transcription():
    for name, _ in paper.TABLES.values():
        shipped = resources.files("backdoorlab.experiments").joinpath("paper_data", name).read_text("utf-8")
        assert shipped == (SHARED_PAPER / name).read_text("utf-8"), name


def test_reference_values_parse_as_printed():
    r4 = paper.row("table4", "gtsrb", "yellow square (7%)")
    assert r4["removed_poisoned"] == 35 and r4["delta_acc_pts"] == pytest.approx(4.04)
    assert r4["delta_asr_pts"] == pytest.approx(0.74)
    assert paper.row("table4", "ytaf", "black glasses")["delta_asr_pts"] == 0.0  # printed "0"
    assert paper.row("table5", "gtsrb", "white pattern")["last_delta_asr_pts"] == pytest.approx(-23.23)
    assert paper.row("table6", "lfw", "green glasses")["fp_layer"] == "second_last"
    assert paper.row("table4", "gtsrb", "no such row") is None
    assert paper.fp_layer("gtsrb") == "last_conv" and paper.fp_layer("ytaf") == "second_last_conv"
    assert paper.fp_layer("toy") is None
    rows = paper.rows("table4")
    rows[0]["removed_poisoned"] = -1  # a copy: the reference is not changed
    assert paper.row("table4", "gtsrb", "yellow square (7%)")["removed_poisoned"] == 35


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.replace("removed_clean_pct", "removed_clean_share", 1), "header"),
    (lambda t: t.replace("99.63", "n/a", 1), "line 2: column 'clean_acc_after_pct' is not a number: 'n/a'"),
    (lambda t: t.replace("99.63", "nan", 1), "not finite"),
    (lambda t: t + t.splitlines()[1] + "\n", "duplicate row"),
])
def test_a_broken_transcription_is_refused(mutate, match):
    text = resources.files("backdoorlab.experiments").joinpath("paper_data", paper.TABLES["table4"][0]).read_text()
    with pytest.raises(ValueError, match=match):
        paper.parse_table("table4", mutate(text))


def test_roles_follow_the_id_and_the_recorded_analysis():
    assert paper.role_of({"defence": "ac-size"}) == "ac-size"
    assert paper.role_of({"defence": "ac-smaller"}) == "ac-size"  # older name of the size metric
    assert paper.role_of({"defence": "ac"}) == "ac-silhouette"  # older default analysis
    assert paper.role_of({"defence": "ac", "ac_analysis": "smaller"}) == "ac-size"
    assert paper.role_of({"defence": "ac", "ac_analysis": "distance"}) is None
    assert paper.role_of({"defence": "ac>fp", "ac_analysis": "smaller"}) == "ac>fp"
    assert paper.role_of({"defence": "ac>fp", "ac_analysis": "silhouette-scores"}) is None  # not the paper's
    assert paper.role_of({"defence": "fp-last@2%", "sweep": True}) is None
    assert paper.role_of({"defence": "my-custom"}) is None


# -- ours beside the paper


def test_paper_tables_put_every_number_beside_ours():
    cells = _gtsrb_paper_cells()
    _set(cells, "gtsrb-yellow-square-(7%)", "ac-size", {0: 30, 1: 34, 2: 38}, "removed_poisoned")
    _set(cells, "gtsrb-white-square", "fp-last", {0: 0.90, 1: 0.92, 2: 0.94})
    tables = {t.id: t for t in paper_tables(aggregate_cells(cells))}
    assert set(tables) == {"paper_table4", "paper_table5", "paper_table6"}
    for tid, t in tables.items():
        named = {r[0] for r in t.rows}
        assert named == {f"gtsrb: {r}" for r in GTSRB_ROWS}, tid  # all six GTSRB rows, no face rows
        assert len(t.rows) == 6 * len(paper.QUANTITIES[tid.removeprefix("paper_")])
        assert all(r[5] == "3" for r in t.rows)
    by = {(r[0], r[2]): r for r in tables["paper_table4"].rows}
    row = by[("gtsrb: yellow square (7%)", "removed poisoned")]
    assert row[3:] == ["35", "34 ± 4.0", "3", "-1.0"]
    row = by[("gtsrb: yellow square (7%)", "Δ clean accuracy")]
    assert row[3] == "+4.04"
    row = next(r for r in tables["paper_table5"].rows
               if r[0] == "gtsrb: white square" and r[2] == "last conv: attack success")
    assert row[3:] == ["90.74", "92.0 ± 2.0", "3", "+1.3"]
    # Table 6's FP-alone column is FP on the paper's layer for GTSRB: the last conv
    row = next(r for r in tables["paper_table6"].rows
               if r[0] == "gtsrb: white square" and r[2].startswith("FP alone"))
    assert row[4] == "92.0 ± 2.0"


def test_removed_overall_is_summed_per_seed():
    cells = _gtsrb_paper_cells(rows=["white pattern"])
    _set(cells, "gtsrb-white-pattern", "fp>ac", {0: 10, 1: 20, 2: 30}, "removed_poisoned")
    _set(cells, "gtsrb-white-pattern", "fp>ac", {0: 100, 1: 100, 2: 130}, "removed_clean")
    t6 = {t.id: t for t in paper_tables(aggregate_cells(cells))}["paper_table6"]
    row = next(r for r in t6.rows if r[0] == "gtsrb: white pattern" and r[2] == "FP→AC: removed overall")
    assert row[3:6] == ["11488", "130 ± 26.5", "3"]  # (110, 120, 160): mean 130, sd 26.5
    row = next(r for r in t6.rows if r[2] == "FP→AC: removed overall (% of training set)")
    assert row[4] == "13.0 ± 2.6"  # of n_train = 1000


def test_rows_not_run_are_listed_and_other_families_left_out():
    cells = _gtsrb_paper_cells(rows=["white square"])
    cells += fabricate_cells(settings=[("toy", "square", 0.5)], defences=PAPER_DEFENCES, seeds=(0, 1, 2),
                             analyses=True)
    t4 = {t.id: t for t in paper_tables(aggregate_cells(cells))}["paper_table4"]
    not_run = [r for r in t4.rows if r[4] == "not run"]
    assert {r[0] for r in not_run} == {f"gtsrb: {r}" for r in GTSRB_ROWS if r != "white square"}
    assert all(r[0].startswith("gtsrb:") for r in t4.rows)


def test_no_paper_row_no_paper_tables_and_the_report_says_why(tmp_path):
    cells = fabricate_cells(seeds=(0, 1, 2), defences=PAPER_DEFENCES, analyses=True)
    assert paper_tables(aggregate_cells(cells)) == []
    write_report(tmp_path, cells, {"name": "synthetic"})
    md = (tmp_path / "report.md").read_text()
    assert "No setting of this study reproduces a row of the paper's Tables 4–7" in md


def test_an_unknown_paper_row_is_refused():
    cells = _gtsrb_paper_cells(rows=["yellow square (7 %)"])  # a space too many
    with pytest.raises(ValueError, match="paper_row 'yellow square \\(7 %\\)', which is not a row"):
        paper_tables(aggregate_cells(cells))


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper-report")
    write_report(out, _gtsrb_paper_cells(), {"name": "gtsrb-paper", "seeds": [0, 1, 2]})
    return out


def test_report_shows_six_rows_of_tables_4_5_6_and_cells_json_holds_them(paper_report):
    tmp_path = paper_report
    md = (tmp_path / "report.md").read_text()
    tables = md_tables(md)
    for _, title in paper.TABLES.values():
        rows = tables[f"{title}: the paper beside ours"][1:]
        assert {r[0] for r in rows} == {f"gtsrb: {r}" for r in GTSRB_ROWS}
    data = json.loads((tmp_path / "tables.json").read_text())
    keys = {c["key"] for c in json.loads((tmp_path / "cells.json").read_text())}
    for t in data["tables"]:
        for src in t["sources"]:
            assert set(src) <= keys
    assert data["paper_source"] == paper.SOURCE and "DBSec 2022" in md


# -- the claims


def _claim(cells, cid):
    return next(c for c in claims_mod.check_claims(aggregate_cells(cells)) if c.id == cid)


def test_claim_agrees_disagrees_or_is_not_distinguishable_by_the_seeds():
    cells = _gtsrb_paper_cells(rows=["white square", "white pattern", "big yellow square"])
    for row in ("gtsrb-white-square", "gtsrb-white-pattern", "gtsrb-big-yellow-square"):
        _set(cells, row, "ac-size", {0: 0.9, 1: 0.8, 2: 0.95})
        _set(cells, row, "ac>fp", {0: 0.5, 1: 0.4, 2: 0.6})
    c = _claim(cells, "acfp-beats-ac")
    assert c.verdict == claims_mod.AGREE and (c.supported, c.contradicted, c.undecided) == (3, 0, 0)
    assert "lower in 8, equal in 1, higher in 1 of 10 rows" in c.paper  # counted from Table 6
    # one seed of one setting the other way: that setting is undecided; 2 of 3 still support it
    one_off = copy.deepcopy(cells)
    _set(one_off, "gtsrb-white-square", "ac>fp", {0: 0.5, 1: 0.9, 2: 0.6})
    c = _claim(one_off, "acfp-beats-ac")
    assert c.verdict == claims_mod.AGREE and c.undecided == 1 and "seeds disagree" in c.ours
    # two settings with seeds disagreeing: not distinguishable
    _set(one_off, "gtsrb-white-pattern", "ac>fp", {0: 0.5, 1: 0.4, 2: 0.99})
    assert _claim(one_off, "acfp-beats-ac").verdict == claims_mod.UNCLEAR
    # the opposite on every seed of every setting: disagree
    opposite = copy.deepcopy(cells)
    for row in ("gtsrb-white-square", "gtsrb-white-pattern", "gtsrb-big-yellow-square"):
        _set(opposite, row, "ac>fp", {0: 1.0, 1: 0.95, 2: 1.0})
    assert _claim(opposite, "acfp-beats-ac").verdict == claims_mod.DISAGREE


def test_claims_with_one_seed_are_not_distinguishable():
    cells = _gtsrb_paper_cells(seeds=(0,), rows=["white square"])
    _set(cells, "gtsrb-white-square", "ac-size", {0: 0.9})
    _set(cells, "gtsrb-white-square", "ac>fp", {0: 0.1})
    c = _claim(cells, "acfp-beats-ac")
    assert c.verdict == claims_mod.UNCLEAR and "fewer than 2 seeds" in c.ours


def test_claims_without_their_cells_are_not_run():
    cells = [c for c in _gtsrb_paper_cells(rows=["white square"]) if c["defence"] in ("clean", "none", "ss")]
    found = {c.id: c for c in claims_mod.check_claims(aggregate_cells(cells))}
    for cid in ("acfp-beats-ac", "ac-first", "fpac-worse-than-fp", "ac-none-at-low-share", "ac-most-at-7",
                "ac-rises-with-share", "fp-layer:gtsrb", "dp-fails", "ac-clean-removal"):
        assert found[cid].verdict == claims_mod.NOT_RUN, cid
    assert found["ss-fails"].verdict != claims_mod.NOT_RUN


def test_fp_layer_claim_takes_the_paper_s_direction_per_family():
    cells = _gtsrb_paper_cells(rows=["white square"])
    cells += fabricate_cells(settings=[("ytaf", "green glasses", 0.1)], defences=PAPER_DEFENCES, seeds=(0, 1, 2),
                             analyses=True, rng_seed=4)
    _set(cells, "gtsrb", "fp-last", {0: 0.2, 1: 0.3, 2: 0.1})
    _set(cells, "gtsrb", "fp-second-last", {0: 0.6, 1: 0.7, 2: 0.5})
    _set(cells, "ytaf", "fp-last", {0: 0.2, 1: 0.3, 2: 0.1})
    _set(cells, "ytaf", "fp-second-last", {0: 0.6, 1: 0.7, 2: 0.5})
    found = {c.id: c for c in claims_mod.check_claims(aggregate_cells(cells))}
    assert found["fp-layer:gtsrb"].verdict == claims_mod.AGREE  # the paper: last layer better on GTSRB
    assert found["fp-layer:ytaf"].verdict == claims_mod.DISAGREE  # the paper: second-to-last on faces
    assert "higher in 2 of 2 rows" in found["fp-layer:ytaf"].paper


def test_ac_claims_on_the_paper_s_low_share_rows_and_clean_removal():
    cells = _gtsrb_paper_cells(rows=["yellow square (2%)", "big yellow square", "yellow square (7%)"])
    for row in ("gtsrb-yellow-square-(2%)", "gtsrb-big-yellow-square"):
        _set(cells, row, "ac-size", {0: 0, 1: 0, 2: 0}, "removed_poisoned")
    _set(cells, "gtsrb-yellow-square-(7%)", "ac-size", {0: 0.7, 1: 0.6, 2: 0.9}, "removed_poisoned_share")
    for c in cells:
        if c["defence"] == "ac-size":
            c["removed_clean_share"] = 0.31 + 0.01 * c["seed"]
    found = {c.id: c for c in claims_mod.check_claims(aggregate_cells(cells))}
    assert found["ac-none-at-low-share"].verdict == claims_mod.AGREE
    assert found["ac-most-at-7"].verdict == claims_mod.AGREE
    assert found["ac-clean-removal:gtsrb"].verdict == claims_mod.AGREE
    assert "29.75–32.82 %" in found["ac-clean-removal:gtsrb"].paper  # the GTSRB rows of Table 4
    _set(cells, "gtsrb-yellow-square-(2%)", "ac-size", {0: 3, 1: 5, 2: 1}, "removed_poisoned")
    _set(cells, "gtsrb-big-yellow-square", "ac-size", {0: 3, 1: 5, 2: 1}, "removed_poisoned")
    assert _claim(cells, "ac-none-at-low-share").verdict == claims_mod.DISAGREE


def test_report_lists_every_claim_with_a_verdict(paper_report):
    tmp_path = paper_report
    data = json.loads((tmp_path / "tables.json").read_text())
    md = (tmp_path / "report.md").read_text()
    rows = md_tables(md)["The paper's claims against this run"][1:]
    assert len(rows) == len(data["claims"]) >= 10
    assert {r[3] for r in rows} <= {claims_mod.AGREE, claims_mod.DISAGREE, claims_mod.UNCLEAR, claims_mod.NOT_RUN}
    assert [c["verdict"] for c in data["claims"]] == [r[3] for r in rows]


def test_no_stated_direction_is_contradicted_by_its_own_seeds():
    """Property: over many random 3-seed grids, every 'on all n seeds' direction holds on each seed."""
    for rng_seed in range(15):
        agg = aggregate_cells(fabricate_cells(seeds=(0, 1, 2), rng_seed=rng_seed))
        for a in agg:
            for b in agg:
                if a["setting"] != b["setting"] or a is b:
                    continue
                p = findings.paired(a, b, "attack_success")
                va, vb = findings.seed_values(a, "attack_success"), findings.seed_values(b, "attack_success")
                if p.verdict == "lower":
                    assert all(100 * (va[s] - vb[s]) <= -findings.TIE_POINTS for s in va)
                elif p.verdict == "higher":
                    assert all(100 * (va[s] - vb[s]) >= findings.TIE_POINTS for s in va)
                elif p.verdict == "mixed":
                    signs = {np.sign(round(100 * (va[s] - vb[s]), 9)) for s in va
                             if abs(100 * (va[s] - vb[s])) >= findings.TIE_POINTS}
                    assert len(signs) > 1 or any(abs(100 * (va[s] - vb[s])) < findings.TIE_POINTS for s in va)


# -- Figs. 7/8, the dormant channels, and the overview


def test_dormant_share_measures_activation_the_trigger_adds_to_quiet_channels():
    clean = [0.0, 0.0, 1.0, 2.0]
    assert claims_mod.dormant_share(clean, [3.0, 1.0, 1.0, 2.0]) == 1.0  # only quiet channels woke up
    assert claims_mod.dormant_share(clean, [0.0, 0.0, 2.0, 2.0]) == 0.0  # only a busy one rose
    assert claims_mod.dormant_share(clean, [0.0, 1.0, 2.0, 2.0]) == 0.5
    assert claims_mod.dormant_share(clean, clean) is None  # the trigger adds nothing
    # noise alone stays low (ranking channels by clean value and splitting at the median gave 0.87 here)
    rng = np.random.default_rng(0)
    noise = [claims_mod.dormant_share(rng.random(128), rng.random(128)) for _ in range(50)]
    assert np.mean(noise) < 0.2
    with pytest.raises(ValueError, match="equally long"):
        claims_mod.dormant_share([1.0, 2.0], [1.0])


def test_dormant_layer_claim_compares_the_layers_seed_by_seed():
    cells = _gtsrb_paper_cells(rows=["white square", "white pattern"])
    rng = np.random.default_rng(2)
    for c in cells:
        if c["kind"] == "attack":
            clean = np.r_[np.zeros(32), 1 + rng.random(96)]
            woke = clean + np.r_[np.full(32, 2.0), np.zeros(96)]  # the trigger wakes the quiet channels
            busy = clean + np.r_[np.zeros(32), np.full(96, 0.5)]  # it only raises the busy ones
            c["channel_activity"] = {"last_conv": {"clean": clean.tolist(), "triggered": woke.tolist()},
                                     "second_last_conv": {"clean": clean.tolist(), "triggered": busy.tolist()}}
    c = _claim(cells, "dormant-layer:gtsrb")
    assert c.verdict == claims_mod.AGREE and c.supported == 2
    assert "100.0 ± 0.0 % (n=3) vs 0.0 ± 0.0 % (n=3)" in c.ours
    plain = _gtsrb_paper_cells(rows=["white square"])
    assert _claim(plain, "dormant-layer").verdict == claims_mod.NOT_RUN


def test_channel_figures_are_drawn_from_channel_activity(tmp_path):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1, 2), with_channels=True)
    paths = write_report(tmp_path, cells, {"name": "channels"})
    for name in ("fig7_channels_last_conv", "fig8_channels_second_last_conv", "fig4_defences"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    # older cells without channel_activity: explained, not drawn, no stale file left
    plain = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], seeds=(0, 1, 2))
    paths = write_report(tmp_path, plain, {"name": "old"})
    assert "fig7_channels_last_conv" not in paths
    assert not (tmp_path / "figures" / "fig7_channels_last_conv.png").exists()
    assert "no undefended model recorded its per-channel activations" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("bad,match", [
    ({"last_conv": {"clean": [0.1, 0.2], "triggered": [0.1]}}, "different channel counts"),
    ({"fc": {"clean": [0.1], "triggered": [0.1]}}, "unknown layer 'fc'"),
    ({"last_conv": {"clean": [0.1]}}, "must map exactly"),
    ({"last_conv": {"clean": ["x"], "triggered": [0.1]}}, "non-empty list of finite numbers"),
])
def test_malformed_channel_activity_is_refused(tmp_path, bad, match):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)])
    next(c for c in cells if c["kind"] == "attack")["channel_activity"] = bad
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path, cells)


def test_pending_cells_are_listed(tmp_path):
    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)])
    write_report(tmp_path, cells, {"name": "x", "pending": [{"setting": "s2", "defence": "ac>fp", "seed": 1}]})
    md = (tmp_path / "report.md").read_text()
    assert "## Cells not run yet" in md and "`s2` / `ac>fp` (seed 1)" in md
    assert "s2" in (tmp_path / "report.html").read_text()


def test_the_quick_study_runs_every_role_the_claims_need():
    from backdoorlab.experiments.presets import quick_study

    study = quick_study()
    roles = set()
    for d in study.defences:
        analysis = d.configs.get("ac", {}).get("analysis") if "ac" in d.pipeline.split(">") else None
        roles.add(paper.role_of({"defence": d.id, "sweep": d.sweep, "ac_analysis": analysis}))
    assert set(paper.ROLES) <= roles
    assert len(study.seeds) >= 3  # issue #13: spread over at least three seeds


def test_ss_claim_judges_each_setting_by_its_best_grid_point():
    """Over the paper's SS grid the claim 'SS does not work' fails as soon as one grid point works."""
    from backdoorlab.experiments.records import aggregate_cells

    cells = fabricate_cells(settings=[("gtsrb", "yellow square", 0.07)], defences=["clean", "none", "ss"], seeds=(0, 1))
    for c in [c for c in cells if c["defence"] == "ss"]:
        c.update(attack_success=c["before_attack_success"], delta_attack_success=0.0)  # ss@5%x1.5: no effect
        worked = dict(c, defence="ss@truex2", defence_label="SS (true share, ×2)", key=c["key"] + "g",
                      attack_success=0.05, delta_attack_success=0.05 - c["before_attack_success"])
        cells.append(worked)
    claim = next(c for c in claims_mod.check_claims(aggregate_cells(cells)) if c.id == "ss-fails")
    assert claim.verdict == "disagree", claim
