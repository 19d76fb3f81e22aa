"""Regression tests for the fault campaign of issue #16 (native part): each names the reproducer it guards.

1. Absurd thread counts: ``set_num_threads`` refused anything up to 2^31-1, and the kernels then
   started that many OpenMP threads (SIGSEGV at 100,000, libgomp "Out of memory" at 2^31-1). Now
   one policy in csrc/cpu/parallel.cpp validates and caps every count.
2. Silent NaN from finite input: the float32 Gram product squared values near 1e19 into Inf
   (spectral scores, PCA with one 1e38 entry). Now every class is divided by a power of two first;
   results too large for float32 are refused with the row named.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from backdoorlab import native, reference

from _native_helpers import blobs, relu_classes


@pytest.fixture
def threads():
    before = native.get_num_threads()
    yield
    native.set_num_threads(before)


# ---- 1. thread counts -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [65_537, 100_000, 2**31 - 1])
def test_absurd_thread_count_is_refused_with_the_count_and_ceiling_named(n, threads):
    ceiling = native.build_info()["thread_ceiling"]
    before = native.get_num_threads()
    if n <= ceiling:  # a machine with > 16k processors: the count is legal there
        pytest.skip(f"thread ceiling {ceiling} admits {n}")
    with pytest.raises(ValueError, match=rf"number of threads must be in \[1, {ceiling}\].*got {n}$"):
        native.set_num_threads(n)
    assert native.get_num_threads() == before  # a refused count changes nothing


@pytest.mark.parametrize("n, error, message", [
    (0, ValueError, "n must be >= 1, got 0"),
    (-1, ValueError, "n must be >= 1, got -1"),
    (2**31, ValueError, "n must be <= 2147483647, got 2147483648"),
    (2**64, ValueError, "n must be <= 2147483647"),
    (2.0, TypeError, "n must be an int, got float"),
    ("2", TypeError, "n must be an int, got str"),
    (True, TypeError, "n must be an int, got bool"),
])
def test_bad_thread_count_types_and_ranges(n, error, message, threads):
    with pytest.raises(error, match=message):
        native.set_num_threads(n)


def test_every_kernel_runs_at_the_thread_ceiling(rng, threads):
    """The ceiling itself is safe: every kernel completes there with the results of one thread."""
    ceiling = native.build_info()["thread_ceiling"]
    assert ceiling >= 64
    X, off = relu_classes(rng, [30, 0, 25, 40], 12)
    calls = {
        "fastica": lambda: native.fastica(X, off, 3, max_iter=30),
        "pca": lambda: native.pca(X, off, 3),
        "kmeans": lambda: native.kmeans(X, off, 2, n_init=3).labels,
        "silhouette": lambda: native.silhouette_samples(X, off, np.arange(X.shape[0]) % 2),
        "spectral": lambda: native.spectral_scores(X, off),
        "stats": lambda: native.activation_stats(X)["std"],
    }
    native.set_num_threads(1)
    one = {k: f() for k, f in calls.items()}
    native.set_num_threads(ceiling)
    assert native.get_num_threads() == ceiling
    for k, f in calls.items():
        np.testing.assert_array_equal(f(), one[k], err_msg=k)


def test_huge_omp_num_threads_is_clipped_not_started():
    """OMP_NUM_THREADS=100000 (the default count) is clipped to the ceiling like a set count."""
    code = ("import numpy as np; from backdoorlab import native; i = native.build_info(); "
            "X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32); "
            "s = native.spectral_scores(X, np.array([0, 32, 64])); "
            "print(i['max_threads'], i['thread_ceiling'], native.get_num_threads(), bool(np.isfinite(s).all()))")
    env = dict(os.environ, OMP_NUM_THREADS="100000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    max_threads, ceiling, used, finite = out.stdout.split()
    assert int(max_threads) == 100_000 and int(used) == int(ceiling) and finite == "True"


# ---- 2. scale safety --------------------------------------------------------------------------


def _class_tol(X, offsets, center=True, rel=1e-4):
    """Per-row tolerance: rel x the largest (centred) row norm of the row's class."""
    tol = np.zeros(X.shape[0])
    for c in range(offsets.size - 1):
        rows = X[offsets[c]:offsets[c + 1]].astype(np.float64)
        if rows.size:
            if center:
                rows = rows - rows.mean(0)
            tol[offsets[c]:offsets[c + 1]] = rel * np.linalg.norm(rows, axis=1).max()
    return tol


@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e-20, 1.0, 1e19, 1e30, 1e37])
@pytest.mark.parametrize("center", [True, False])
def test_spectral_scores_are_scale_free(rng, scale, center):
    """Issue #16 reproducer: spectral_scores on finite values ~1e19 gave NaN on every row (and
    values ~1e-30 lost their digits to float32 underflow). Scores scale with the data."""
    X0, off = relu_classes(rng, [40, 25], 6)   # 40 > d and 25 > d: the d x d path
    Xw, offw = relu_classes(rng, [5, 4], 12)   # fewer rows than features: the m x m path
    for X, o in ((X0, off), (Xw, offw)):
        Xs = (X.astype(np.float64) * scale).astype(np.float32)
        got = native.spectral_scores(Xs, o, center=center)
        want = reference.spectral_scores(Xs, o, center=center)
        assert np.isfinite(got).all()
        assert (np.abs(got - want) <= _class_tol(Xs, o, center)).all()


