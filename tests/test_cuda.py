"""Tests of the CUDA core ``backdoorlab._core_cuda`` against NumPy / scikit-learn references.

Two kinds:

* Tests that run wherever a CUDA build exists, GPU or not: the module imports, ``build_info()``
  works without a driver, bad input is refused with the CPU path's errors before any device
  work, and with no GPU every kernel raises a clear ``RuntimeError`` (never a crash).
* ``@pytest.mark.cuda`` tests: every kernel against its reference on seeded inputs (the same
  comparisons as the CPU core's tests), DLPack input from a PyTorch CUDA tensor, out-of-memory
  reporting. They skip, with the reason, without a CUDA build or without a visible GPU.

Inputs are tiny, so the suite stays fast on a GPU; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from _cuda_helpers import grouped, load_cuda_module, require_cuda_build, require_gpu

KERNELS = ("stats_update", "fastica", "pca", "kmeans", "silhouette_samples", "spectral_scores",
           "pruning_order", "pruning_mask")


@pytest.fixture
def cu():
    return require_cuda_build()


@pytest.fixture
def gpu():
    return require_gpu()


def _stats_state(G: int, C: int):
    return (np.zeros(G, np.int64), np.zeros(G, np.int64), np.zeros((G, C)), np.zeros((G, C)),
            np.full((G, C), -np.inf), np.zeros((G, C), np.int64))


# ---- runs with a CUDA build, with or without a GPU ----------------------------------------------


def test_build_reports_itself_without_needing_a_gpu(cu):
    info = cu.build_info()
    assert info["cuda"] is True
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert info["cuda_architectures"] and all(isinstance(a, int) for a in info["cuda_architectures"])
    assert info["cudart"] == "static"
    if info["cuda_devices"] == 0:
        assert isinstance(info["cuda_error"], str) and info["cuda_error"]
    else:
        assert info["cuda_error"] is None
        assert len(info["cuda_device_names"]) == info["cuda_devices"]
    for name in KERNELS:
        assert callable(getattr(cu, name)), name


def test_without_gpu_every_kernel_raises_a_clear_runtime_error(cu):
    if cu.build_info()["cuda_devices"] > 0:
        pytest.skip("a GPU is visible: the no-GPU error path cannot be exercised here")
    rng = np.random.default_rng(0)
    X, off = grouped(rng, [6, 6], 3)
    calls = {
        "fastica": lambda: cu.fastica(X, off, 2, 50, 1e-3, 0),
        "pca": lambda: cu.pca(X, off, 2),
        "kmeans": lambda: cu.kmeans(X, off, 2, 2, 10, 1e-4, 0),
        "silhouette_samples": lambda: cu.silhouette_samples(X, off, np.zeros(12, np.int32)),
        "spectral_scores": lambda: cu.spectral_scores(X, off, True),
        "stats_update": lambda: cu.stats_update(X.reshape(12, 3, 1), np.zeros(12, np.int64), *_stats_state(1, 3)),
        "pruning_order": lambda: cu.pruning_order(np.arange(4.0)),
        "pruning_mask": lambda: cu.pruning_mask(np.arange(4, dtype=np.int64), 1),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            call()


def test_bad_input_is_refused_before_any_device_work(cu):
    rng = np.random.default_rng(1)
    X, off = grouped(rng, [5, 5], 4)
    with pytest.raises(TypeError, match="X must have dtype float32, got float64"):
        cu.fastica(X.astype(np.float64), off, 2, 10, 1e-3, 0)
    with pytest.raises(TypeError, match="C-contiguous"):
        cu.pca(np.asfortranarray(X), off, 2)
    with pytest.raises(TypeError, match="numpy.ndarray or a DLPack tensor"):
        cu.pca(X.tolist(), off, 2)
    with pytest.raises(ValueError, match="must be 2-D"):
        cu.pca(X.reshape(10, 2, 2), off, 2)
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal the number of rows of X \(10\), got 9"):
        cu.pca(X, np.array([0, 5, 9]), 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        cu.spectral_scores(X, np.array([0, 6, 4, 10]), True)
    with pytest.raises(ValueError, match="n_components=5 exceeds the number of features d=4"):
        cu.fastica(X, off, 5, 10, 1e-3, 0)
    with pytest.raises(ValueError, match="class 1 has 1 rows, fewer than k=2"):
        cu.kmeans(X, np.array([0, 9, 10]), 2, 1, 10, 1e-4, 0)
    with pytest.raises(ValueError, match="tol must be finite and >= 0"):
        cu.kmeans(X, off, 2, 1, 10, -1.0, 0)
    with pytest.raises(ValueError, match="labels must be >= 0, got -1 at row 3"):
        lab = np.zeros(10, np.int32)
        lab[3] = -1
        cu.silhouette_samples(X, off, lab)
    with pytest.raises(ValueError, match="label 7 at row 2 is outside"):
        grp = np.zeros(10, np.int64)
        grp[2] = 7
        cu.stats_update(X.reshape(10, 4, 1), grp, *_stats_state(2, 4))
    with pytest.raises(ValueError, match="mean_activation contains NaN or Inf"):
        cu.pruning_order(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="order must be a permutation"):
        cu.pruning_mask(np.array([0, 0, 1], dtype=np.int64), 1)
    with pytest.raises(TypeError):  # noconvert, as _core: int32 offsets are refused
        cu.pca(X, off.astype(np.int32), 2)


def test_dlpack_tensors_are_checked_like_arrays(cu):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    X, off = grouped(rng, [5, 5], 4)
    with pytest.raises(TypeError, match="float32"):
        cu.pca(torch.from_numpy(X.astype(np.float64)), off, 2)
    with pytest.raises(TypeError, match="C-contiguous"):
        cu.pca(torch.from_numpy(X).t(), off, 2)
    # a bare capsule is consumed once; a second use is refused, not a crash
    capsule = torch.from_numpy(X).__dlpack__()
    with pytest.raises((ValueError, RuntimeError)):
        cu.pca(capsule, np.array([0, 5, 9]), 2)
    with pytest.raises(ValueError, match="already consumed"):
        cu.pca(capsule, off, 2)


def test_stats_update_takes_the_cpu_core_shapes(cu):
    """Regression: the CUDA stats_update took (N, C) and (N, C, H, W) where the CPU core takes
    (N, C, S) only; backdoorlab.native folds every layout into (N, C, S) for both."""
    core = pytest.importorskip("backdoorlab._core")
    for shape in [(6, 3), (6, 3, 2, 2)]:
        for mod in (core, cu):
            with pytest.raises(ValueError, match=f"acts must be 3-D, got {len(shape)}-D"):
                mod.stats_update(np.ones(shape, np.float32), np.zeros(6, np.int64), *_stats_state(1, 3))


# ---- GPU: every kernel against its reference ----------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(40, 6), (40, 3, 4, 5)])
def test_stats_update_matches_numpy_streamed_in_batches(gpu, shape):
    rng = np.random.default_rng(3)
    acts = (rng.standard_normal(shape) * 3 + 100).astype(np.float32)  # far from 0: tests the 2-pass
    labels = rng.integers(0, 3, shape[0])
    labels[:3] = [0, 1, 2]
    C = shape[1]
    state = _stats_state(3, C)
    a3 = acts.reshape(shape[0], C, -1)
    for lo, hi in [(0, 17), (17, 40)]:
        gpu.stats_update(np.ascontiguousarray(a3[lo:hi]), labels[lo:hi].astype(np.int64), *state)
    count, values, mean, m2, maxv, npos = state
    S = a3.shape[2]
    for g in range(3):
        vals = a3[labels == g].transpose(1, 0, 2).reshape(C, -1).astype(np.float64)
        assert count[g] == (labels == g).sum() and values[g] == count[g] * S
        np.testing.assert_allclose(mean[g], vals.mean(1), rtol=1e-12)
        np.testing.assert_allclose(np.sqrt(m2[g] / values[g]), vals.std(1), rtol=1e-9)
        np.testing.assert_array_equal(maxv[g], vals.max(1))
        np.testing.assert_array_equal(npos[g], (vals > 0).sum(1))


@pytest.mark.cuda
def test_stats_update_agrees_with_the_cpu_core_and_rejects_nan(gpu):
    core = pytest.importorskip("backdoorlab._core")
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((64, 5, 9)).astype(np.float32)
    groups = rng.integers(0, 2, 64).astype(np.int64)
    s_gpu, s_cpu = _stats_state(2, 5), _stats_state(2, 5)
    gpu.stats_update(acts, groups, *s_gpu)
    core.stats_update(acts, groups, *s_cpu)
    for a, b in zip(s_gpu, s_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    acts[10, 2, 3] = np.nan
    before = [x.copy() for x in s_gpu]
    with pytest.raises(ValueError, match=r"activations contain NaN or Inf \(row 10\)"):
        gpu.stats_update(acts, groups, *s_gpu)
    for a, b in zip(s_gpu, before):  # state untouched on error
        np.testing.assert_array_equal(a, b)


def _pca_reference(X, off, k):
    from sklearn.decomposition import PCA

    out = np.zeros((X.shape[0], k))
    for c in range(off.size - 1):
        lo, hi = off[c], off[c + 1]
        if hi > lo:
            out[lo:hi] = PCA(n_components=k, svd_solver="full").fit_transform(X[lo:hi].astype(np.float64))
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("d,k", [(8, 3), (60, 5)])  # dense Jacobi (d <= 48) and subspace iteration
def test_pca_matches_sklearn_including_signs(gpu, d, k):
    rng = np.random.default_rng(5)
    # decaying spectrum so the components are well defined
    X, off = grouped(rng, [50, 0, 70, 40], d)
    X = np.ascontiguousarray(X * np.linspace(3.0, 0.2, d, dtype=np.float32))
    got = gpu.pca(X, off, k)
    assert got.dtype == np.float32 and got.shape == (X.shape[0], k)
    np.testing.assert_allclose(got, _pca_reference(X, off, k), atol=2e-4, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("d", [10, 70])
def test_spectral_scores_match_the_svd(gpu, center, d):
    rng = np.random.default_rng(6)
    X, off = grouped(rng, [30, 45], d)
    X[5] += 8.0  # one outlier per class
    X[40] -= 8.0
    got = gpu.spectral_scores(X, off, center)
    for c in range(2):
        M = X[off[c]:off[c + 1]].astype(np.float64)
        R = M - M.mean(0) if center else M
        v = np.linalg.svd(R, full_matrices=False)[2][0]
        np.testing.assert_allclose(got[off[c]:off[c + 1]], np.abs(R @ v), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [6, 64])
def test_fastica_recovers_independent_sources(gpu, d):
    rng = np.random.default_rng(7)
    n, k = 2000, 3
    sizes = [n, n]
    X = np.empty((2 * n, d), np.float32)
    sources = []
    for c in range(2):
        S = np.column_stack([rng.laplace(size=n), rng.uniform(-1.7, 1.7, n), np.sign(rng.standard_normal(n))])
        A = rng.standard_normal((k, d))
        X[c * n:(c + 1) * n] = S @ A + 0.01 * rng.standard_normal((n, d))
        sources.append(S)
    off = np.array([0, n, 2 * n])
    got, n_iter = gpu.fastica(X, off, k, 400, 1e-5, 0)
    assert got.shape == (2 * n, k) and n_iter.shape == (2,) and (n_iter >= 1).all() and (n_iter < 400).all()
    for c in range(2):
        Y = got[c * n:(c + 1) * n].astype(np.float64)
        np.testing.assert_allclose(Y.std(0), 1.0, atol=1e-3)
        corr = np.abs(np.corrcoef(Y.T, sources[c].T)[:k, k:])
        assert (corr.max(axis=1) > 0.98).all(), corr
        assert sorted(corr.argmax(axis=1)) == list(range(k))  # a permutation
    again, _ = gpu.fastica(X, off, k, 400, 1e-5, 0)
    np.testing.assert_array_equal(got, again)  # deterministic


@pytest.mark.cuda
def test_fastica_skips_empty_classes(gpu):
    rng = np.random.default_rng(8)
    X, off = grouped(rng, [0, 40, 0, 30], 5)
    got, n_iter = gpu.fastica(X, off, 2, 200, 1e-4, 3)
    assert n_iter[0] == 0 and n_iter[2] == 0 and n_iter[1] > 0 and n_iter[3] > 0
    assert np.isfinite(got).all()


def _blobs(rng, sizes, d, sep=12.0):
    from sklearn.datasets import make_blobs

    parts, truth = [], []
    for c, n in enumerate(sizes):
        Xc, yc = make_blobs(n_samples=n, n_features=d, centers=2, cluster_std=0.5, center_box=(-sep, sep),
                            random_state=int(rng.integers(1 << 30)))
        parts.append(Xc)
        truth.append(yc)
    off = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    return np.concatenate(parts).astype(np.float32), off, np.concatenate(truth)


@pytest.mark.cuda
def test_kmeans_matches_sklearn_on_blobs(gpu):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(9)
    X, off, truth = _blobs(rng, [80, 120, 60], 5)
    labels, centers, inertia, n_iter = gpu.kmeans(X, off, 2, 10, 300, 1e-4, 0)
    assert labels.dtype == np.int32 and centers.shape == (3, 2, 5) and inertia.shape == (3,)
    for c in range(3):
        lo, hi = off[c], off[c + 1]
        lab = labels[lo:hi]
        assert set(np.unique(lab)) <= {0, 1}
        assert adjusted_rand_score(truth[lo:hi], lab) == 1.0
        Xc = X[lo:hi].astype(np.float64)
        recomputed = ((Xc - centers[c][lab].astype(np.float64)) ** 2).sum()
        np.testing.assert_allclose(inertia[c], recomputed, rtol=1e-5)
        ref = KMeans(n_clusters=2, n_init=10, random_state=0).fit(Xc)
        np.testing.assert_allclose(inertia[c], ref.inertia_, rtol=1e-4)
        assert 1 <= n_iter[c] <= 300
    again = gpu.kmeans(X, off, 2, 10, 300, 1e-4, 0)
    for a, b in zip((labels, centers, inertia, n_iter), again):
        np.testing.assert_array_equal(a, b)  # same seed, same result


@pytest.mark.cuda
def test_kmeans_objective_never_worse_with_more_inits_and_empty_classes_are_nan(gpu):
    rng = np.random.default_rng(10)
    X, off = grouped(rng, [0, 90, 70], 4, spread=2.0)
    one = gpu.kmeans(X, off, 4, 1, 300, 1e-4, 5)
    many = gpu.kmeans(X, off, 4, 8, 300, 1e-4, 5)
    assert np.isnan(one[2][0]) and np.isnan(many[1][0]).all() and many[3][0] == 0
    # run 0 of the 8 is the single run (same stream), so the best of 8 is never worse
    assert (many[2][1:] <= one[2][1:] * (1 + 1e-12)).all()


@pytest.mark.cuda
def test_silhouette_matches_sklearn(gpu):
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(11)
    X, off, truth = _blobs(rng, [40, 55], 3, sep=3.0)
    labels = truth.astype(np.int32)
    labels[off[1]:off[1] + 5] = 2  # a third cluster in class 1
    got = gpu.silhouette_samples(X, off, labels)
    for c in range(2):
        lo, hi = off[c], off[c + 1]
        ref = silhouette_samples(X[lo:hi].astype(np.float64), labels[lo:hi])
        np.testing.assert_allclose(got[lo:hi], ref, atol=1e-5)
    one_label = np.zeros_like(labels)
    np.testing.assert_array_equal(gpu.silhouette_samples(X, off, one_label), 0.0)


@pytest.mark.cuda
def test_pruning_order_and_mask_match_numpy(gpu):
    rng = np.random.default_rng(12)
    mean = np.round(rng.standard_normal(300), 1)  # many ties
    order = gpu.pruning_order(mean)
    np.testing.assert_array_equal(order, np.argsort(mean, kind="stable"))
    mask = gpu.pruning_mask(order, 37)
    expected = np.ones(300, np.float32)
    expected[order[:37]] = 0.0
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.cuda
def test_nan_in_x_is_a_value_error_naming_the_row(gpu):
    rng = np.random.default_rng(13)
    X, off = grouped(rng, [10, 10], 3)
    X[13, 1] = np.inf
    for call in (lambda: gpu.pca(X, off, 2), lambda: gpu.kmeans(X, off, 2, 1, 10, 1e-4, 0),
                 lambda: gpu.fastica(X, off, 2, 10, 1e-3, 0), lambda: gpu.spectral_scores(X, off, True),
                 lambda: gpu.silhouette_samples(X, off, np.zeros(20, np.int32))):
        with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 13\)"):
            call()


@pytest.mark.cuda
def test_out_of_memory_names_the_size_and_leaves_the_device_usable(gpu):
    X = np.zeros((1_000_000, 1), np.float32)
    X[::2] = 1.0
    off = np.array([0, X.shape[0]])
    # 65535 runs x 1e6 rows of int32 labels: ~262 GB of workspace, more than any GPU holds
    with pytest.raises(MemoryError, match=r"cudaMalloc of [0-9.]+ GiB \([0-9]+ bytes\)"):
        gpu.kmeans(X, off, 2, 65535, 10, 1e-4, 0)
    labels, _, inertia, _ = gpu.kmeans(X[:1000], np.array([0, 1000]), 2, 2, 10, 1e-4, 0)
    assert inertia[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.cuda
def test_torch_cuda_tensor_goes_in_without_a_copy(gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    rng = np.random.default_rng(14)
    X, off = grouped(rng, [30, 40], 12)
    t = torch.from_numpy(X).cuda()
    np.testing.assert_array_equal(gpu.pca(t, off, 3), gpu.pca(X, off, 3))
    np.testing.assert_array_equal(gpu.spectral_scores(t, off, True), gpu.spectral_scores(X, off, True))
    a, b = gpu.kmeans(t, off, 2, 3, 50, 1e-4, 1), gpu.kmeans(X, off, 2, 3, 50, 1e-4, 1)
    np.testing.assert_array_equal(a[0], b[0])
    st_t, st_n = _stats_state(1, 12), _stats_state(1, 12)
    gpu.stats_update(t.reshape(70, 12, 1), np.zeros(70, np.int64), *st_t)
    gpu.stats_update(X.reshape(70, 12, 1), np.zeros(70, np.int64), *st_n)
    for a_, b_ in zip(st_t, st_n):
        np.testing.assert_array_equal(a_, b_)


def test_module_loader_reports_why_when_missing(monkeypatch):
    monkeypatch.setenv("BACKDOORLAB_CUDA_MODULE", "/nonexistent/_core_cuda.so")
    module, why = load_cuda_module()
    assert module is None and "is not a file" in why


# ---- GPU vs the CPU core: the same seeded draws, so the same answers -------------------------------


def _cpu_core_with(kernel: str):
    core = pytest.importorskip("backdoorlab._core")
    if not hasattr(core, kernel):
        pytest.skip(f"backdoorlab._core has no {kernel} yet")
    return core


@pytest.mark.cuda
def test_kmeans_agrees_with_the_cpu_core(gpu):
    core = _cpu_core_with("kmeans")
    rng = np.random.default_rng(15)
    X, off = grouped(rng, [70, 0, 90, 55], 6, spread=1.5)
    g = gpu.kmeans(X, off, 3, 4, 100, 1e-4, 21)
    c = core.kmeans(X, off, 3, 4, 100, 1e-4, 21)
    np.testing.assert_array_equal(g[0], c[0])  # labels
    np.testing.assert_allclose(g[1], c[1], rtol=1e-6, atol=1e-6)  # centers (NaN for the empty class)
    np.testing.assert_allclose(g[2], c[2], rtol=1e-9)  # inertia
    np.testing.assert_array_equal(g[3], c[3])  # iterations


@pytest.mark.cuda
def test_fastica_agrees_with_the_cpu_core(gpu):
    core = _cpu_core_with("fastica")
    rng = np.random.default_rng(16)
    n, d, k = 600, 12, 4
    S = np.column_stack([rng.laplace(size=n), rng.uniform(-1, 1, n), rng.exponential(size=n), rng.standard_t(5, n)])
    X = np.ascontiguousarray(S @ rng.standard_normal((k, d)) + 0.05 * rng.standard_normal((n, d)), dtype=np.float32)
    off = np.array([0, 250, 600])
    g, g_it = gpu.fastica(X, off, k, 500, 1e-6, 3)
    c, c_it = core.fastica(X, off, k, 500, 1e-6, 3)
    # Same start matrix and fixed point, but the order and signs of the sources also depend on
    # the signs of the whitening eigenvectors, which each eigensolver picks its own way (the CUDA
    # core makes the largest loading positive); and the CPU's float32 tanh and Newton polar
    # decorrelation round differently. So: the same sources up to order and sign, closely.
    for lo, hi in [(0, 250), (250, 600)]:
        corr = np.abs(g[lo:hi].T.astype(np.float64) @ c[lo:hi].astype(np.float64)) / (hi - lo)
        assert (corr.max(axis=1) > 0.999).all(), corr
        assert sorted(corr.argmax(axis=1)) == list(range(k)), corr


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["pca", "spectral_scores", "silhouette_samples"])
def test_deterministic_kernels_agree_with_the_cpu_core(gpu, kernel):
    core = _cpu_core_with(kernel)
    rng = np.random.default_rng(17)
    X, off = grouped(rng, [40, 0, 65], 20)
    X *= np.linspace(2.0, 0.5, 20, dtype=np.float32)
    if kernel == "pca":
        args = (X, off, 4)
    elif kernel == "spectral_scores":
        args = (X, off, True)
    else:
        args = (X, off, (rng.integers(0, 3, X.shape[0])).astype(np.int32))
    np.testing.assert_allclose(getattr(gpu, kernel)(*args), getattr(core, kernel)(*args), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_48_components_take_the_opt_in_shared_memory_path(gpu):
    """k = 48: the FastICA block needs > 48 KiB of shared memory (cudaFuncSetAttribute) and PCA's
    subspace iteration runs with no oversampling (p = k = 48)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(18)
    n, d, k = 120, 56, 48
    X = np.ascontiguousarray((rng.laplace(size=(n, d)) @ rng.standard_normal((d, d))) * np.geomspace(4, 0.5, d),
                             dtype=np.float32)
    off = np.array([0, n])
    src, n_iter = gpu.fastica(X, off, k, 5, 1e-4, 0)
    assert src.shape == (n, k) and np.isfinite(src).all() and 1 <= n_iter[0] <= 5
    np.testing.assert_allclose(src.std(axis=0), 1.0, atol=1e-4)
    ref = PCA(k, svd_solver="full").fit_transform(X.astype(np.float64))
    np.testing.assert_allclose(gpu.pca(X, off, k), ref, atol=1e-3 * np.abs(ref).max())
    with pytest.raises(ValueError, match="n_components <= 48"):
        gpu.pca(X, off, 49)
