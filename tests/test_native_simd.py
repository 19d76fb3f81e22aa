"""Every SIMD level of the CPU core against the NumPy/scikit-learn reference (issue 19).

The hot loops are compiled once per x86-64 level (sse2, avx2, avx512) and one is picked at run
time; each level this CPU runs is forced here with ``native.set_simd_level`` (and once through
``BACKDOORLAB_SIMD`` in a subprocess) and checked on the same seeded inputs as the reference:
FastICA (k = 10, the compiled size, and run-time k on both sides of the small-k limit), PCA and
spectral scores (dense, Lanczos and implicit-Gram eigen-paths), k-means, silhouettes, the batched polar
factor, and the top-k eigen-solver itself against ``numpy.linalg.eigh``, including
ill-conditioned, repeated and rank-deficient spectra. Levels not compiled in or not supported
by this CPU are skipped with the reason; forcing one fails with a message that names it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from backdoorlab import native, reference

from _native_helpers import assert_scores_close_per_class, best_abs_corr, blobs, relu_classes

ALL_LEVELS = ("sse2", "avx2", "avx512")
_INFO = native.build_info()


def _level_param(name: str):
    """``name`` as a parameter, skipped (with the reason) where this build or CPU lacks it."""
    reason = None
    if name not in _INFO.get("simd", []):
        reason = f"SIMD level {name} is not compiled in this build (compiled: {_INFO.get('simd')})"
    elif name not in _INFO.get("simd_supported", []):
        reason = f"this CPU cannot run SIMD level {name} (it runs: {_INFO.get('simd_supported')})"
    return pytest.param(name, id=name, marks=pytest.mark.skipif(reason is not None, reason=reason or ""))


LEVELS = [_level_param(name) for name in ALL_LEVELS]


@pytest.fixture(autouse=True)
def _reference_single_threaded():
    """One BLAS/OpenMP thread for the scikit-learn reference (see test_native_kernels.py)."""
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(params=LEVELS)
def level(request):
    """Force a SIMD level for one test; the level in use before is restored after it."""
    before = native.build_info()["simd_selected"]
    native.set_simd_level(request.param)
    yield request.param
    native.set_simd_level(before)


# ---- choosing a level ------------------------------------------------------------------------


def test_build_info_reports_levels_compiled_and_chosen(level):
    info = native.build_info()
    assert info["simd_selected"] == level
    assert list(info["simd"]) == [lv for lv in ALL_LEVELS if lv in info["simd"]]  # worst first
    assert set(info["simd_supported"]) <= set(info["simd"])
    assert info["simd_best"] == info["simd_supported"][-1]
    assert native.simd_levels() == list(info["simd_supported"])


def test_auto_picks_the_best_level():
    before = native.build_info()["simd_selected"]
    try:
        native.set_simd_level("auto")
        info = native.build_info()
        assert info["simd_selected"] == info["simd_best"]
    finally:
        native.set_simd_level(before)


@pytest.mark.parametrize("bad", ["avx1024", "", "sse", "avx-512"])
def test_unknown_level_fails_with_the_choices(bad):
    before = native.build_info()["simd_selected"]
    with pytest.raises(ValueError, match=f"'{bad}'.*sse2") as exc:
        native.set_simd_level(bad)
    assert "avx2" in str(exc.value)
    assert native.build_info()["simd_selected"] == before  # a refused level changes nothing


def test_level_must_be_a_string():
    with pytest.raises(TypeError, match="int"):
        native.set_simd_level(2)


def test_unsupported_level_fails_clearly():
    unsupported = [lv for lv in _INFO["simd"] if lv not in _INFO["simd_supported"]]
    if not unsupported:
        pytest.skip(f"this CPU runs every compiled level ({_INFO['simd']}): nothing to refuse")
    with pytest.raises(ValueError, match=f"'{unsupported[0]}'.*cannot run"):
        native.set_simd_level(unsupported[0])


def _import_with_env(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BACKDOORLAB_SIMD=value)
    code = "from backdoorlab import native; print(native.build_info()['simd_selected'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", LEVELS)
def test_environment_variable_forces_the_level(name):
    run = _import_with_env(name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == name


def test_environment_variable_with_a_bad_level_fails_at_import():
    run = _import_with_env("avx9000")
    assert run.returncode != 0
    assert "BACKDOORLAB_SIMD='avx9000'" in run.stderr and "sse2" in run.stderr, run.stderr[-2000:]


# ---- the top-k eigen-solver against numpy.linalg.eigh ----------------------------------------


def _symmetric(rng: np.random.Generator, evals: np.ndarray) -> np.ndarray:
    d = evals.size
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (Q * evals) @ Q.T
    return (A + A.T) / 2


def _spectra(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    decay = np.sort(rng.uniform(0.1, 1.0, d))[::-1] * np.linspace(1.0, 0.05, d)
    return {
        "random": decay,
        # condition number 1e12: the whitening of nearly dead channels
        "ill_conditioned": np.logspace(0, -12, d),
        # the top eigenvalue 3 times, then 6 times (more than the Krylov block of 4)
        "repeated": np.r_[[5.0] * 3, [2.0] * 6, np.linspace(1.0, 0.1, d - 9)],
        "repeated_top_6": np.r_[[4.0] * 6, np.linspace(1.0, 0.1, d - 6)],
        # a cluster split at 1e-9 relative: eigenvalues almost but not quite repeated
        "clustered": np.r_[1.0 + 1e-9 * np.arange(5)[::-1], np.linspace(0.5, 0.01, d - 5)],
        # rank 4 < k: the wanted pairs include the zero eigenvalue many times
        "rank_deficient": np.r_[np.linspace(3.0, 1.0, 4), np.zeros(d - 4)],
        # negative eigenvalues (not a covariance): top means largest, as eigh's last ones
        "indefinite": np.linspace(2.0, -3.0, d),
    }


SPECTRA = list(_spectra(np.random.default_rng(0), 20))


def _check_top_eigenpairs(A: np.ndarray, k: int, evals: np.ndarray, evecs: np.ndarray) -> None:
    d = A.shape[0]
    ref_vals, ref_vecs = np.linalg.eigh(A)
    ref_vals, ref_vecs = ref_vals[::-1][:k], ref_vecs[:, ::-1]
    scale = np.abs(ref_vals).max() if np.abs(ref_vals).max() > 0 else 1.0
    assert evals.shape == (k,) and evecs.shape == (k, d)
    assert (np.diff(evals) <= 0).all(), evals
    np.testing.assert_allclose(evals, ref_vals, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(evecs @ evecs.T, np.eye(k), atol=1e-8)
    residual = np.linalg.norm(A @ evecs.T - evecs.T * evals, axis=0)
    assert residual.max() <= 1e-8 * scale, residual
    # eigenvectors are unique only up to a rotation inside each group of equal eigenvalues:
    # compare the projector onto each group (whole groups only; the group cut by k is compared
    # as "lies inside the reference group's space")
    all_vals = np.linalg.eigh(A)[0][::-1]
    i = 0
    while i < k:
        j = i
        while j + 1 < d and abs(all_vals[j + 1] - all_vals[i]) <= 1e-7 * scale:
            j += 1
        ref_space = ref_vecs[:, i:j + 1]
        got = evecs[i:min(j + 1, k)].T
        inside = ref_space @ (ref_space.T @ got)
        gap = min(abs(all_vals[i] - all_vals[i - 1]) if i > 0 else np.inf,
                  abs(all_vals[j + 1] - all_vals[j]) if j + 1 < d else np.inf)
        tol = max(1e-7, 1e-9 * scale / max(gap, 1e-300))
        np.testing.assert_allclose(inside, got, atol=min(tol, 1e-2), err_msg=f"pairs {i}..{j}")
        if j + 1 <= k:
            assert np.abs(got.T @ got - np.eye(j + 1 - i)).max() < 1e-8  # the whole group found
        i = j + 1
    # sign convention: the largest |entry| of every vector is positive
    rows = np.arange(k)
    assert (evecs[rows, np.abs(evecs).argmax(1)] > 0).all()


@pytest.mark.parametrize("spectrum", SPECTRA)
@pytest.mark.parametrize("d, k", [(20, 10), (300, 10), (160, 1), (512, 1)])  # dense; block Krylov; Lanczos (k = 1)
def test_top_eigenpairs_equal_numpy_eigh(level, spectrum, d, k):
    from backdoorlab import _core

    rng = np.random.default_rng(d * 31 + k)
    A = _symmetric(rng, _spectra(rng, d)[spectrum])
    evals, evecs = _core._sym_eig_top(A, k)
    _check_top_eigenpairs(A, k, evals, evecs)


def test_top_eigenpairs_hook_rejects_bad_input():
    from backdoorlab import _core

    A = np.eye(4)
    with pytest.raises(ValueError, match="k=5"):
        _core._sym_eig_top(A, 5)
    B = A.copy()
    B[0, 1] = 1.0
    with pytest.raises(ValueError, match=r"symmetric.*A\[1, 0\]"):
        _core._sym_eig_top(B, 1)
    B = A.copy()
    B[2, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        _core._sym_eig_top(B, 1)


# ---- the kernels at every level against the reference ----------------------------------------


def _sources(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k independent non-Gaussian sources (uniform and Laplace, alternating) and a
    well-conditioned random mixture of them: (S float64 (n, k), X float32 (n, k))."""
    S = np.stack([rng.uniform(-1, 1, n) if i % 2 == 0 else rng.laplace(size=n) for i in range(k)], axis=1)
    S = (S - S.mean(0)) / S.std(0)
    A = rng.standard_normal((k, k)) + 3 * np.eye(k)
    return S, (S @ A.T).astype(np.float32)


