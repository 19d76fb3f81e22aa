"""`reproduce --dask`: the study grid as Dask tasks (experiments/distributed_grid.py).

* a tiny study on ``local:2`` gives the cells of a serial run with the same seed;
* two processes writing the same cell at once leave one whole cell (and no temporary);
* the graph: shared models are one task, a pipeline waits for the cell whose steps it reuses;
* without the ``dask`` extra the flag fails with one line naming it, before anything is written.

The Dask run needs ``pip install ".[dask]"`` (CI installs it); the other tests do not.
"""

from __future__ import annotations

import json
import re
import multiprocessing as mp
import sys

import pytest

from _experiments_helpers import tiny_study
from backdoorlab.experiments.cache import CellCache
from backdoorlab.experiments.records import without_run_fields

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# a subset of the tiny study's columns that still has every kind of task: the attack cell, a
# filter (ac), a pruning (fp-last), a pipeline reusing ac's step (ac>fp) and the clean model
DEFENCES = ["none", "ac", "fp-last", "ac>fp", "clean"]


# ---------------------------------------------------------------------------------------------
# serial vs local:2


@pytest.fixture(scope="module")
def serial_and_dask(tmp_path_factory):
    pytest.importorskip("distributed", reason="the dask extra is not installed (pip install '.[dask]')")
    import torch

    from backdoorlab.experiments.runner import run_study

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local:2 workers run one torch thread each on this 2-core CI
    try:
        serial = tmp_path_factory.mktemp("serial")
        run_study(tiny_study(), serial, progress=False, defences=DEFENCES)
    finally:
        torch.set_num_threads(threads)
    dask = tmp_path_factory.mktemp("dask")
    run_study(tiny_study(), dask, progress=False, defences=DEFENCES, dask="local:2", dask_threads=1)
    return serial, dask


def test_local2_cells_equal_the_serial_run(serial_and_dask):
    serial, dask = serial_and_dask
    a = json.loads((serial / "cells.json").read_text())
    b = json.loads((dask / "cells.json").read_text())
    assert [(c["setting"], c["defence"]) for c in a] == [(c["setting"], c["defence"]) for c in b]
    assert {c["defence"] for c in a} == set(DEFENCES)
    for x, y in zip(a, b):
        assert without_run_fields(x) == without_run_fields(y), (x["defence"], x["setting"])
    # the metrics themselves, by name (the comparison above would pass on two empty records)
    for x, y in zip(a, b):
        assert x["accuracy"] == y["accuracy"] and x["attack_success"] == y["attack_success"], x["defence"]
    run_b = json.loads((dask / "run.json").read_text())
    assert run_b["n_failures"] == 0 and run_b["n_computed"] == len(a)


def test_local2_leaves_no_temporary_or_lock_owner(serial_and_dask):
    _, dask = serial_and_dask
    assert not list(dask.rglob("*.tmp")), "a write did not finish"
    assert (dask / "report.md").is_file() and (dask / "cells.csv").is_file()


def test_local2_rerun_is_all_cached(serial_and_dask):
    """A second run on the same folder (the resume path) computes nothing and starts no cluster."""
    from backdoorlab.experiments.runner import run_study

    _, dask = serial_and_dask
    before = (dask / "cells.json").read_text()
    run_study(tiny_study(), dask, progress=False, defences=DEFENCES, dask="local:2", dask_threads=1)
    run = json.loads((dask / "run.json").read_text())
    assert run["n_computed"] == 0 and run["n_cached"] == run["n_cells"]
    assert without_run_fields(json.loads(before)) == without_run_fields(json.loads((dask / "cells.json").read_text()))


# ---------------------------------------------------------------------------------------------
# two writers, one cell


PAYLOAD = 4_000_000  # characters: a write of several MB takes many system calls


def _writer(root: str, key: str, tag: int, rounds: int, barrier) -> None:
    cache = CellCache(root)
    cell = {"writer": tag, "payload": str(tag) * PAYLOAD}
    for _ in range(rounds):
        barrier.wait(timeout=60)  # a partner that died breaks the barrier instead of hanging
        cache.put(key, cell)


