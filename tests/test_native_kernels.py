"""Native kernels against the NumPy/scikit-learn reference on the same seeded inputs (issue 2).

Deterministic kernels are compared value by value (stats 1e-5, spectral scores 1e-4 relative,
silhouettes, PCA); stochastic ones by invariants: k-means inertia within 1 % of scikit-learn
with the same n_init, the objective never rising over iterations, ARI 1.0 on separated blobs,
identical labels with 1 and 2 threads; FastICA recovering known sources (|corr| > 0.99).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from backdoorlab import native, reference

from _native_helpers import DEVICES, assert_scores_close_per_class, best_abs_corr, blobs, mixed_sources, relu_classes


@pytest.fixture(autouse=True)
def _reference_single_threaded():
    """scikit-learn/OpenBLAS thread pools collapse on an oversubscribed machine (seconds per tiny
    k-means); one thread keeps the reference calls fast and the suite's time predictable."""
    import sklearn.cluster  # noqa: F401  (load the pools first: threadpoolctl limits loaded ones)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def threads():
    """Restore the native thread count after a test that changes it."""
    before = native.get_num_threads()
    yield
    native.set_num_threads(before)


# ---- build info ------------------------------------------------------------------------------


def test_build_info_reports_what_was_compiled():
    info = native.build_info()
    for key in ("version", "openmp", "max_threads", "simd", "simd_selected", "cuda", "cuda_built", "kernels"):
        assert key in info, key
    assert set(info["kernels"]) == set(native.KERNELS)
    assert all(v["cpu"] == "native" for v in info["kernels"].values()), info["kernels"]


def test_tanh_kernel_matches_numpy():
    from backdoorlab import _core

    x = np.concatenate([np.linspace(-30, 30, 200_001), np.logspace(-30, 1.5, 2000), -np.logspace(-30, 1.5, 2000),
                        [0.0, 0.125, -0.125, 9.0, -9.0]]).astype(np.float32)
    ref = np.tanh(x.astype(np.float64))
    got = _core._tanh_f(x).astype(np.float64)
    assert np.abs(got - ref).max() < 1e-6
    # relative accuracy too: near 0 a naive (1 - e) / (1 + e) cancels (error ~1e-7 / |x|)
    nonzero = x != 0
    assert (np.abs(got - ref)[nonzero] / np.abs(ref[nonzero])).max() < 1e-6
    assert np.array_equal(np.sign(got), np.sign(ref))


