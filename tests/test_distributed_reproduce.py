"""`torchrun -m backdoorlab reproduce`: a study's models trained data-parallel (issue #14, item 2,
"the same inside reproduce for one big model").

Two gloo processes run a tiny study: every model is trained by both ranks (its checkpoint records
the 2-process run), rank 0 alone evaluates, defends (AC's retraining runs in rank 0 only) and
writes the cells and the report; the models' and cells' keys say they are 2-process results, so
a serial run of the same folder does not take them for its own; a second torchrun run finds
every cell cached. ``--dask`` under torchrun is refused before anything starts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from _experiments_helpers import tiny_study
from _torchrun_helpers import torchrun_backdoorlab
from backdoorlab import checkpoint as ckpt
from backdoorlab.experiments.runner import plan_cells, resolve_study

DEFENCES = "none,ac,clean"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _torchrun_reproduce(tmp_path: Path, out: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_study()))  # JSON is YAML
    return torchrun_backdoorlab(tmp_path, "reproduce", "--config", str(config), "--out", str(out), "--defences",
                                DEFENCES, "--threads", "1", "--no-progress", timeout=timeout)


def test_two_gloo_processes_train_the_studys_models_and_rank0_writes_the_cells(tmp_path):
    out = tmp_path / "study"
    run = _torchrun_reproduce(tmp_path, out)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("report: ") == 1  # rank 0 reports, rank 1 does not
    cells = json.loads((out / "cells.json").read_text())
    assert sorted(c["defence"] for c in cells) == sorted(DEFENCES.split(","))
    assert json.loads((out / "failures.json").read_text()) == []
    assert all(c["config"]["model"]["data_parallel"] == 2 for c in cells)
    models = sorted(p for p in (out / "models").glob("*.pt") if not p.name.endswith(".partial.pt"))
    assert len(models) == 2  # the poisoned model and the clean one, each trained once by both ranks
    for path in models:
        _, payload = ckpt.load(path)
        assert payload["distributed"] == {"world_size": 2, "backend": "gloo"}, path
        assert json.loads(path.with_suffix(".json").read_text())["config"]["model"]["data_parallel"] == 2
    assert not list(out.rglob("*.tmp*")) and not list((out / "models").glob("*.partial.pt"))
    ac = next(c for c in cells if c["defence"] == "ac")
    assert ac["steps"] and ac["accuracy"] is not None  # AC retrained (rank 0 alone) and was evaluated

    # the same study in one process plans other keys: it never reuses the 2-process models or cells
    serial_keys = {p.key for p in plan_cells(resolve_study(tiny_study()), defences=DEFENCES.split(","))}
    assert len(serial_keys) == 3 and serial_keys.isdisjoint(c["key"] for c in cells)

    again = _torchrun_reproduce(tmp_path, out)  # everything cached: no training, same cells
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "run.json").read_text())["n_computed"] == 0


def test_dask_under_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    from backdoorlab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = main(["reproduce", "--quick", "--out", str(tmp_path / "r"), "--dask", "local:2", "--no-progress"])
    assert rc == 2 and "--dask under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