def test_pca_with_one_huge_entry_is_finite_and_matches_the_reference(rng):
    """Issue #16 reproducer: pca with one finite 1e38 entry in a class gave NaN on every row. The
    top component (the outlier's direction) matches the reference; the others are resolved to
    float32 precision of the class's scale (docs/native.md)."""
    X = rng.standard_normal((30, 5)).astype(np.float32)
    X[7, 2] = 1e38
    off = np.array([0, 30])
    got = native.pca(X, off, 3)
    want = reference.pca(X, off, 3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-5)
    assert (np.abs(got - want) <= _class_tol(X, off)[:, None]).all()


@pytest.mark.parametrize("scale", [1e-38, 1e-20, 1e19, 1e37])
def test_pca_and_fastica_are_scale_free(rng, scale):
    """PCA projections scale with the data; FastICA's unit-variance sources do not change at all
    (a power-of-two scale is exact, so any scale gives the same whitened data)."""
    X, off = relu_classes(rng, [60, 50], 8)
    Xs = (X.astype(np.float64) * scale).astype(np.float32)
    got = native.pca(Xs, off, 3)
    assert np.isfinite(got).all()
    want = reference.pca(Xs, off, 3)
    assert (np.abs(got - want) <= _class_tol(Xs, off)[:, None]).all()
    s1 = native.fastica(X, off, 3, max_iter=200)
    ss = native.fastica(Xs, off, 3, max_iter=200)
    assert np.isfinite(ss).all()
    np.testing.assert_allclose(ss, s1, atol=2e-3)


@pytest.mark.parametrize("kernel", ["pca", "spectral_scores"])
def test_a_result_beyond_float32_is_refused_naming_the_row(kernel):
    """Finite input whose exact result exceeds FLT_MAX: a ValueError naming kernel, row and class,
    never Inf or NaN (the reference's float64 answer does not fit its float32 output either)."""
    X = np.full((6, 4), 3e38, dtype=np.float32)
    X[1] = -3e38
    off = np.array([0, 0, 6])
    fn = (lambda: native.pca(X, off, 1)) if kernel == "pca" else (lambda: native.spectral_scores(X, off))
    with pytest.raises(ValueError, match=rf"^{kernel}: the result for row \d \(class 1\) is -?[0-9.]+e\+3[89], "
                                         r"beyond the float32 range"):
        fn()


@pytest.mark.parametrize("scale", [1e-38, 1e30, 3e38])
def test_clustering_and_stats_kernels_are_scale_safe(rng, scale):
    """k-means, silhouettes and activation statistics run in float64 already: pinned here so a
    float32 shortcut cannot bring the overflow back."""
    X, off, _truth = blobs(rng, [30, 24], 4, 2)
    Xs = (X.astype(np.float64) * (scale / np.abs(X).max())).astype(np.float32)
    km = native.kmeans(Xs, off, 2, n_init=2)
    assert np.isfinite(km.inertia).all() and np.isfinite(km.centers).all()
    sil = native.silhouette_samples(Xs, off, km.labels)
    np.testing.assert_allclose(sil, reference.silhouette_samples(Xs, off, km.labels), atol=1e-5)
    st = native.activation_stats(Xs)
    ref = reference.activation_stats(Xs)
    for key in ("mean", "std", "max"):
        np.testing.assert_allclose(st[key], ref[key], rtol=1e-6, atol=1e-12 * scale, err_msg=key)


@pytest.mark.parametrize("level", native.build_info()["simd_supported"])
def test_fastica_on_a_class_with_fewer_directions_than_components_is_finite(level):
    """Fuzz seed 30, case 2724: a 4-row class (rank 3 once centred) asked for 4 components. The
    float32 Gram leaves its null direction at noise level, whitening blows that up, and W becomes
    singular; the eigen form of the decorrelation clipped at DBL_MIN and overflowed (NaN at SSE2)."""
    rows = np.array([[2.4497652, 0.0, 0.6763029, 0.0, 0.0, 2.3165042],
                     [1.5541795, 0.0, 0.0, 0.0, 0.0, 2.5047028],
                     [0.0, 0.0, 0.0, 1.3525324, 0.0, 1.7429954],
                     [0.0, 0.0522614, 1.1221719, 0.0, 0.3406046, 1.8527693]], dtype=np.float32)
    before = native.build_info()["simd_selected"]
    try:
        native.set_simd_level(level)
        for max_iter in (1, 2, 35):
            S, n_iter = native.fastica(rows, np.array([0, 0, 4]), n_components=4, max_iter=max_iter, tol=0.1,
                                       seed=4010537085566861998, return_n_iter=True)
            assert np.isfinite(S).all(), (level, max_iter, S)
            assert n_iter[1] >= 1
    finally:
        native.set_simd_level(before)