@pytest.mark.parametrize("rounds", [30])
def test_concurrent_writes_of_one_cell_leave_one_whole_cell(tmp_path, rounds):
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    barrier = ctx.Barrier(2)
    key = "0123456789abcdef"
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, tag, rounds, barrier)) for tag in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a writer failed (its temporary was moved away under it?)"
    cell = CellCache(tmp_path).get(key)
    assert cell is not None, "the cell is torn or missing"
    assert cell["writer"] in (1, 2) and cell["payload"] == str(cell["writer"]) * PAYLOAD
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [f"{key}.json"]


# ---------------------------------------------------------------------------------------------
# the graph (no Dask needed)


def test_graph_shares_models_and_orders_reused_steps():
    from backdoorlab.experiments.distributed_grid import build_graph
    from backdoorlab.experiments.runner import plan_cells, resolve_study

    study = resolve_study(tiny_study(shares=(0.5, 0.25)))
    plans = plan_cells(study)
    tasks = build_graph(study, plans, range(len(plans)))
    kinds = [t.kind for t in tasks.values()]
    assert kinds.count("cell") == len(plans)
    assert kinds.count("variant") == 2  # one per share
    assert kinds.count("model") == 3  # two poisoned models, one clean model shared by the data set
    by_defence = {(plans[t.index].setting.id, plans[t.index].defence.id): t for t in tasks.values() if t.kind == "cell"}
    for sid in {p.setting.id for p in plans}:
        ac, acfp = by_defence[(sid, "ac")], by_defence[(sid, "ac>fp")]
        fp, fpac = by_defence[(sid, "fp-last")], by_defence[(sid, "fp>ac")]
        assert ac.key in acfp.deps and fp.key in fpac.deps
        assert not any(d.startswith("cell-") for d in by_defence[(sid, "none")].deps)
    # every dependency is submitted before the task that waits for it
    seen: set[str] = set()
    for t in tasks.values():
        assert set(t.deps) <= seen, t.key
        seen.add(t.key)


@pytest.mark.parametrize("spec, expected", [("local", (None, None)), ("local:3", (3, None)),
                                            ("tcp://10.0.0.1:8786", (None, "tcp://10.0.0.1:8786"))])
def test_parse_target(spec, expected):
    from backdoorlab.experiments.distributed_grid import parse_target

    t = parse_target(spec)
    assert (t.n_workers, t.address) == expected


@pytest.mark.parametrize("bad", ["local:0", "local:x", "remote", "10.0.0.1:8786", "tcp://"])
def test_parse_target_names_the_bad_value(bad):
    from backdoorlab.experiments.distributed_grid import parse_target

    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_target(bad)


def test_local_shape_splits_the_cores():
    from backdoorlab.experiments.distributed_grid import local_shape

    assert local_shape(2, None, 10, cores=2) == (2, 1)
    assert local_shape(None, None, 10, cores=8) == (8, 1)
    assert local_shape(2, None, 10, cores=8) == (2, 4)
    assert local_shape(None, None, 3, cores=8) == (3, 2)  # no idle workers for a 3-cell run
    assert local_shape(None, 2, 10, cores=4) == (4, 2)


# ---------------------------------------------------------------------------------------------
# the extra is missing


def test_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    from backdoorlab.cli import main

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ModuleNotFoundError
    out = tmp_path / "study"
    code = main(["reproduce", "--quick", "--dask", "local:2", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "backdoorlab[dask]" in err and "--dask local:2" in err
    assert not out.exists(), "refused after writing"


def test_missing_extra_in_the_api(tmp_path, monkeypatch):
    from backdoorlab.experiments.runner import run_study

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ModuleNotFoundError, match=r"backdoorlab\[dask\]"):
        run_study(tiny_study(), tmp_path / "x", progress=False, dask="local:2")
    assert not (tmp_path / "x").exists()