@pytest.mark.parametrize("k", [10, 3, 20])  # compiled k = 10; run-time k <= 16; the generic step
def test_fastica_matches_sklearn(level, k):
    rng = np.random.default_rng(100 + k)
    S, X = _sources(rng, 4000, k)
    off = np.array([0, 4000])
    ours, n_iter = native.fastica(X, off, k, max_iter=1000, tol=1e-5, seed=0, return_n_iter=True)
    assert (n_iter < 1000).all(), n_iter
    assert (best_abs_corr(ours, S) > 0.99).all()  # 0.996 measured at k = 20 (4000 samples)
    theirs = reference.fastica(X, off, k, max_iter=1000, tol=1e-5, seed=0)
    assert (best_abs_corr(ours, theirs.astype(np.float64)) > 0.999).all()


@pytest.mark.parametrize("d, k", [(24, 6), (160, 10), (300, 10)])  # dense eigen-path (d < 256); block Krylov
def test_pca_matches_sklearn(level, d, k):
    rng = np.random.default_rng(d)
    scales = np.logspace(1, -4, d)  # ill-conditioned covariance
    X = (rng.standard_normal((700, d)) * scales + 3.0).astype(np.float32)
    off = np.array([0, 300, 300, 700])  # with an empty class
    ours = native.pca(X, off, k)
    ref = reference.pca(X, off, k)
    np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max())


