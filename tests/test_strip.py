"""Tests of STRIP on a toy model with a planted, source-agnostic trigger (:mod:`_planted_helpers`).

STRIP presumes the trigger works on any input (superimposing another image must not disarm it), so
the model is the planted one; the source-specific HDF5 toy backdoor serves the pipeline mechanics
only. STRIP must give triggered inputs a lower superimposition entropy than clean ones and reject
most of them at the false-rejection rate calibrated on the clean split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _defence_helpers import auroc
from _planted_helpers import TARGET, plant
from backdoorlab.data import to_float_chw
from backdoorlab.defences import Pipeline, Strip
from backdoorlab.defences.strip import strip_entropy, superimpose

FAST = {"n_overlays": 20, "retrain": "none"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctx(planted_ctx):
    return planted_ctx


@pytest.fixture(scope="module")
def test_images(ctx):
    """(clean test images, triggered copies of the non-target ones)."""
    x = to_float_chw(ctx.test.load_images())
    return x, plant(x[torch.from_numpy(ctx.test.labels) != TARGET])


def test_triggered_inputs_have_lower_entropy(ctx, test_images):
    clean, trig = test_images
    pool = to_float_chw(ctx.clean.load_images())
    h_trig = strip_entropy(ctx.model, trig, pool, n_overlays=8, seed=0, salt=1)
    h_clean = strip_entropy(ctx.model, clean, pool, n_overlays=8, seed=0, salt=2)
    scores = np.concatenate([h_trig, h_clean])
    is_trig = np.r_[np.ones(h_trig.size, bool), np.zeros(h_clean.size, bool)]
    assert auroc(-scores, is_trig) > 0.9  # low entropy = triggered
    assert (scores >= 0).all() and (scores <= np.log(ctx.model.n_classes) + 1e-9).all()


def test_rejection_at_the_calibrated_rate(ctx, test_images):
    clean, trig = test_images
    strip = Strip(**FAST)
    threshold, pool, h_cal = strip.calibrate(ctx, progress=False)
    assert (h_cal < threshold).mean() <= strip.frr + 1e-9  # calibrated on the clean split at 5 %
    rejected = strip_entropy(ctx.model, trig, pool, n_overlays=20, seed=0, salt=7) < threshold
    wrongly = strip_entropy(ctx.model, clean, pool, n_overlays=20, seed=0, salt=8) < threshold
    assert rejected.mean() >= 0.85  # 0.9 measured with these seeds (0.64 with 8 overlays)
    assert wrongly.mean() <= 0.15  # held-out clean images: near the calibrated rate


def test_pipeline_step_reports_filter_and_test_time_columns(ctx):
    report = Pipeline("strip", {"strip": FAST}).run(ctx, progress=False)
    step = report.steps[0]
    rep = step.report
    flags = report.results[0].flags
    assert step.name == "strip" and flags.shape == (len(ctx.train),)
    assert step.removal.removed_poisoned + step.removal.removed_clean == int(flags.sum())
    assert len(report.context.train) == len(ctx.train) - int(flags.sum())
    for key in ("threshold", "test_triggered_rejected_pct", "test_clean_rejected_pct", "clean_rejected_pct"):
        assert key in rep
    assert 0 <= rep["test_clean_rejected_pct"] <= 100


def test_run_time_detector_only_leaves_model_and_training_set(ctx, monkeypatch):
    import backdoorlab.defences.strip as strip_mod

    scored = []
    real = strip_mod.strip_entropy
    monkeypatch.setattr(strip_mod, "strip_entropy",
                        lambda model, dataset, *a, **k: scored.append(getattr(dataset, "split", None)) or
                        real(model, dataset, *a, **k))
    report = Pipeline("strip", {"strip": dict(FAST, filter_train=False)}).run(ctx, progress=False)
    step, result = report.steps[0], report.results[0]
    assert "train" not in scored and {"clean", "test_triggered", "test"} <= set(scored)
    assert report.context.model is ctx.model and len(report.context.train) == len(ctx.train)
    assert not result.flags.any() and step.removal.removed_poisoned == step.removal.removed_clean == 0
    assert "test_triggered_rejected_pct" in step.report and "train_entropy_mean" not in step.report
    with pytest.raises(ValueError, match="retrain='none'"):
        Strip(filter_train=False, retrain="scratch")


def test_seeded_and_reproducible(ctx):
    pool = to_float_chw(ctx.clean.load_images())
    a = strip_entropy(ctx.model, ctx.test_triggered, pool, n_overlays=4, seed=3, salt=1)
    b = strip_entropy(ctx.model, ctx.test_triggered, pool, n_overlays=4, seed=3, salt=1)
    c = strip_entropy(ctx.model, ctx.test_triggered, pool, n_overlays=4, seed=4, salt=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_superimpose_blends():
    x = torch.full((2, 3, 4, 4), 0.6)
    o = torch.full((2, 5, 3, 4, 4), 0.6)
    assert superimpose(x, o, "add").eq(1.0).all()  # saturates like image addition
    assert torch.allclose(superimpose(x, o, "mean"), torch.full((2, 5, 3, 4, 4), 0.6))
    with pytest.raises(ValueError, match="overlays must be"):
        superimpose(x, o[:1])
    with pytest.raises(ValueError, match="blend"):
        superimpose(x, o, "max")


@pytest.mark.parametrize("params, match", [
    ({"n_overlays": 0}, "n_overlays"), ({"frr": 0.0}, "frr"), ({"blend": "max"}, "blend"),
    ({"retrain": "later"}, "retrain"), ({"test_time": "yes"}, "test_time"), ({"bogus": 1}, "unexpected"),
])
def test_bad_parameters_fail_before_any_work(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Pipeline("strip>fp", {"strip": params})


def test_quick_study_shows_nc_and_strip_columns(tmp_path):
    """A study config can name the new steps; the report's main table gets a column for each."""
    from _experiments_helpers import md_tables, tiny_study
    from backdoorlab.experiments.runner import run_study

    study = tiny_study()
    study["defences"] = [
        "none",
        {"id": "nc", "pipeline": "nc", "configs": {"nc": {"epochs": 5, "epoch_steps": 2, "batch_size": 4}}},
        {"id": "strip", "pipeline": "strip", "configs": {"strip": {"n_overlays": 4}}},
    ]
    study.pop("fp_thresholds", None)
    study.pop("threshold_sweep", None)
    run_study(study, tmp_path, progress=False)
    tables = md_tables((tmp_path / "report.md").read_text())
    main = next(rows for title, rows in tables.items() if title.startswith("Main"))
    cols = {name: [i for i, h in enumerate(main[0]) if h.startswith(name)] for name in ("NC", "STRIP")}
    assert all(len(c) == 1 for c in cols.values()), main[0]
    for (col,) in cols.values():
        assert all(row[col] not in ("", "–") for row in main[1:])


