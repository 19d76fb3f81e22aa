"""Bad input to the native core gives a TypeError/ValueError naming the problem, never a crash.

Also pins the documented conversions: non-contiguous float32 input is copied (same result as
the contiguous array); other dtypes are refused; the compiled module itself refuses wrong dtypes
and strides (py::arg().noconvert()) instead of converting behind the caller's back.
"""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab import native, reference

from _native_helpers import relu_classes

OFF = np.array([0, 20, 40], dtype=np.int64)


@pytest.fixture
def X(rng):
    return rng.standard_normal((40, 6)).astype(np.float32)


# every batched kernel, called on (X, offsets)
BATCHED = {
    "fastica": lambda X, off, **kw: native.fastica(X, off, 3, max_iter=20, **kw),
    "pca": lambda X, off, **kw: native.pca(X, off, 3, **kw),
    "whiten": lambda X, off, **kw: native.whiten(X, off, 3, **kw),
    "kmeans": lambda X, off, **kw: native.kmeans(X, off, 2, n_init=2, **kw),
    "silhouette": lambda X, off, **kw: native.silhouette_samples(X, off, np.zeros(np.shape(X)[0] if np.ndim(X) else 0, np.int32), **kw),
    "spectral": lambda X, off, **kw: native.spectral_scores(X, off, **kw),
}


@pytest.mark.parametrize("kernel", sorted(BATCHED))
def test_wrong_dtype_is_a_type_error(X, kernel):
    for bad in (X.astype(np.float64), X.astype(np.int32)):
        with pytest.raises(TypeError, match="float32"):
            BATCHED[kernel](bad, OFF)
    with pytest.raises(TypeError, match="ndarray"):
        BATCHED[kernel](X.tolist(), OFF)


@pytest.mark.parametrize("kernel", sorted(BATCHED))
def test_wrong_ndim_and_empty_input(X, kernel):
    with pytest.raises(ValueError, match="2-D"):
        BATCHED[kernel](X.reshape(40, 2, 3), OFF)
    with pytest.raises(ValueError, match="2-D"):
        BATCHED[kernel](X[:, 0].copy(), OFF)
    with pytest.raises(ValueError, match="empty"):
        BATCHED[kernel](np.zeros((0, 6), np.float32), np.array([0, 0]))


@pytest.mark.parametrize("kernel", sorted(BATCHED))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_rejected_with_row_and_class(X, kernel, value):
    X[27, 4] = value
    with pytest.raises(ValueError, match=r"NaN or Inf at row 27 \(class 1\)"):
        BATCHED[kernel](X, OFF)


@pytest.mark.parametrize("kernel", sorted(BATCHED))
@pytest.mark.parametrize("offsets, message", [
    (np.array([0, 20, 39]), r"offsets\[-1\] must equal"),
    (np.array([1, 20, 40]), r"offsets\[0\] must be 0"),
    (np.array([0, 30, 20, 40]), "non-decreasing"),
    (np.array([40]), "n_classes \\+ 1 >= 2"),
    (np.array([[0, 40]]), "1-D"),
])
def test_bad_offsets(X, kernel, offsets, message):
    with pytest.raises(ValueError, match=message):
        BATCHED[kernel](X, offsets)
    with pytest.raises(TypeError, match="integers"):
        BATCHED[kernel](X, offsets.astype(np.float64))


def test_class_smaller_than_k_or_n_components(X):
    off = np.array([0, 2, 40])
    with pytest.raises(ValueError, match="class 0 has 2 rows, fewer than n_components"):
        native.fastica(X, off, 3)
    with pytest.raises(ValueError, match="class 0 has 2 rows, fewer than n_components"):
        native.pca(X, off, 3)
    with pytest.raises(ValueError, match="class 0 has 2 rows, fewer than k=3"):
        native.kmeans(X, off, k=3)


