"""Neural Cleanse and STRIP as columns of a study: a tiny study through the runner and the report.

The toy variant, the GTSRB CNN trained one epoch, and the defences ``nc``, ``nc>fp`` and ``strip`` with
short searches. Checks that every NC cell gets its own mask folder, that a shared NC step is still
computed once (the mask folder is not part of the step cache's key), and that the report shows the
NC and STRIP tables and one mask grid per NC step, in the Markdown and in the HTML.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from _experiments_helpers import md_tables, tiny_study
from backdoorlab.defences import NeuralCleanse
from backdoorlab.experiments.report import mask_grid
from backdoorlab.experiments.runner import run_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # interim native kernels warn until built

NC = {"epochs": 3, "epoch_steps": 2, "batch_size": 8, "unlearn_epochs": 1}
STRIP = {"n_overlays": 4, "retrain": "none"}


def _study() -> dict:
    study = tiny_study()
    fp = {"layer": "last_conv", "threshold": 0.04, "finetune_epochs": 1, "search": "bisect"}
    study["defences"] = ["none", {"id": "nc", "pipeline": "nc", "configs": {"nc": dict(NC)}},
                         {"id": "nc>fp", "pipeline": "nc>fp", "configs": {"nc": dict(NC), "fp": fp}},
                         {"id": "strip", "pipeline": "strip", "configs": {"strip": dict(STRIP)}}]
    study["fp_thresholds"] = []
    return study


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ncstudy")
        run_study(_study(), out, progress=False)
        return out
    finally:
        torch.set_num_threads(threads)


def _cells(out):
    return {c["defence"]: c for c in json.loads((out / "cells.json").read_text())}


def test_nc_cells_write_masks_in_their_own_folder(study_out):
    cells = _cells(study_out)
    nc_step = cells["nc"]["steps"][0]["report"]
    pngs = nc_step["mask_pngs"]
    assert len(pngs) == len(nc_step["classes"]) == 3
    folder = study_out / "masks" / cells["nc"]["key"]
    assert all(str(folder) == str(type(folder)(p).parent) and type(folder)(p).is_file() for p in pngs)
    # the folder is an output location, not a parameter: it is not recorded in the step's config
    assert "mask_dir" not in nc_step["config"]
    # nc>fp starts from the nc cell's cached NC step (same result, the first cell's masks)
    assert cells["nc>fp"]["steps"][0]["report"]["mask_l1"] == nc_step["mask_l1"]


def test_report_shows_nc_and_strip(study_out):
    cells = _cells(study_out)
    md = (study_out / "report.md").read_text()
    assert "## Neural Cleanse and STRIP" in md
    tables = md_tables(md)
    nc_rows = tables["Neural Cleanse: reversed triggers"][1:]
    assert [r[1] for r in nc_rows] == ["nc", "nc>fp"]
    rep = cells["nc"]["steps"][0]["report"]
    flagged = ", ".join(map(str, rep["flagged_classes"])) or "none"
    assert nc_rows[0][3] == flagged
    assert nc_rows[0][5] == f"{rep['median_l1']:.1f}"
    strip_rows = tables["STRIP: rejection at test time"][1:]
    srep = cells["strip"]["steps"][0]["report"]
    assert len(strip_rows) == 1 and strip_rows[0][3] == f"{srep['threshold']:.3f}"
    assert strip_rows[0][4] == f"{srep['test_triggered_rejected_pct']:.1f} %"
    # the main table has an nc and a strip column
    main = tables["Main table: attack success after each defence"]
    assert any(h.startswith("NC") or h == "nc" for h in main[0]) and any("strip" in h.lower() for h in main[0])
    # one mask grid per NC step, drawn from the recorded masks
    grids = sorted((study_out / "figures" / "nc_masks").glob("*.png"))
    assert len(grids) == 2
    img = cv2.imread(str(grids[0]))
    assert img is not None and img.shape[2] == 3
    for g in grids:
        assert f"(figures/nc_masks/{g.name})" in md
    html = (study_out / "report.html").read_text()
    assert "Neural Cleanse: reversed triggers" in html and html.count("data:image/png;base64,") >= 2


def test_mask_grid_frames_flagged_and_target():
    masks = np.zeros((13, 4, 4), np.uint8)
    masks[2] = 255
    grid = mask_grid(masks, flagged=[2], target=5)
    cell_h, cell_w = 4 * 2 + 4, 4 * 2 + 4
    assert grid.shape == (2 * (cell_h + 2), 11 * (cell_w + 2), 3)
    at = lambda i: grid[(i // 11) * (cell_h + 2), (i % 11) * (cell_w + 2)].tolist()  # noqa: E731
    assert at(2) == [0, 0, 220] and at(5) == [220, 90, 0] and at(0) == [170, 170, 170]
    x0 = 2 * (cell_w + 2)
    assert (grid[2:10, x0 + 2:x0 + 10] == 255).all() and (grid[2:10, 2:10] == 0).all()  # mask 2 on, mask 0 off
    with pytest.raises(ValueError, match="uint8"):
        mask_grid(np.zeros((2, 4, 4)))


def test_mask_dir_is_not_part_of_the_config():
    assert "mask_dir" not in NeuralCleanse(mask_dir="x").config()
    assert NeuralCleanse(mask_dir="x").config() == NeuralCleanse().config()


def test_a_quick_config_names_nc_and_strip_columns(tmp_path):
    """A user's TOML names the catalog ids; --quick keeps them as columns (and caps FP's fine-tuning only)."""
    from backdoorlab.experiments.config import load_config

    cfg = tmp_path / "study.toml"
    cfg.write_text('name = "q"\nseeds = [0]\n'
                   'defences = ["none", "nc", "nc-prune", "strip", "nc>fp", "ac>nc", "strip>fp"]\n'
                   '[datasets.toy]\nsource = "toy"\nmodel = "gtsrb_cnn"\ntrain = { preset = "gtsrb" }\n'
                   '[[settings]]\ndataset = "toy"\ntrigger = "yellow square"\nshares = [0.5]\n'
                   'recipe = { trigger = "square:4:yellow", source_class = 0, target_class = 1 }\n'
                   '[quick]\nepochs = 1\n')
    study = load_config(cfg, quick=True)
    by_id = {d.id: d for d in study.defences}
    assert [by_id[i].pipeline for i in ("nc", "nc-prune", "strip", "nc>fp", "ac>nc", "strip>fp")] == \
        ["nc", "nc", "strip", "nc>fp", "ac>nc", "strip>fp"]
    assert by_id["nc-prune"].configs == {"nc": {"repair": "prune"}}
    assert by_id["strip"].kind == "filter" and by_id["nc"].kind == "repair"
    assert by_id["nc>fp"].configs["fp"]["finetune_epochs"] == 1  # the quick cap reaches FP inside a combination
    with pytest.raises(ValueError, match="nc-unknown"):
        cfg.write_text(cfg.read_text().replace('"nc-prune"', '"nc-unknown"'))
        load_config(cfg, quick=True)
