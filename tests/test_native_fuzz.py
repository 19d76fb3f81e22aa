"""The fault campaign of issue #16 as part of the suite (backdoorlab.bench.fuzz).

A few thousand seeded cases of every ``native`` function — bad dtypes, shapes, strides, NaN/Inf,
extreme magnitudes, empty classes, bad offsets and parameters, absurd thread counts — run in
worker subprocesses, so a crash fails this test instead of killing pytest. The harness itself is
checked too: an injected crash and hang are counted and the campaign goes on, and the judge flags
NaN from finite input, disagreement and wrong exception types.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from backdoorlab import bench, native
from backdoorlab.bench import fuzz

SUITE_CASES = 3000


def test_campaign_finds_no_crash_no_nan_and_no_disagreement():
    s = fuzz.campaign(SUITE_CASES, seed=0, progress=False)
    report = fuzz.format_summary(s)
    assert s["judged"] == SUITE_CASES, report
    assert s["failed"] == 0, report
    # the draw covers every function and every fault class, with answers and refusals both
    assert set(s["by_kernel"]) == set(fuzz.KERNELS), report
    assert set(s["by_fault"]) == {f for faults in fuzz.FAULTS.values() for f in faults}, report
    assert s["counts"]["agreed"] > SUITE_CASES // 5 and s["counts"]["refused"] > SUITE_CASES // 5, report
    for kernel, counts in s["by_kernel"].items():
        assert counts.get("agreed", 0) > 0, f"{kernel} never answered: {report}"
    # extreme magnitudes and absurd thread counts are answered, not only refused
    assert s["by_fault"]["scale"].get("agreed", 0) > 50, report
    assert s["by_fault"]["threads"].get("agreed", 0) > 50, report


def test_a_crash_and_a_hang_are_counted_and_the_campaign_goes_on():
    s = fuzz.campaign(12, seed=3, crash_at=(4,), hang_at=(8,), timeout=5.0, progress=False)
    assert s["judged"] == 12
    assert s["counts"]["crash"] == 1 and s["counts"]["hang"] == 1
    crash, hang = s["failures"]
    assert crash["i"] == 4 and "signal 6" in crash["detail"]
    assert hang["i"] == 8 and "no answer within 5 s" in hang["detail"]
    assert s["failed"] == 2


def test_cases_depend_only_on_seed_and_index():
    a, b = fuzz.make_case(5, 123), fuzz.make_case(5, 123)
    assert a.note == b.note and a.kernel == b.kernel and a.fault == b.fault
    for x, y in zip(a.args, b.args):
        np.testing.assert_array_equal(np.asarray(x, dtype=object), np.asarray(y, dtype=object))
    assert fuzz.make_case(5, 124).note != a.note or fuzz.make_case(6, 123).note != a.note


def _spectral_case(X):
    return fuzz.Case(0, "spectral_scores", "valid", "hand-made", (X, np.array([0, X.shape[0]])), {"center": True})


@pytest.mark.parametrize("fake, outcome", [
    (lambda X, off, **kw: np.full(X.shape[0], np.nan, np.float32), "nan_from_finite"),
    (lambda X, off, **kw: np.zeros(X.shape[0], np.float32) + 5.0, "disagreed"),
    (lambda X, off, **kw: (_ for _ in ()).throw(RuntimeError("boom")), "wrong_error"),
    (lambda X, off, **kw: (_ for _ in ()).throw(IndexError("boom")), "wrong_error"),
    (lambda X, off, **kw: (_ for _ in ()).throw(ValueError("no")), "refused_where_reference_answers"),
])
def test_the_judge_flags_bad_native_answers(monkeypatch, rng, fake, outcome):
    X = rng.standard_normal((20, 3)).astype(np.float32)
    X[:, 0] *= 10  # a well-separated top direction: the scores are determined
    assert fuzz.run_case(_spectral_case(X))["outcome"] == "agreed"
    monkeypatch.setattr(native, "spectral_scores", fake)
    assert fuzz.run_case(_spectral_case(X))["outcome"] == outcome


def test_the_judge_flags_an_accepted_bad_thread_count(monkeypatch):
    case = fuzz.Case(0, "set_num_threads", "threads", "hand-made", (100_000,), {})
    assert fuzz.run_case(case)["outcome"] == "refused"
    monkeypatch.setattr(native, "set_num_threads", lambda n: None)
    assert fuzz.run_case(case)["outcome"] == "answered_invalid_call"


def test_bench_entry_point_writes_the_summary(tmp_path, capsys):
    assert "fuzz" in bench.available()
    out = tmp_path / "fuzz.json"
    assert bench.dispatch("fuzz", ["--cases", "40", "--seed", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fuzz seed 1: 40/40 cases" in text and "crashes 0" in text and "NaN from finite 0" in text
    saved = json.loads(out.read_text())
    assert saved["cases"] == 40 and saved["failed"] == 0 and sum(saved["counts"].values()) == 40
    assert bench.dispatch("fuzz", ["--seed", "1", "--case", "7"]) == 0
    assert "case 7 of seed 1" in capsys.readouterr().out