# ---- 1. activation statistics ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(300, 7), (120, 5, 3, 4)])
def test_activation_stats_equal_numpy(rng, device, shape):
    acts = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    acts[acts < 0.5] = 0.0
    r = native.activation_stats(acts, device=device)
    v = np.moveaxis(acts.astype(np.float64), 1, -1).reshape(-1, shape[1])  # values per channel
    np.testing.assert_allclose(r["mean"], v.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["std"], v.std(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["max"], v.max(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["frac_positive"], (v > 0).mean(0), rtol=1e-5, atol=1e-5)
    assert r["count"] == shape[0]


@pytest.mark.parametrize("device", DEVICES)
def test_activation_stats_per_class_and_streaming(rng, device):
    acts = (rng.standard_normal((500, 6, 2, 2)) + 100.0).astype(np.float32)  # far from 0: tests the two-pass moments
    labels = rng.integers(0, 4, 500)
    labels[labels == 2] = 3  # class 2 empty
    whole = native.activation_stats(acts, labels, 4, device=device)
    acc = native.ActivationStats(6, n_classes=4, device=device)
    for lo, hi in [(0, 1), (1, 77), (77, 300), (300, 500)]:
        acc.update(acts[lo:hi], labels[lo:hi])
    streamed = acc.result()
    ref = reference.activation_stats(acts, labels, 4)
    for key in ("mean", "std", "max", "frac_positive"):
        np.testing.assert_allclose(whole[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(streamed[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert np.isnan(whole["mean"][2]).all() and whole["count"][2] == 0
    np.testing.assert_array_equal(whole["count"], np.bincount(labels, minlength=4))


def test_activation_stats_rejects_nan_and_leaves_accumulator_unchanged(rng):
    acc = native.ActivationStats(3)
    good = rng.standard_normal((10, 3)).astype(np.float32)
    acc.update(good)
    before = acc.result()
    bad = good.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*row 4"):
        acc.update(bad)
    after = acc.result()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


# ---- 2. FastICA and PCA ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_fastica_recovers_known_sources(rng, device):
    """Three classes, each its own random mixture of 3 known non-Gaussian sources into 5 dims."""
    sizes = [1500, 2000, 1200]
    parts, truths = [], []
    for n in sizes:
        S, _ = mixed_sources(rng, n, 3)
        A = rng.standard_normal((3, 5))
        parts.append((S @ A + 0.01 * rng.standard_normal((n, 5))).astype(np.float32))
        truths.append(S)
    X = np.concatenate(parts)
    offsets = np.array([0, 1500, 3500, 4700], dtype=np.int64)
    Y, n_iter = native.fastica(X, offsets, n_components=3, max_iter=500, tol=1e-4, seed=3, device=device,
                               return_n_iter=True)
    assert Y.shape == (4700, 3) and Y.dtype == np.float32
    assert (n_iter < 500).all(), n_iter
    for c, S in enumerate(truths):
        corr = best_abs_corr(Y[offsets[c]:offsets[c + 1]], S)
        assert (corr > 0.99).all(), (c, corr)
    # unit variance per class and component, as scikit-learn's whiten="unit-variance"
    np.testing.assert_allclose(Y[:1500].std(0), 1.0, atol=1e-3)


def test_fastica_matches_sklearn_components(rng):
    """Same sources as scikit-learn's FastICA up to sign and order."""
    S, X = mixed_sources(rng, 3000, 5)
    off = np.array([0, 3000])
    ours = native.fastica(X, off, 5, max_iter=1000, tol=1e-5, seed=0)
    theirs = reference.fastica(X, off, 5, max_iter=1000, tol=1e-5, seed=0)
    assert (best_abs_corr(ours, theirs.astype(np.float64)) > 0.999).all()


def test_fastica_class_result_does_not_depend_on_its_batch(rng):
    """Classes are decorrelated up to 8 at a time (one per vector lane) and stop at different
    iterations: each class must still get exactly the result it gets alone."""
    sizes = [120, 80, 200, 60, 150, 90, 110, 70, 130, 100, 95]  # 11 classes: two batches
    X, off = relu_classes(rng, sizes, 12)
    full, it_full = native.fastica(X, off, 5, max_iter=300, tol=5e-3, seed=7, return_n_iter=True)
    early, late = np.flatnonzero(it_full < 300), np.flatnonzero(it_full == 300)
    assert len(set(it_full.tolist())) >= 3 and early.size and late.size, it_full  # lanes stop at different steps
    for c in sorted({int(early[0]), int(early[-1]), int(late[0]), int(late[-1])}):
        alone = np.zeros_like(off)  # every other class emptied: same index, same random start
        alone[c + 1:] = off[c + 1] - off[c]
        Xc = X[off[c]:off[c + 1]]
        Yc, it_c = native.fastica(Xc, alone, 5, max_iter=300, tol=5e-3, seed=7, return_n_iter=True)
        np.testing.assert_array_equal(Yc, full[off[c]:off[c + 1]])
        assert it_c[c] == it_full[c]


@pytest.mark.parametrize("device", DEVICES)
def test_whiten_matches_sklearn_and_is_unit_variance(rng, device):
    scales = np.linspace(0.2, 4.0, 24)[::-1]
    X = (rng.standard_normal((700, 24)) * scales + 3.0).astype(np.float32)
    off = np.array([0, 300, 300, 700])  # with an empty class
    ours = native.whiten(X, off, 6, device=device)
    np.testing.assert_allclose(ours, reference.whiten(X, off, 6), atol=2e-5 * np.abs(ours).max())
    for a, b in ((0, 300), (300, 700)):  # FastICA's whitening: identity covariance, ddof 0
        np.testing.assert_allclose(np.cov(ours[a:b].T, ddof=0), np.eye(6), atol=1e-5)
    with pytest.raises(ValueError, match="class 0 has 1 rows"):
        native.whiten(X[:3], np.array([0, 1, 3]), 1, device=device)
    # a caller holding the PCA projection gets the same whitening from unit_variance alone
    np.testing.assert_array_equal(native.unit_variance(native.pca(X, off, 6, device=device), off), ours)


def test_unit_variance_rejects_bad_input():
    Y = np.ones((5, 2), np.float32)
    with pytest.raises(TypeError, match="Y must have dtype float32"):
        native.unit_variance(Y.astype(np.float64), np.array([0, 5]))
    with pytest.raises(ValueError, match="offsets"):
        native.unit_variance(Y, np.array([0, 4]))


def test_whitened_rows_are_fastica_sources_up_to_a_rotation(rng):
    """FastICA's sources are the whitened rows times an orthogonal matrix, converged or not: the
    same Gram matrix in every class, so k-means finds the same partition (the AC shortcut)."""
    sizes = [120, 80, 200, 60, 150, 90, 110, 70, 130, 100, 95]
    X, off = relu_classes(rng, sizes, 12)
    sources, n_iter = native.fastica(X, off, 5, max_iter=300, tol=5e-3, seed=7, return_n_iter=True)
    assert (n_iter == 300).any() and (n_iter < 300).any(), n_iter  # converged and not: both orthogonal
    white = native.whiten(X, off, 5)
    for a, b in zip(off[:-1], off[1:]):
        s, w = sources[a:b].astype(np.float64), white[a:b].astype(np.float64)
        np.testing.assert_allclose(s @ s.T, w @ w.T, atol=1e-4 * np.abs(w @ w.T).max())
    km_s = native.kmeans(sources, off, 2, n_init=10, seed=3).labels
    km_w = native.kmeans(white, off, 2, n_init=10, seed=3).labels
    for a, b in zip(off[:-1], off[1:]):
        same = (km_s[a:b] == km_w[a:b]).all() or (km_s[a:b] != km_w[a:b]).all()
        assert same, (a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_pca_matches_sklearn(rng, device):
    scales = np.linspace(0.2, 4.0, 24)[::-1]
    X = (rng.standard_normal((700, 24)) * scales + 3.0).astype(np.float32)
    off = np.array([0, 300, 300, 700])  # with an empty class
    ours = native.pca(X, off, 6, device=device)
    ref = reference.pca(X, off, 6)
    np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max())


# ---- 3. k-means and silhouette ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_inertia_within_one_percent_of_sklearn(rng, device):
    X, off = relu_classes(rng, [200, 350, 120, 260], 12)
    ours = native.kmeans(X, off, k=3, n_init=10, seed=0, device=device)
    ref = reference.kmeans(X, off, k=3, n_init=10, seed=0)
    assert ours.labels.dtype == np.int32 and ours.centers.shape == (4, 3, 12) and ours.inertia.dtype == np.float64
    assert (ours.inertia <= ref.inertia * 1.01).all(), (ours.inertia, ref.inertia)
    # the reported inertia is the one of the reported labels and centres
    for c in range(4):
        rows = X[off[c]:off[c + 1]].astype(np.float64)
        lab = ours.labels[off[c]:off[c + 1]]
        direct = ((rows - ours.centers[c][lab]) ** 2).sum()
        assert direct == pytest.approx(ours.inertia[c], rel=1e-5)


def test_kmeans_objective_never_rises(rng):
    """Lloyd steps from the same k-means++ start: the inertia after t+1 steps <= after t."""
    X, off = relu_classes(rng, [400], 6)
    inertias = [native.kmeans(X, off, k=4, n_init=1, max_iter=t, tol=0.0, seed=7).inertia[0] for t in range(1, 15)]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(inertias, inertias[1:])), inertias


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_finds_separated_blobs(rng, device):
    X, off, truth = blobs(rng, [90, 150, 60], 5, k=3)
    km = native.kmeans(X, off, k=3, n_init=3, seed=1, device=device)
    for c in range(3):
        sl = slice(off[c], off[c + 1])
        assert adjusted_rand_score(truth[sl], km.labels[sl]) == 1.0


def test_results_do_not_depend_on_thread_count(rng, threads):
    X, off = relu_classes(rng, [150, 90, 200, 60, 110], 16)
    runs = []
    for n in (1, 2):
        native.set_num_threads(n)
        km = native.kmeans(X, off, k=2, n_init=4, seed=5)
        runs.append((native.fastica(X, off, 4, max_iter=50, seed=5), km.labels, km.inertia,
                     native.spectral_scores(X, off), native.pca(X, off, 3)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    # one class: the inner parallel paths (Gram matrix, k-means runs) are used instead
    one = np.array([0, X.shape[0]])
    outs = []
    for n in (1, 2):
        native.set_num_threads(n)
        outs.append((native.kmeans(X, one, k=3, n_init=4, seed=2).labels, native.spectral_scores(X, one)))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_silhouette_equals_sklearn(rng, device):
    X, off, truth = blobs(rng, [80, 120, 50], 4, k=3, spread=3.0, distance=3.0)
    labels = truth.astype(np.int32)
    labels[off[2]:off[3]] = 0  # one class with a single cluster: silhouettes 0 by definition
    labels[off[1]] = 7         # a singleton cluster with an unusual label value
    ours = native.silhouette_samples(X, off, labels, device=device)
    ref = reference.silhouette_samples(X, off, labels)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert (ours[off[2]:] == 0).all() and ours[off[1]] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_silhouette_of_identical_rows_is_zero(rng, device):
    """A class of identical rows split into two clusters: every distance is 0, so a = b = 0 and
    the silhouette is 0. Found by the 100,000-case fuzz run: the reference once took
    scikit-learn's expanded Euclidean distances, whose ~1e-8 rounding noise gave -0.46..0.6."""
    # the row of fuzz case 1999 (seed 0): its squared norm rounds so that |x|^2 + |x|^2 - 2xx != 0
    row = np.array([-1.9391652, 1.2053893, 3.53956, -0.26960883, -0.81065625, 0.7048253,
                    0.32412836, -0.4028428, -1.0975116], dtype=np.float32)
    X = np.vstack([np.tile(row, (13, 1)), rng.standard_normal((6, 9)).astype(np.float32)])
    off = np.array([0, 13, 19], dtype=np.int64)
    labels = np.r_[np.arange(13) % 2, np.arange(6) % 2].astype(np.int32)
    ours = native.silhouette_samples(X, off, labels, device=device)
    ref = reference.silhouette_samples(X, off, labels)
    assert (ref[:13] == 0).all() and (ours[:13] == 0).all()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---- 4. spectral signatures ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [True, False])
def test_spectral_scores_equal_numpy_svd(rng, device, center):
    X, off = relu_classes(rng, [300, 1, 0, 180, 500], 40)
    X[off[4]:off[4] + 40] += 3.0 * rng.standard_normal(40).astype(np.float32)  # an outlier cluster
    ours = native.spectral_scores(X, off, center=center, device=device)
    assert_scores_close_per_class(ours, reference.spectral_scores(X, off, center=center), off)


# ---- 5. pruning ------------------------------------------------------------------------------


def test_pruning_order_is_stable_ascending_and_mask(rng):
    mean = np.round(rng.standard_normal(300), 1)  # many ties
    order = native.pruning_order(mean)
    np.testing.assert_array_equal(order, np.argsort(mean, kind="stable"))
    np.testing.assert_array_equal(order, reference.pruning_order(mean))
    mask = native.pruning_mask(order, 40)
    assert mask.dtype == np.float32 and mask.sum() == 260 and (mask[order[:40]] == 0).all()
    np.testing.assert_array_equal(mask, reference.pruning_mask(order, 40))
    assert native.pruning_mask(order, 0).min() == 1.0 and native.pruning_mask(order, 300).max() == 0.0


# ---- GIL -------------------------------------------------------------------------------------


def test_long_kernels_release_the_gil(rng):
    """Python keeps running in another thread while a kernel works.

    The kernel is called again and again until it has run for a while in all, and only the main
    thread's ticks that fall *inside* a kernel call count: with the GIL held there could be none.
    So the test holds on a fast machine (short calls) as on a slow one, and cannot pass by timing.
    """
    X, off = relu_classes(rng, [400] * 40, 64)
    calls: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def work():
        try:
            while sum(b - a for a, b in calls) < 0.3 and len(calls) < 200:
                began = time.perf_counter()
                native.fastica(X, off, 10, max_iter=300, tol=0.0)
                calls.append((began, time.perf_counter()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=work)
    ticks: list[float] = []
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    assert not errors, errors
    inside = sum(any(a < t < b for a, b in calls) for t in ticks)
    assert inside >= 10, (inside, len(ticks), len(calls))


# ---- more features than rows (flattened conv maps): the m x m Gram path -----------------------


def test_fewer_rows_than_features_match_the_reference(rng):
    """Classes with m < d take the dual (m x m) eigenproblem; results must not change."""
    X = (rng.standard_normal((300, 40)) @ rng.standard_normal((40, 700)) * np.linspace(0.2, 3, 700) + 1)
    X = X.astype(np.float32)
    off = np.array([0, 120, 300])  # 120 and 180 rows, 700 features
    ref = reference.pca(X, off, 5)
    np.testing.assert_allclose(native.pca(X, off, 5), ref, atol=1e-4 * np.abs(ref).max())
    for center in (True, False):
        ref = reference.spectral_scores(X, off, center=center)
        np.testing.assert_allclose(native.spectral_scores(X, off, center=center), ref, rtol=1e-4,
                                   atol=1e-4 * ref.max())
    S, _ = mixed_sources(rng, 500, 3)
    Xi = (S @ rng.standard_normal((3, 900)) + 0.01 * rng.standard_normal((500, 900))).astype(np.float32)
    Y = native.fastica(Xi, np.array([0, 500]), 3, max_iter=500, tol=1e-4)
    assert (best_abs_corr(Y, S) > 0.99).all()


def _polar_numpy(W: np.ndarray) -> np.ndarray:
    """(W W^T)^{-1/2} W = U V^T from the SVD W = U S V^T."""
    U, _, Vt = np.linalg.svd(W)
    return U @ Vt


@pytest.mark.parametrize("k", [1, 3, 10, 16])
def test_batched_polar_factor_equals_svd(rng, k):
    """FastICA's symmetric decorrelation, 8 matrices at once, against NumPy's SVD; lanes with
    very different conditioning (they stop after different numbers of steps) stay independent."""
    from backdoorlab import _core

    W = rng.standard_normal((8, k, k))
    W[1] *= 1e3                                   # scale: the polar factor does not change
    W[2] = W[2] @ np.diag(np.logspace(0, -5, k))  # condition number 1e5
    got, failed = _core._polar_factor_batch(W)
    assert not failed.any()
    for l in range(8):
        np.testing.assert_allclose(got[l], _polar_numpy(W[l]), atol=1e-9, rtol=0)
        np.testing.assert_allclose(got[l] @ got[l].T, np.eye(k), atol=1e-9)  # stops at a 1e-5 step
    alone, _ = _core._polar_factor_batch(W[2:3].copy())
    np.testing.assert_array_equal(alone[0], got[2])


def test_batched_polar_factor_reports_singular_matrices(rng):
    from backdoorlab import _core

    W = rng.standard_normal((3, 6, 6))
    W[1, 4] = W[1, 2]  # two equal rows: singular
    got, failed = _core._polar_factor_batch(W)
    assert failed.tolist() == [False, True, False]
    np.testing.assert_array_equal(got[1], W[1])  # left unchanged for the caller's fallback
    np.testing.assert_allclose(got[0], _polar_numpy(W[0]), atol=1e-9)
    with pytest.raises(ValueError, match="matrices"):
        _core._polar_factor_batch(rng.standard_normal((9, 4, 4)))
    with pytest.raises(ValueError, match="size"):
        _core._polar_factor_batch(rng.standard_normal((2, 4, 5)))
