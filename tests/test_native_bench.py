"""The benchmark entry points: `backdoorlab bench NAME` / `python -m backdoorlab.bench NAME` dispatch,
and the kernels benchmark end to end on a tiny shape (figures present, F1 computed, JSON written)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backdoorlab import bench
from backdoorlab.bench import kernels


def test_dispatch_lists_and_rejects_unknown_benchmarks():
    assert "kernels" in bench.available()
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; available: .*kernels"):
        bench.dispatch("nope", [])
    with pytest.raises(ValueError, match="lowercase module name"):
        bench.dispatch("../x", [])


def test_cli_and_module_entry_points_reach_the_benchmark(capsys):
    """`backdoorlab bench kernels --help` reaches the benchmark's own parser (the subcommand module is
    driven directly: building the whole CLI would import every other subcommand, torch included)."""
    import argparse

    from backdoorlab.bench.__main__ import main as module_main
    from backdoorlab.cli import bench as cli_bench

    parser = argparse.ArgumentParser(prog="backdoorlab bench")
    cli_bench.add_parser(parser)
    args = parser.parse_args(["kernels", "--help"])
    assert args.name == "kernels" and args.args == ["--help"]
    with pytest.raises(SystemExit) as exc:
        cli_bench.run(args)
    assert exc.value.code == 0
    assert "--ref-classes" in capsys.readouterr().out
    assert module_main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_synthetic_activations_plant_one_poison_cluster():
    data = kernels.synthetic_activations(5, 40, 12, rate=0.2, seed=3)
    assert data.X.dtype == np.float32 and data.X.shape == (200, 12) and (data.X >= 0).all()
    assert data.poisoned.sum() == 8 and data.poisoned[:8].all()  # class 0 only
    again = kernels.synthetic_activations(5, 40, 12, rate=0.2, seed=3)
    np.testing.assert_array_equal(data.X, again.X)


def test_f1_and_flags():
    truth = np.array([1, 1, 0, 0, 0], bool)
    assert kernels.f1(truth.copy(), truth) == 1.0
    assert kernels.f1(np.zeros(5, bool), truth) == 0.0
    labels = np.array([1, 0, 0, 0, 0, 0], np.int32)
    assert kernels.ac_flags(labels, np.array([0, 6])).tolist() == [True] + [False] * 5
    scores = np.array([0.1, 5.0, 0.2, 0.3], np.float32)
    assert kernels.ss_flags(scores, np.array([0, 4]), 0.1).tolist() == [False, True, False, False]


def test_kernels_benchmark_runs_end_to_end(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(kernels.SHAPES, "ytaf", (6, 60, 16))
    out = tmp_path / "bench.json"
    assert kernels.run(["--shapes", "ytaf", "--ref-classes", "3", "--n-init", "2", "--ref-threads", "1",
                        "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "extrapolated x2.00 from 3 classes" in text and "goal (AC on YTAF" in text
    result = json.loads(out.read_text())["results"][0]
    for step in ("AC", "AC+rotation", "spectral"):
        fig = result["steps"][step]
        assert fig["ratio"] > 0 and fig["cpu_ratio"] > 0 and 0 <= fig["f1_native"] <= 1
    # AC skips FastICA's rotation: the same 2-means partition as with it, and less time than with it
    level = next(iter(result["levels"].values()))
    assert level["same_partition_classes"] == 6 and "same 2-means partition with and without" in text
    assert level["ac_gflop"] < level["ac_rot_gflop"]


def test_kernels_benchmark_reports_every_simd_level(monkeypatch, tmp_path, capsys):
    """--simd all: one native run per level this CPU runs, each against the one reference run,
    with the arithmetic bound; the level in use is restored afterwards."""
    from backdoorlab import native

    monkeypatch.setitem(kernels.SHAPES, "gtsrb", (3, 50, 14))
    before = native.build_info()["simd_selected"]
    out = tmp_path / "bench.json"
    assert kernels.run(["--shapes", "gtsrb", "--ref-classes", "0", "--n-init", "1", "--ref-threads", "1",
                        "--simd", "all", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    payload = json.loads(out.read_text())
    result = payload["results"][0]
    assert list(result["levels"]) == native.simd_levels()
    for level, lv in result["levels"].items():
        assert f"-- SIMD {level} --" in text and f"gtsrb at SIMD {level}: AC" in text
        assert lv["ac_gflop"] > 0 and lv["ac_over_bound"] > 0
        assert lv["ac_over_rot_bound"] == pytest.approx(lv["ac_over_bound"] * lv["ac_bound_s"] / lv["ac_rot_bound_s"])
        assert all(fig["ratio"] > 0 for fig in lv["steps"].values())
    assert payload["gflops_sgemm"] > 0
    assert native.build_info()["simd_selected"] == before


def test_best_of_keeps_the_first_outputs_and_each_smallest_timing():
    runs = [{"t_ac": 2.0, "cpu_ac": 3.0, "t_ss": 1.0, "labels": "first"},
            {"t_ac": 1.5, "cpu_ac": 3.5, "t_ss": 1.2, "labels": "second"}]
    assert kernels.best_of(runs) == {"t_ac": 1.5, "cpu_ac": 3.0, "t_ss": 1.0, "labels": "first"}
    with pytest.raises(ValueError, match="at least one run"):
        kernels.best_of([])


def test_kernels_benchmark_repeat(monkeypatch, tmp_path, capsys):
    """--repeat 2: every side timed twice (the smallest kept), recorded in the JSON; 0 refused."""
    monkeypatch.setitem(kernels.SHAPES, "gtsrb", (3, 50, 14))
    calls = {"native": 0, "reference": 0}
    real_native, real_reference = kernels.run_native, kernels.run_reference

    def counted(side, fn):
        def wrapper(*a, **kw):
            calls[side] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(kernels, "run_native", counted("native", real_native))
    monkeypatch.setattr(kernels, "run_reference", counted("reference", real_reference))
    out = tmp_path / "bench.json"
    assert kernels.run(["--shapes", "gtsrb", "--ref-classes", "0", "--n-init", "1", "--ref-threads", "1",
                        "--repeat", "2", "--json", str(out)]) == 0
    assert calls["reference"] == 2 + kernels.F1_SEEDS  # the F1-over-seeds runs are not timings
    assert calls["native"] == 2 + kernels.F1_SEEDS  # all classes: the subset is the full run
    assert "best of 10" in capsys.readouterr().out
    assert json.loads(out.read_text())["args"]["repeat"] == 2
    with pytest.raises(SystemExit):
        kernels.run(["--repeat", "0"])


def test_kernels_benchmark_refuses_an_unknown_level(capsys):
    with pytest.raises(SystemExit) as exc:
        kernels.run(["--simd", "avx9000"])
    assert exc.value.code == 2
    assert "--simd avx9000: not a level" in capsys.readouterr().err


def test_art_comparison_says_how_to_install_art(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "art", None)  # import art -> ImportError
    with pytest.raises(SystemExit, match=r"adversarial-robustness-toolbox.*pip install"):
        kernels.run(["--art"])


def test_art_comparison_times_art_on_the_same_classes(monkeypatch, tmp_path):
    pytest.importorskip("art", reason="IBM ART is the optional extra .[art]")
    monkeypatch.setitem(kernels.SHAPES, "ytaf", (4, 60, 16))
    out = tmp_path / "bench.json"
    assert kernels.run(["--shapes", "ytaf", "--ref-classes", "2", "--n-init", "1", "--ref-threads", "1", "--art",
                        "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["art_version"].startswith("1.20")
    for fig in result["steps"].values():
        assert fig["art_ratio"] > 0 and fig["art_cpu_ratio"] > 0 and 0 <= fig["f1_art"] <= 1
        assert fig["art_s"] == pytest.approx(fig["art_measured_s"] * 2)  # extrapolated from 2 of 4 classes