def test_n_components_larger_than_d(X):
    with pytest.raises(ValueError, match="n_components=7 exceeds the number of features d=6"):
        native.fastica(X, OFF, 7)
    with pytest.raises(ValueError, match="n_components=7 exceeds"):
        native.pca(X, OFF, 7)
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        native.pca(X, OFF, 0)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
    ({"tol": -1.0}, ValueError, "tol must be finite"),
    ({"tol": float("nan")}, ValueError, "tol must be finite"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 2**64}, ValueError, "seed must be <= "),
    ({"max_iter": 2**40}, ValueError, "max_iter must be <= 2147483647"),
    ({"n_components": 2.5}, TypeError, "n_components must be an int"),
    ({"device": "tpu"}, ValueError, "device must be"),
])
def test_bad_parameters(X, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        native.fastica(X, OFF, **{"n_components": 3, **kwargs})


def test_kmeans_bad_parameters(X):
    with pytest.raises(ValueError, match="n_init must be >= 1"):
        native.kmeans(X, OFF, n_init=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        native.kmeans(X, OFF, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        native.kmeans(X, OFF, k=True)


def test_silhouette_bad_labels(X):
    with pytest.raises(ValueError, match=r"labels must have shape \(40,\)"):
        native.silhouette_samples(X, OFF, np.zeros(39, np.int32))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        native.silhouette_samples(X, OFF, -np.ones(40, np.int32))
    with pytest.raises(TypeError, match="labels must hold integers"):
        native.silhouette_samples(X, OFF, np.zeros(40))


def test_cuda_without_build_raises_runtime_error(X):
    if native.build_info()["cuda"]:
        pytest.skip("a CUDA build with a visible GPU is present")
    with pytest.raises(RuntimeError, match="device='cuda' is not available"):
        native.spectral_scores(X, OFF, device="cuda")
    # auto: the CPU answers, and says so in build_info
    np.testing.assert_array_equal(native.spectral_scores(X, OFF, device="auto"), native.spectral_scores(X, OFF))


def test_pruning_kernels_dispatch_on_device_like_the_others():
    """Regression: pruning_order/pruning_mask always ran on the CPU, so their CUDA twins could not
    be reached and device='cuda' without a GPU went unnoticed."""
    if native.build_info()["cuda"]:
        pytest.skip("a CUDA build with a visible GPU is present")
    mean = np.array([0.3, 0.1, 0.2])
    with pytest.raises(RuntimeError, match="device='cuda' is not available"):
        native.pruning_order(mean, device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda' is not available"):
        native.pruning_mask(np.array([1, 2, 0]), 1, device="cuda")
    np.testing.assert_array_equal(native.pruning_order(mean, device="auto"), [1, 2, 0])
    np.testing.assert_array_equal(native.pruning_mask(np.array([1, 2, 0]), 1, device="auto"), [1, 0, 1])


def test_non_contiguous_input_is_copied_not_rejected(rng):
    X, off = relu_classes(rng, [60, 80], 10)
    wide = np.zeros((X.shape[0], 20), np.float32)
    wide[:, ::2] = X
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(native.spectral_scores(view, off), native.spectral_scores(X, off))
    np.testing.assert_array_equal(native.kmeans(view, off, 2, seed=1).labels, native.kmeans(X, off, 2, seed=1).labels)
    fortran = np.asfortranarray(X)
    np.testing.assert_array_equal(native.pca(fortran, off, 3), native.pca(X, off, 3))


def test_compiled_module_refuses_conversions():
    """The last line of defence: _core itself never converts dtype or layout silently."""
    from backdoorlab import _core

    X = np.ones((10, 4), np.float32)
    off = np.array([0, 10], np.int64)
    with pytest.raises(TypeError):
        _core.spectral_scores(X.astype(np.float64), off, True)
    with pytest.raises(TypeError):
        _core.spectral_scores(np.ones((10, 8), np.float32)[:, ::2], off, True)
    with pytest.raises(TypeError):
        _core.spectral_scores(X, off.astype(np.int32), True)
    with pytest.raises(ValueError, match="offsets\\[-1\\]"):
        _core.spectral_scores(X, np.array([0, 9], np.int64), True)
    with pytest.raises(ValueError, match="n_components"):
        _core.fastica(X, off, 5, 10, 1e-3, 0)
    with pytest.raises(ValueError, match="class 0 has 10 rows, fewer than k=11"):
        _core.kmeans(X, off, 11, 1, 10, 1e-4, 0)
    with pytest.raises(ValueError, match="permutation"):
        _core.pruning_mask(np.array([0, 0, 1], np.int64), 1)


def test_activation_stats_validation(rng):
    acts = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="float32"):
        native.activation_stats(acts.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\)"):
        native.activation_stats(acts[None])
    with pytest.raises(ValueError, match="empty"):
        native.activation_stats(acts[:0])
    with pytest.raises(ValueError, match="labels hold class 3, but n_classes=2"):
        native.activation_stats(acts, np.array([0, 1, 3] + [0] * 7), 2)
    acc = native.ActivationStats(4, n_classes=2)
    with pytest.raises(ValueError, match="labels are required"):
        acc.update(acts)
    with pytest.raises(ValueError, match="batch has 3 channels"):
        acc.update(acts[:, :3], np.zeros(10, int))
    with pytest.raises(ValueError, match="n_channels must be >= 1"):
        native.ActivationStats(0)


def test_pruning_validation():
    with pytest.raises(ValueError, match="NaN or Inf.*channel 1"):
        native.pruning_order(np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="floating point"):
        native.pruning_order(np.array([1, 2]))
    with pytest.raises(ValueError, match="permutation"):
        native.pruning_mask(np.array([0, 2]), 1)
    with pytest.raises(ValueError, match="n_pruned=3 exceeds"):
        native.pruning_mask(np.array([1, 0]), 3)


def test_reference_rejects_the_same_inputs(X):
    """The twins share the checks, so tests and benchmarks see the same rules."""
    with pytest.raises(TypeError, match="float32"):
        reference.spectral_scores(X.astype(np.float64), OFF)
    X[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference.kmeans(X, OFF)