def test_weighted_quantile_matches_numpy():
    from backdoorlab.defences.strip import weighted_quantile

    rng = np.random.default_rng(0)
    v = rng.normal(size=101)
    for q in (0.0, 0.05, 0.5, 0.97, 1.0):  # equal weights: numpy's default (linear) quantile, Strip's old rule
        assert np.isclose(weighted_quantile(v, np.full(v.size, 3.0), q), np.quantile(v, q))
    w = np.where(v < 0, 4.0, 1.0)  # negatives four times as heavy: the median moves into them
    m = weighted_quantile(v, w, 0.5)
    assert m < 0 and np.isclose((w * (v <= m)).sum() / w.sum(), 0.5, atol=0.02)
    assert weighted_quantile(v, np.where(v > 1, 1.0, 0.0), 0.0) == v[v > 1].min()  # weight 0 rows take no part
    with pytest.raises(ValueError, match="weights"):
        weighted_quantile(v, -np.ones(v.size), 0.5)
    with pytest.raises(ValueError, match="q must"):
        weighted_quantile(v, np.ones(v.size), 1.5)


@pytest.mark.parametrize("class_weight", ["train", "none"])
def test_threshold_holds_the_rate_under_the_training_class_mix(class_weight, monkeypatch):
    """Regression guard of results/nc-strip's 15 % clean-test FRR at a 5 % threshold: the clean split
    is flat over classes (whole tracks, 1-2 per class), the inputs at run time follow the training
    mix, and clean entropy depends on the class. Here class 0 (12.5 % of the clean split, 1 % of the
    training split) scores low: a plain 5 % quantile lands inside class 0 and rejects far fewer
    training-mix inputs than 5 %; the class-weighted one holds 5 % under the training mix."""
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    clean_y = np.repeat(np.arange(8), 200)
    entropy = np.where(clean_y == 0, rng.uniform(0.5, 0.6, clean_y.size), rng.uniform(1.0, 2.0, clean_y.size))
    train_y = np.r_[np.zeros(10, np.int64), np.repeat(np.arange(1, 8), 141)]  # class 0: 1 %

    class CleanSplit:  # what calibrate reads of the clean split; the scores themselves are patched in
        labels, n_classes = clean_y, 8

        def __len__(self):
            return clean_y.size

        def load_images(self):
            return torch.zeros(2, 4, 4, 3, dtype=torch.uint8)

    ctx = SimpleNamespace(clean=CleanSplit(), train=SimpleNamespace(labels=train_y))
    monkeypatch.setattr(Strip, "_score", lambda self, ctx, split, pool, progress, dataset=None: entropy)
    threshold, _, _ = Strip(class_weight=class_weight).calibrate(ctx, progress=False)
    # inputs drawn with the training mix: class 0 at 1 %, each row's entropy from its class's range
    w = np.bincount(train_y, minlength=8)[clean_y] / 200
    rate = float((w * (entropy < threshold)).sum() / w.sum())
    if class_weight == "train":
        assert abs(rate - 0.05) < 0.005
    else:
        assert rate < 0.02 and (entropy < threshold).mean() <= 0.05 + 1e-9  # 5 % of the flat split only
