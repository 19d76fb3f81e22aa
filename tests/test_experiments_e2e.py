"""A tiny version of the whole study, for real: toy variant, GTSRB CNN, one epoch, every defence.

The run is interrupted after a few cells, resumed, and re-run through the CLI (all cached); then
every table, figure and JSON field is checked against the cell records and the variant on disk.
"""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml

from _experiments_helpers import md_tables, tiny_study
from backdoorlab.experiments import findings
from backdoorlab.experiments.cache import CellCache
from backdoorlab.experiments.records import CSV_COLUMNS, aggregate_cells, pct, signed_points
from backdoorlab.experiments.runner import plan_cells, resolve_study, run_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # interim native kernels warn until built

N_BEFORE_INTERRUPT = 4


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared by the whole suite: one thread is faster here
    try:
        out = tmp_path_factory.mktemp("study")
        seen = []

        def interrupt_after(cell):
            seen.append(cell["key"])
            if len(seen) == N_BEFORE_INTERRUPT:
                raise _Interrupt

        with pytest.raises(KeyboardInterrupt):
            run_study(tiny_study(), out, progress=False, on_cell=interrupt_after)
        interrupted = {"cells": sorted(p.name for p in (out / "cells").glob("*.json")),
                       "report": (out / "report.md").exists(), "tmp": list(out.rglob("*.tmp"))}
        report = run_study(tiny_study(), out, progress=False)
        yield out, report, interrupted
    finally:
        torch.set_num_threads(threads)


def _cells(out):
    return json.loads((out / "cells.json").read_text())


def test_interrupted_run_resumes_from_the_cache(study_out):
    out, report, interrupted = study_out
    assert interrupted["cells"] and len(interrupted["cells"]) == N_BEFORE_INTERRUPT
    assert not interrupted["report"] and not interrupted["tmp"]
    run = json.loads((out / "run.json").read_text())
    plans = plan_cells(resolve_study(tiny_study()))
    assert run["n_cached"] == N_BEFORE_INTERRUPT
    assert run["n_computed"] == len(plans) - N_BEFORE_INTERRUPT
    assert run["n_failures"] == 0 and json.loads((out / "failures.json").read_text()) == []
    assert report == out / "report.md"


def test_every_output_exists(study_out):
    out, _, _ = study_out
    for name in ("report.md", "report.html", "cells.json", "cells.csv", "tables.json", "study.json", "run.json"):
        assert (out / name).is_file(), name
    figures = ("fig1_attack", "fig2_ac", "fig3_fp_threshold", "fig4_defences",  # Figs. 7/8 from the attack
               "fig7_channels_last_conv", "fig8_channels_second_last_conv")  # cells' channel activity
    for fig in figures:
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
    previews = list((out / "previews").glob("*.png"))
    assert len(previews) == 1
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures) + 1  # the figures and the preview
    md = (out / "report.md").read_text()
    assert "figures/fig1_attack.png" in md and "previews/" in md
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial.pt"))


