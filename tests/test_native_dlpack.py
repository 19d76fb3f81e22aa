"""DLPack inputs of ``backdoorlab.native``: torch tensors in, NumPy results out.

A CPU tensor (any non-CUDA DLPack producer) is read with ``np.from_dlpack`` (zero-copy) and must
give exactly what the same NumPy array gives. A CUDA tensor is checked from its metadata only
(dtype, rank, shape, contiguity; offsets on the host) and handed to ``_core_cuda`` untouched; a
stand-in object exposing only ``__cuda_array_interface__`` and ``__dlpack_device__`` exercises
those host-side checks here without a GPU (its ``__dlpack__`` records being called, so a test
also proves nothing reached the core). The real CUDA round trip is the ``cuda``-marked test.
"""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab import native

torch = pytest.importorskip("torch")

_INFO = native.build_info()
_NO_GPU_REASON = f"no usable CUDA device: {_INFO['cuda_error']}"


def _grouped(seed: int = 3, sizes: tuple[int, ...] = (12, 9, 15), d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 1.0, size=(m, d)) for c, m in enumerate(sizes)]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return X, offsets


class FakeCudaTensor:
    """Metadata of a CUDA tensor with no data behind it: only host-side checks may touch it."""

    def __init__(self, shape, typestr: str = "<f4", strides=None, device_type: int = 2) -> None:
        self.shape_ = tuple(shape)
        self.typestr = typestr
        self.strides = strides
        self.device_type = device_type
        self.dlpack_calls = 0

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape_, "typestr": self.typestr, "strides": self.strides,
                "data": (0, True), "version": 3}

    def __dlpack_device__(self) -> tuple[int, int]:
        return (self.device_type, 0)

    def __dlpack__(self, **kwargs):
        self.dlpack_calls += 1
        raise BufferError("FakeCudaTensor has no data")


# ---- CPU tensors through device="cpu" ---------------------------------------------------------


def test_cpu_tensor_is_a_zero_copy_view():
    X, _ = _grouped()
    t = torch.from_numpy(X.copy())
    taken = native._matrix(t, "cpu")
    assert isinstance(taken, np.ndarray)
    assert np.shares_memory(taken, t.numpy())


def test_cpu_tensor_kernels_equal_numpy():
    X, offsets = _grouped()
    t = torch.from_numpy(X.copy())
    np.testing.assert_array_equal(native.pca(t, offsets, 3), native.pca(X, offsets, 3))
    np.testing.assert_array_equal(native.spectral_scores(t, offsets), native.spectral_scores(X, offsets))
    np.testing.assert_array_equal(native.fastica(t, offsets, 2, seed=1), native.fastica(X, offsets, 2, seed=1))
    km_t, km_x = native.kmeans(t, offsets, 2, n_init=2, seed=4), native.kmeans(X, offsets, 2, n_init=2, seed=4)
    np.testing.assert_array_equal(km_t.labels, km_x.labels)
    np.testing.assert_array_equal(km_t.centers, km_x.centers)
    np.testing.assert_array_equal(native.silhouette_samples(t, offsets, km_x.labels),
                                  native.silhouette_samples(X, offsets, km_x.labels))
    # A strided tensor (a transposed view) is copied to C order, as a strided NumPy view is.
    XT = np.ascontiguousarray(X.T)
    tT = torch.from_numpy(XT.copy()).T
    assert not tT.is_contiguous()
    np.testing.assert_array_equal(native.spectral_scores(tT, offsets), native.spectral_scores(X, offsets))


def test_cpu_tensor_activation_stats_equal_numpy():
    rng = np.random.default_rng(7)
    acts = rng.normal(size=(10, 4, 3, 2)).astype(np.float32)
    labels = np.array([0, 1, 2] * 3 + [1])
    ref = native.activation_stats(acts, labels, n_classes=3)
    got = native.activation_stats(torch.from_numpy(acts.copy()), labels, n_classes=3)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])
    acc = native.ActivationStats(4)
    acc.update(torch.from_numpy(acts[:4, :, 0, 0].copy()))
    acc.update(acts[4:, :, 0, 0])
    whole = native.activation_stats(acts[:, :, 0, 0])
    for key in whole:
        np.testing.assert_allclose(acc.result()[key], whole[key], rtol=1e-12)