# d = 40: dense eigen-path; 160 and 256: Lanczos on Xc^T (Xc v) with float32 products (classes of
# 300 and 500 rows; 256 also the m x m Gram for 180 rows); 700: the m x m Gram only. The float64
# paths the float32 iteration hands over to where it does not converge — Lanczos on the d x d Gram
# (d = 160) and on Xc^T (Xc v) in float64 (d = 256) — are reached through the test hook.
@pytest.mark.parametrize("float64_paths", [False, True], ids=["float32-first", "float64"])
@pytest.mark.parametrize("d", [40, 160, 256, 700])
def test_spectral_scores_equal_numpy_svd(level, d, float64_paths):
    from backdoorlab import _core

    rng = np.random.default_rng(d)
    X, off = relu_classes(rng, [300, 1, 0, 180, 500], d)
    X[off[4]:off[4] + 40] += 3.0 * rng.standard_normal(d).astype(np.float32)  # an outlier cluster
    for center in (True, False):
        if float64_paths:
            ours = _core._spectral_scores_float64(X, off, center)
        else:
            ours = native.spectral_scores(X, off, center=center)
        assert_scores_close_per_class(ours, reference.spectral_scores(X, off, center=center), off)


def test_spectral_float32_iteration_within_1e_5_of_float64_svd(level):
    """The float32-product iteration on activation-like classes (the benchmark's shapes, cut to a
    few classes) and on isotropic noise, where no direction dominates: within 1e-5 of each
    class's largest score of a float64 SVD, ten times tighter than the kernel tests."""
    from backdoorlab.bench.kernels import synthetic_activations

    rng = np.random.default_rng(7)
    cases = [synthetic_activations(6, 412, 160, seed=1), synthetic_activations(3, 820, 512, seed=2)]
    for data in cases:
        X, off = data.X, data.offsets
        ours, ref = native.spectral_scores(X, off), reference.spectral_scores(X, off)
        for lo, hi in zip(off[:-1], off[1:]):
            assert np.abs(ours[lo:hi] - ref[lo:hi]).max() <= 1e-5 * ref[lo:hi].max()
    for m, d in [(400, 64), (400, 160), (900, 512)]:
        X = rng.standard_normal((m, d)).astype(np.float32)
        off = np.array([0, m])
        ours, ref = native.spectral_scores(X, off), reference.spectral_scores(X, off)
        assert np.abs(ours - ref).max() <= 1e-5 * ref.max()