def test_cells_have_every_field_and_match_the_cache(study_out):
    out, _, _ = study_out
    cells = _cells(out)
    plans = plan_cells(resolve_study(tiny_study()))
    assert [c["key"] for c in cells] == [p.key for p in plans]
    cache = CellCache(out)
    expected_defences = {"clean", "none", "ac", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac", "fp-last@2%"}
    assert {c["defence"] for c in cells} == expected_defences
    for c in cells:
        assert cache.get(c["key"]) == c
        for f in CSV_COLUMNS:
            if f not in ("time_total_s", "backdoorlab_version", "torch_version", "numpy_version"):
                assert f in c, f
        assert c["seed"] == 0
        assert set(c["versions"]) >= {"backdoorlab", "torch", "numpy"}
        assert c["versions"]["torch"] == torch.__version__
        assert c["timings"]["total_s"] > 0 and "model_train_s" in c["timings"]
        assert c["config"]["seed"] == 0 and c["config"]["pipeline"] == c["pipeline"]
    with open(out / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == [c["key"] for c in cells]


def test_cells_are_consistent_with_each_other_and_the_variant(study_out):
    out, _, _ = study_out
    cells = _cells(out)
    by = {c["defence"]: c for c in cells}
    none = by["none"]
    with h5py.File(out / none["variant"], "r") as f:
        is_poisoned = f["train/is_poisoned"][:]
    assert none["poisoned_present"] == int(is_poisoned.sum()) > 0
    assert none["n_train"] == is_poisoned.size
    assert by["clean"]["n_train"] == int((~is_poisoned).sum()) and by["clean"]["poisoned_present"] == 0
    for c in cells:
        if c["kind"] in ("filter", "repair", "combination"):
            # every defence starts from the same poisoned model, evaluated the same way
            assert c["before_accuracy"] == none["accuracy"]
            assert c["before_attack_success"] == none["attack_success"]
            assert c["delta_accuracy"] == pytest.approx(c["accuracy"] - c["before_accuracy"])
            assert c["delta_attack_success"] == pytest.approx(c["attack_success"] - c["before_attack_success"])
            last = c["steps"][-1]
            assert c["accuracy"] == last["clean_accuracy"] and c["attack_success"] == last["attack_success_rate"]
            assert len(c["steps"]) == len(c["pipeline"].split(">"))
            assert [s["defence"] for s in c["steps"]] == c["pipeline"].split(">")
        if c["kind"] in ("filter", "combination"):
            assert 0 <= c["removed_poisoned"] <= c["poisoned_present"]
            assert 0 <= c["removed_clean"] <= c["n_train"] - c["poisoned_present"]
            assert c["removed_poisoned_share"] == pytest.approx(c["removed_poisoned"] / c["poisoned_present"])
        if c["kind"] in ("repair", "combination"):
            assert 0 <= c["neurons_pruned"] < c["n_channels"] and c["layer"] in ("last_conv", "second_last_conv")
        if c["kind"] == "filter":
            assert c["neurons_pruned"] is None
        if c["kind"] == "repair":
            assert c["removed_poisoned"] is None
    assert by["fp-last@2%"]["fp_threshold"] == 0.02 and by["fp-last"]["fp_threshold"] == 0.04
    assert by["fp-second-last"]["layer"] == "second_last_conv"


def test_report_tables_show_the_cell_values(study_out):
    out, _, _ = study_out
    cells = _cells(out)
    by = {c["defence"]: c for c in cells}
    label = {c["defence_label"]: c for c in cells}
    tables = md_tables((out / "report.md").read_text())
    main = tables["Main table: attack success after each defence"]
    assert len(main) == 2
    for col, val in zip(main[0][3:], main[1][3:]):
        c = label[col]
        assert val == f"{pct(c['attack_success'])} ({pct(c['accuracy'])})"
    t4 = tables["Table 4: data-filtering defences (AC, SS, DP)"]
    assert [r[1] for r in t4[1:]] == [by[d]["defence_label"] for d in ("ac", "ss", "dp")]
    # the analysis is named (the paper ran the size metric) and non-default parameters shown
    assert by["ac"]["defence_label"] == "AC (silhouette, ours) [n_components=4, prereduce_dims=32]"
    for r in t4[1:]:
        c = label[r[1]]
        assert r[3] == str(c["removed_poisoned"]) and r[5] == str(c["removed_clean"])
        assert r[9] == pct(c["attack_success"]) and r[10] == signed_points(c["delta_attack_success"])
    t5 = tables["Table 5: Fine-Pruning"]
    assert len(t5) - 1 == 3
    for r in t5[1:]:
        c = label[r[1]]
        assert r[4] == f"{c['neurons_pruned']}/{c['n_channels']}" and r[5] == pct(c["accuracy"])
    t6 = tables["Table 6: combined defences"]
    assert [r[1] for r in t6[1:]] == [by[d]["defence_label"] for d in ("ac>fp", "fp>ac")]
    ta = tables["Table A: the attack (clean vs poisoned model)"]
    assert ta[1][5] == pct(by["clean"]["accuracy"]) and ta[1][9] == pct(by["none"]["attack_success"])
    data = json.loads((out / "tables.json").read_text())
    assert data["findings"] == findings.compute_findings(aggregate_cells(cells))
    md = (out / "report.md").read_text()
    for sentence in data["findings"]:
        assert sentence in md
    assert any(s.startswith("On toy-yellow-square@50%, AC(silhouette)→FP") and "FP→AC(silhouette)" in s for s in data["findings"])


def test_rerun_through_the_cli_uses_the_cache(study_out, tmp_path):
    from backdoorlab.cli import main

    out, _, _ = study_out
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_study()))
    before = _cells(out)
    assert main(["reproduce", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["n_computed"] == 0 and run["n_cached"] == len(before)
    assert _cells(out) == before
    md = (out / "report.md").read_text()  # the report names the command that wrote it
    assert f"- Command of this report: `backdoorlab reproduce --config {cfg} --out {out} --no-progress`" in md


def test_a_failing_cell_is_reported_and_the_study_goes_on(study_out, tmp_path):
    from backdoorlab.cli import main

    out, _, _ = study_out
    for sub in ("cells", "models", "variants"):  # reuse the trained models: only the bad cell runs
        shutil.copytree(out / sub, tmp_path / sub)
    study = tiny_study()
    study["defences"] = ["none", {"id": "ac-bad", "pipeline": "ac", "configs": {"ac": {"analysis": "no-such-analysis"}}}]
    study.pop("fp_thresholds")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(study))
    assert main(["reproduce", "--config", str(cfg), "--out", str(tmp_path), "--no-progress"]) == 1
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [f["defence"] for f in failures] == ["ac-bad"] and "no-such-analysis" in failures[0]["error"]
    assert "no-such-analysis" in (tmp_path / "report.md").read_text()
    assert {c["defence"] for c in _cells(tmp_path)} == {"clean", "none"}


def test_same_seed_same_numbers(study_out, tmp_path):
    """A second, separate run of one cell reproduces the cached numbers exactly."""
    out, _, _ = study_out
    study = tiny_study()
    study["defences"] = ["none", "ss"]
    study.pop("fp_thresholds")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(study, tmp_path, progress=False, report=False)
    finally:
        torch.set_num_threads(threads)
    fresh = {c["defence"]: c for c in (json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json"))}
    cached = {c["defence"]: c for c in _cells(out)}
    for d in ("clean", "none", "ss"):
        for f in ("accuracy", "attack_success", "removed_poisoned", "removed_clean"):
            assert fresh[d][f] == cached[d][f], (d, f)
        assert fresh[d]["key"] == cached[d]["key"]
    assert np.isfinite(fresh["ss"]["accuracy"])


def test_shared_leading_steps_come_from_the_step_cache(study_out):
    """``ac>fp`` starts from the ``ac`` cell's retrained model and ``fp>ac`` from ``fp-last``'s pruned
    one: the cached step records (timings included) are the first cell's, not a second run."""
    out, _, _ = study_out
    by = {c["defence"]: c for c in _cells(out) if c["seed"] == 0 and c["setting"].endswith("@50%")}
    assert by["ac>fp"]["steps"][0] == by["ac"]["steps"][0]
    assert by["fp>ac"]["steps"][0] == by["fp-last"]["steps"][0]
    assert by["ac>fp"]["steps"][1]["seconds"] != by["ac"]["steps"][0]["seconds"]
    assert len(list((out / "models" / "steps").glob("*.json"))) >= 4


def test_attack_cells_carry_the_channel_activity_of_both_conv_layers(study_out):
    out, _, _ = study_out
    for c in _cells(out):
        if c["kind"] != "attack":
            assert "channel_activity" not in c
            continue
        act = c["channel_activity"]
        assert set(act) == {"last_conv", "second_last_conv"}
        for layer, width in (("last_conv", 128), ("second_last_conv", 128)):
            assert len(act[layer]["clean"]) == len(act[layer]["triggered"]) == width
            assert min(act[layer]["clean"]) >= 0  # after ReLU
            assert act[layer]["clean"] != act[layer]["triggered"]


def test_settings_and_defences_filters_and_report_only(study_out, tmp_path):
    out, _, _ = study_out
    study = resolve_study(tiny_study())
    plans = plan_cells(study, settings=["*@50%"], defences=["ac*", "none"])
    assert {p.setting.id for p in plans} == {"toy-yellow-square@50%"}
    assert {p.defence.id for p in plans} == {"none", "ac", "ac>fp"}
    with pytest.raises(ValueError, match="no defence matches"):
        plan_cells(study, defences=["nope*"])
    with pytest.raises(RuntimeError, match="nothing to report"):
        run_study(tiny_study(), tmp_path / "empty", progress=False, report_only=True)
    copy = tmp_path / "partial"
    shutil.copytree(out / "cells", copy / "cells")
    for extra in list((copy / "cells").glob("*.json"))[3:]:
        extra.unlink()
    run_study(tiny_study(), copy, progress=False, report_only=True)
    run = json.loads((copy / "run.json").read_text())
    assert run["n_computed"] == 0 and run["n_cached"] == 3 and run["n_pending"] == run["n_cells"] - 3
    assert not (copy / "models").exists() and not (copy / "variants").exists()  # nothing was computed


def test_clean_cells_of_later_settings_wait_for_the_first_settings_model():
    plans = plan_cells(resolve_study(tiny_study(shares=(0.5, 0.3))))
    second = [p.defence.id for p in plans if p.setting.id.endswith("@30%")]
    first = [p.defence.id for p in plans if p.setting.id.endswith("@50%")]
    assert first[0] == "clean" and second[-1] == "clean"