def test_cpu_tensor_bad_input_keeps_numpy_messages():
    X, offsets = _grouped()
    with pytest.raises(TypeError, match="X must have dtype float32, got float64"):
        native.pca(torch.from_numpy(X.astype(np.float64)), offsets, 2)
    with pytest.raises(ValueError, match="X must be 2-D"):
        native.pca(torch.zeros(4, 3, 2), offsets, 2)
    with pytest.raises(ValueError, match="acts must be"):
        native.activation_stats(torch.zeros(4, 3, 2))
    with pytest.raises(TypeError, match="X .*through DLPack"):  # torch refuses to export it
        native.pca(torch.from_numpy(X).requires_grad_(True), offsets, 2)
    nan = X.copy()
    nan[13, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        native.spectral_scores(torch.from_numpy(nan), offsets)


# ---- CUDA tensors: host-side checks, device="cpu", and the reason without a GPU ---------------


def test_cuda_tensor_with_device_cpu_is_refused():
    fake = FakeCudaTensor((36, 6))
    _, offsets = _grouped()
    with pytest.raises(TypeError, match=r"X is a CUDA tensor .*kDLCUDA device 0.* device='cpu'.*X\.cpu\(\)"):
        native.pca(fake, offsets, 2, device="cpu")
    with pytest.raises(TypeError, match="acts is a CUDA tensor"):
        native.activation_stats(FakeCudaTensor((5, 4)), device="cpu")
    assert fake.dlpack_calls == 0


@pytest.mark.parametrize("device", ["cuda", "auto"])
@pytest.mark.parametrize(("fake", "err", "match"), [
    (FakeCudaTensor((36, 6), "<f8"), TypeError, "X must have dtype float32, got float64"),
    (FakeCudaTensor((36, 6, 1)), ValueError, r"X must be 2-D \(n_samples, n_features\), got 3-D with shape \(36, 6, 1\)"),
    (FakeCudaTensor((0, 6)), ValueError, r"X is empty: shape \(0, 6\)"),
    (FakeCudaTensor((36, 6), strides=(4, 144)), TypeError, "X must be C-contiguous"),
    (FakeCudaTensor((35, 6)), ValueError, "offsets"),  # offsets end at 36, X has 35 rows
])
def test_cuda_tensor_metadata_checked_before_the_core(device, fake, err, match):
    _, offsets = _grouped()
    with pytest.raises(err, match=match):
        native.spectral_scores(fake, offsets, device=device)
    assert fake.dlpack_calls == 0


def test_cuda_tensor_acts_metadata_checked():
    with pytest.raises(ValueError, match=r"has no channels or an empty spatial map: shape \(5, 4, 0, 2\)"):
        native.activation_stats(FakeCudaTensor((5, 4, 0, 2)), device="cuda")
    with pytest.raises(TypeError, match="acts must have dtype float32, got float16"):
        native.activation_stats(FakeCudaTensor((5, 4), "<f2"), device="cuda")


@pytest.mark.skipif(not _INFO["cuda_built"],
                    reason=f"backdoorlab._core_cuda is not built: {_INFO['cuda_error']}")
@pytest.mark.skipif(_INFO["cuda"], reason="a GPU is visible: device='cuda' works here")
def test_device_cuda_without_gpu_names_core_cuda_reason():
    reason = native._cuda.build_info()["cuda_error"]
    assert reason, "_core_cuda reports 0 devices, so it must say why"
    assert _INFO["cuda_error"] == reason
    X, offsets = _grouped()
    for x in (X, torch.from_numpy(X), FakeCudaTensor(X.shape)):
        with pytest.raises(RuntimeError, match="device='cuda' is not available") as exc:
            native.spectral_scores(x, offsets, device="cuda")
        assert reason in str(exc.value)
    with pytest.raises(RuntimeError, match="device='cuda' is not available") as exc:
        native.ActivationStats(4, device="cuda")
    assert reason in str(exc.value)
    # "auto" with a CUDA tensor cannot fall back to the CPU core: it says why.
    fake = FakeCudaTensor(X.shape)
    with pytest.raises(RuntimeError, match="resolved to the CPU core") as exc:
        native.spectral_scores(fake, offsets, device="auto")
    assert reason in str(exc.value) and fake.dlpack_calls == 0


# ---- the real thing -----------------------------------------------------------------------------


class _RecordingTensor:
    """Forwards the DLPack / CUDA-array-interface protocols of a tensor and records the calls, so
    the test sees the tensor itself reach _core_cuda (no .cpu(), no .numpy() exists here)."""

    def __init__(self, tensor) -> None:
        self.tensor = tensor
        self.dlpack_kwargs: list[dict] = []

    @property
    def __cuda_array_interface__(self) -> dict:
        return self.tensor.__cuda_array_interface__

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        self.dlpack_kwargs.append(kwargs)
        return self.tensor.__dlpack__(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=f"PyTorch {torch.__version__} has no CUDA device")
@pytest.mark.skipif(not _INFO["cuda"], reason=_NO_GPU_REASON)
def test_torch_cuda_tensor_goes_in_place_and_matches_cpu():
    X, offsets = _grouped(sizes=(40, 33, 51), d=8)
    t = torch.from_numpy(X).cuda()
    rec = _RecordingTensor(t)
    got = native.spectral_scores(rec, offsets, device="cuda")
    assert len(rec.dlpack_kwargs) == 1  # consumed once, through DLPack, by _core_cuda
    np.testing.assert_allclose(got, native.spectral_scores(X, offsets, device="cpu"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(native.pca(t, offsets, 3, device="cuda"),
                               native.pca(X, offsets, 3, device="cpu"), rtol=1e-3, atol=1e-4)
    acts = torch.from_numpy(X.reshape(-1, 2, 2, 2).copy()).cuda()
    ref = native.activation_stats(X.reshape(-1, 2, 2, 2))
    dev = native.activation_stats(acts, device="cuda")
    for key in ref:
        np.testing.assert_allclose(dev[key], ref[key], rtol=1e-5, atol=1e-6)
    bad = t.clone()
    bad[45, 3] = float("nan")
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 45\)"):
        native.spectral_scores(bad, offsets, device="cuda")