def test_kmeans_and_silhouette_match_sklearn(level):
    rng = np.random.default_rng(5)
    X, off = relu_classes(rng, [200, 350, 120], 12)
    ours = native.kmeans(X, off, k=3, n_init=10, seed=0)
    ref = reference.kmeans(X, off, k=3, n_init=10, seed=0)
    assert (ours.inertia <= ref.inertia * 1.01).all(), (ours.inertia, ref.inertia)
    Xb, offb, truth = blobs(rng, [90, 150, 60], 5, k=3)
    km = native.kmeans(Xb, offb, k=3, n_init=3, seed=1)
    for c in range(3):
        sl = slice(offb[c], offb[c + 1])
        assert adjusted_rand_score(truth[sl], km.labels[sl]) == 1.0
    np.testing.assert_allclose(native.silhouette_samples(X, off, ours.labels),
                               reference.silhouette_samples(X, off, ours.labels), atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10, 16])
@pytest.mark.parametrize("n", [8, 5])  # whole vector groups, and a partial last group
def test_batched_polar_factor_equals_svd(level, k, n):
    from backdoorlab import _core

    rng = np.random.default_rng(k * 10 + n)
    W = rng.standard_normal((n, k, k))
    W[1] *= 1e3
    Q1, _ = np.linalg.qr(rng.standard_normal((k, k)))
    Q2, _ = np.linalg.qr(rng.standard_normal((k, k)))
    W[2] = (Q1 * np.logspace(0, -5, k)) @ Q2  # condition number 1e5 exactly (1e7 is refused)
    got, failed = _core._polar_factor_batch(W)
    assert not failed.any()
    for i in range(n):
        U, _, Vt = np.linalg.svd(W[i])
        # the iteration stops at a 1e-5 step: orthogonal to ~1e-10, and as close to the SVD's
        # factor as the conditioning allows (8e-9 measured at condition 1e5)
        np.testing.assert_allclose(got[i], U @ Vt, atol=1e-7 if i == 2 else 1e-9, rtol=0)
        np.testing.assert_allclose(got[i] @ got[i].T, np.eye(k), atol=1e-9)
    alone, _ = _core._polar_factor_batch(W[n - 1:n].copy())  # a lane does not depend on its batch
    np.testing.assert_array_equal(alone[0], got[n - 1])


def test_levels_agree_with_each_other():
    """Each level is its own deterministic code, but all compute the same thing: AC's sources
    (k = 10, known independent sources) and spectral scores agree across levels."""
    levels = native.simd_levels()
    if len(levels) < 2:
        pytest.skip(f"this CPU runs one level only ({levels})")
    rng = np.random.default_rng(9)
    S, Xs = _sources(rng, 3000, 10)
    X = np.ascontiguousarray(np.c_[Xs, Xs @ rng.standard_normal((10, 54)).astype(np.float32)])  # 64 features, rank 10
    off = np.array([0, 1200, 3000])
    before = native.build_info()["simd_selected"]
    out = {}
    try:
        for lv in levels:
            native.set_simd_level(lv)
            out[lv] = (native.fastica(X, off, 10, max_iter=400, tol=1e-5, seed=1), native.spectral_scores(X, off))
    finally:
        native.set_simd_level(before)
    base = out[levels[0]]
    for lv in levels[1:]:
        for c in range(2):
            sl = slice(off[c], off[c + 1])
            assert (best_abs_corr(out[lv][0][sl], base[0][sl].astype(np.float64)) > 0.9999).all(), lv
        np.testing.assert_allclose(out[lv][1], base[1], rtol=1e-4, atol=1e-4 * base[1].max())
