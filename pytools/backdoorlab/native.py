"""The native defence core: validated, documented wrappers over the compiled ``_core`` module.

This is the only Python module that touches ``backdoorlab._core`` (CPU, C++17 + OpenMP) and
``backdoorlab._core_cuda`` (optional CUDA twin with the same function names and argument order).
Every function checks its input here — dtype, shape, offsets, parameter ranges — and the C++ core
checks again what only it sees cheaply (NaN/Inf while it reads the rows), so bad input gives a
``TypeError``/``ValueError`` naming the problem, never a crash.

Calling form (docs/contracts.md, section 1): the batched kernels take one float32 C-contiguous
matrix ``X`` of shape (n, d) whose rows are grouped by class, plus int64 ``offsets`` of shape
(n_classes + 1,): class ``c`` is ``X[offsets[c]:offsets[c+1]]``. :func:`group_by_class` builds
both from per-row labels. Conversions: ``X`` must already be float32 (``TypeError`` otherwise —
a silent float64 -> float32 copy would double memory behind the caller's back); a
non-contiguous float32 array is copied to C order; integer ``offsets``/``labels`` of any width
are converted to the width the core takes.

DLPack inputs (``X``, ``acts``, ``batch``): an object with ``__dlpack__``/``__dlpack_device__``
in host memory (a torch CPU tensor) is read with ``np.from_dlpack`` (zero-copy) and then treated
exactly like a NumPy array. A CUDA one (``kDLCUDA``/``kDLCUDAManaged``, e.g. a torch CUDA tensor)
is handed to ``_core_cuda`` as it is, which uses it in place on its device; before that, dtype,
rank, shape and contiguity are checked here from ``__cuda_array_interface__`` (or the tensor's
``dtype``/``shape``/``is_contiguous()``) with the NumPy path's messages, and the offsets on the
host. A strided CUDA tensor is refused (``TypeError``: call ``.contiguous()``) rather than copied
on the device behind the caller's back; NaN/Inf are found by ``_core_cuda``'s device reduction
before any compute kernel (``X contains NaN or Inf (first at row r)``). A CUDA tensor with
``device="cpu"`` is a ``TypeError`` (no hidden device-to-host copy: call ``.cpu()`` yourself),
and with ``device="auto"`` when no usable GPU/kernel is there a ``RuntimeError`` with the reason.

Devices: ``device="cpu"`` uses ``_core``; ``"cuda"`` uses ``_core_cuda`` and raises
``RuntimeError`` with the reason when it is not built, sees no GPU (``_core_cuda``'s own reason,
e.g. ``cudaErrorInsufficientDriver``) or lacks that kernel;
``"auto"`` takes CUDA only when it is built, a GPU is visible and the kernel exists there, else
the CPU. Nothing ever falls back to :mod:`backdoorlab.reference` silently: :func:`build_info`
reports which implementation serves each kernel.

SIMD level: the CPU core's hot loops are compiled for ``sse2`` (any x86-64), ``avx2`` (AVX2 + FMA)
and ``avx512``; the best level this CPU runs is used unless ``BACKDOORLAB_SIMD`` (read once,
when this module is imported) or :func:`set_simd_level` names another. An unknown level, or one
this CPU cannot run, is an error (``ValueError`` at import for the variable): a benchmark or test
must never silently run another level than the one it names. :func:`build_info` reports the
level in use (``simd_selected``).

Threads: the CPU core spreads classes over OpenMP threads (``OMP_NUM_THREADS`` or
:func:`set_num_threads`, at most ``build_info()["thread_ceiling"]``); results do not depend on
the thread count. Long kernels release the GIL, so other Python threads keep running.

Scale: finite float32 input of any magnitude (1e-38 ... 3.4e38) gives a finite result or a
``ValueError`` naming the row whose result does not fit float32 — never NaN: the kernels that
square values divide each class by a power of two first.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from backdoorlab import reference as _ref
from backdoorlab._moments import RunningMoments
from backdoorlab._validate import (
    check_acts,
    check_center,
    check_int,
    check_labels,
    check_matrix,
    check_mean_activation,
    check_offsets,
    fastica_args,
    kmeans_args,
    pca_args,
    pruning_mask_args,
    stats_classes,
    whiten_args,
)
from backdoorlab.errors import DeviceUnavailableError
from backdoorlab.reference import KMeansResult, group_by_class, unit_variance

# The reference's API (every kernel has its twin there), plus what only the compiled core has.
__all__ = [*_ref.__all__, "build_info", "set_num_threads", "get_num_threads",
           "SIMD_ENV", "simd_levels", "set_simd_level"]

#: Kernel names every backend module must expose (same names, same argument order).
KERNELS = ("stats_update", "fastica", "pca", "kmeans", "silhouette_samples", "spectral_scores",
           "pruning_order", "pruning_mask")


def _load(name: str) -> tuple[Any, str | None]:
    """Import ``backdoorlab.<name>``; return (module, None) or (None, why it is unavailable)."""
    try:
        return importlib.import_module(f"backdoorlab.{name}"), None
    except ImportError as exc:  # not built, or built against a missing runtime library
        return None, f"backdoorlab.{name} could not be imported ({exc})"


_core, _core_error = _load("_core")
_cuda, _cuda_error = _load("_core_cuda")


def _cuda_status() -> tuple[int, str | None]:
    """(visible GPUs, why none) as ``_core_cuda`` itself reports them; never raises."""
    if _cuda is None:
        return 0, _cuda_error
    try:
        info = _cuda.build_info()
    except Exception as exc:  # a broken driver must not break the CPU path
        return 0, f"backdoorlab._core_cuda.build_info() failed: {exc}"
    n_dev = int(info.get("cuda_devices", 0))
    if n_dev > 0:
        return n_dev, None
    # _core_cuda names the CUDA runtime's own reason (e.g. cudaErrorInsufficientDriver).
    return 0, str(info.get("cuda_error") or "no CUDA device visible (no reason given by _core_cuda)")


def _cuda_devices() -> int:
    return _cuda_status()[0]


def _backend(device: str, kernel: str):
    """The compiled module that runs ``kernel`` on ``device`` (raises with the reason)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str ('cpu', 'cuda' or 'auto'), got {type(device).__name__}")
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device in ("cuda", "auto"):
        why = None
        if _cuda is None:
            why = _cuda_error
        else:
            n_dev, reason = _cuda_status()
            if n_dev == 0:
                why = f"backdoorlab._core_cuda is built but sees no CUDA device: {reason}"
            elif not hasattr(_cuda, kernel):
                why = f"backdoorlab._core_cuda has no kernel {kernel!r}"
        if why is None:
            return _cuda
        if device == "cuda":
            raise DeviceUnavailableError(f"device='cuda' is not available: {why}")
    if _core is None:
        raise RuntimeError(f"the native CPU core is not available: {_core_error}; "
                           "rebuild with `pip install --no-build-isolation -Cbuild-dir=build -e .`")
    if not hasattr(_core, kernel):
        raise RuntimeError(f"backdoorlab._core has no kernel {kernel!r}: the installed build is older "
                           "than this Python wrapper; rebuild the package")
    return _core


# ---- DLPack intake ----------------------------------------------------------------------------
#
# A CUDA tensor (PyTorch, CuPy, JAX: anything with __dlpack__ and __dlpack_device__) goes to
# _core_cuda as it is, which consumes it through DLPack in place on its device: copying it to
# NumPy here would cost a device->host->device round trip. Everything checkable from metadata
# alone (dtype, rank, shape, contiguity) is checked here first with the NumPy path's messages;
# NaN/Inf are found by _core_cuda's device reduction before any compute kernel, as the CPU core
# finds them while it reads the rows. Any other DLPack object (a CPU tensor) becomes a NumPy
# array with np.from_dlpack (zero-copy) and takes the NumPy path.

#: DLPack device types (DLDeviceType in dlpack.h) that _core_cuda uses in place.
_DLPACK_CUDA_TYPES = {2: "kDLCUDA", 13: "kDLCUDAManaged"}
_DLPACK_HOST_TYPES = {1: "kDLCPU", 3: "kDLCUDAHost"}


class _DeviceTensor:
    """A CUDA-resident DLPack producer whose metadata passed the host-side checks."""

    __slots__ = ("obj", "shape", "where")

    def __init__(self, obj: Any, shape: tuple[int, ...], where: str) -> None:
        self.obj = obj          # handed to _core_cuda untouched (it calls __dlpack__ itself)
        self.shape = shape
        self.where = where      # e.g. "kDLCUDA device 0", for messages


def _is_dlpack(obj: Any) -> bool:
    return (not isinstance(obj, np.ndarray) and hasattr(obj, "__dlpack__")
            and hasattr(obj, "__dlpack_device__"))


def _device_metadata(obj: Any, name: str) -> tuple[Any, tuple[int, ...] | None, bool | None]:
    """(dtype, shape, C-contiguous) of a CUDA tensor without touching its data.

    ``__cuda_array_interface__`` first (PyTorch, CuPy, Numba), then the ``dtype``/``shape``
    attributes with ``is_contiguous()`` (torch) or ``flags.c_contiguous`` (CuPy). Unknown parts are None: _core_cuda checks them
    again from the DLPack tensor itself.
    """
    try:
        cai = getattr(obj, "__cuda_array_interface__", None)
    except Exception as exc:  # torch refuses it for tensors that require grad
        raise TypeError(f"{name} is a CUDA tensor whose metadata cannot be read ({exc})") from exc
    if isinstance(cai, dict) and "shape" in cai and "typestr" in cai:
        shape = tuple(int(v) for v in cai["shape"])
        try:
            dtype: Any = np.dtype(cai["typestr"])
        except (TypeError, ValueError):
            dtype = cai["typestr"]
        strides = cai.get("strides")
        itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else None
        contiguous: bool | None = True
        if strides is not None:
            if itemsize is None:
                contiguous = None
            else:
                expected = itemsize
                for size, stride in zip(reversed(shape), reversed(tuple(strides))):
                    if size != 1 and int(stride) != expected:
                        contiguous = False
                        break
                    expected *= size
        return dtype, shape, contiguous
    dtype = getattr(obj, "dtype", None)
    shape_attr = getattr(obj, "shape", None)
    shape = tuple(int(v) for v in shape_attr) if shape_attr is not None else None
    contiguous = None
    if callable(getattr(obj, "is_contiguous", None)):  # torch.Tensor
        contiguous = bool(obj.is_contiguous())
    elif hasattr(getattr(obj, "flags", None), "c_contiguous"):  # cupy.ndarray
        contiguous = bool(obj.flags.c_contiguous)
    return dtype, shape, contiguous


def _dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, torch.float32, '<f4', ... (the last dotted part of str())."""
    return str(dtype).rsplit(".", 1)[-1]


def _take_float32(X: Any, name: str, device: str, ndims: tuple[int, ...], shape_text: str) -> Any:
    """Route ``X``: a NumPy array or non-DLPack object is returned unchanged (the NumPy checks
    follow), a non-CUDA DLPack object becomes a zero-copy NumPy view, a CUDA DLPack object is
    checked from its metadata and wrapped in :class:`_DeviceTensor`."""
    if not _is_dlpack(X):
        return X
    try:
        dev_type, dev_id = (int(v) for v in X.__dlpack_device__())
    except Exception as exc:
        raise TypeError(f"{name}.__dlpack_device__() failed or did not return (type, id): {exc}") from exc
    if dev_type not in _DLPACK_CUDA_TYPES:
        try:
            return np.from_dlpack(X)  # zero-copy view of host memory
        except Exception as exc:  # BufferError/TypeError/RuntimeError, depending on the producer
            raise TypeError(f"{name} (a {type(X).__name__} on DLPack device "
                            f"{_DLPACK_HOST_TYPES.get(dev_type, f'type {dev_type}')}) cannot be "
                            f"read as a NumPy array through DLPack: {exc}") from exc
    where = f"{_DLPACK_CUDA_TYPES[dev_type]} device {dev_id}"
    if device == "cpu":
        # No silent device->host copy: it would hide a transfer as large as the activations.
        raise TypeError(f"{name} is a CUDA tensor ({type(X).__name__} on {where}) but device='cpu': "
                        "pass device='cuda' (or 'auto') to use it in place, or copy it to host "
                        f"memory yourself (e.g. {name}.cpu())")
    dtype, shape, contiguous = _device_metadata(X, name)
    if dtype is not None and _dtype_name(dtype) != "float32":
        raise TypeError(f"{name} must have dtype float32, got {_dtype_name(dtype)} "
                        f"(convert it on its device, e.g. {name}.float())")
    if shape is not None:
        if len(shape) not in ndims:
            raise ValueError(f"{name} must be {shape_text}, got {len(shape)}-D with shape {shape}")
        if shape[0] == 0 or (ndims == (2,) and shape[1] == 0):
            raise ValueError(f"{name} is empty: shape {shape}")
        if shape[1] == 0 or int(np.prod(shape[2:], dtype=np.int64)) == 0:
            raise ValueError(f"{name} has no channels or an empty spatial map: shape {shape}")
    if contiguous is False:
        # The NumPy path copies a strided view to C order; on the device that copy is the
        # producer's job, so it is asked for instead of made behind the caller's back.
        raise TypeError(f"{name} must be C-contiguous (e.g. call .contiguous() on a torch.Tensor)")
    if shape is None:  # the offsets cannot be checked without the row count
        raise TypeError(f"{name} is a CUDA DLPack object ({type(X).__name__}) without shape metadata "
                        "(__cuda_array_interface__ or .shape)")
    return _DeviceTensor(X, shape, where)


def _acts(acts: Any, device: str, name: str = "acts") -> np.ndarray | _DeviceTensor:
    """(N, C) or (N, C, H, W) float32 activations as (N, C, S), the one shape both cores take:
    an array, or a checked CUDA tensor folded by its own ``reshape`` (a view: it is contiguous)."""
    acts = _take_float32(acts, name, device, (2, 4), "(N, C) or (N, C, H, W)")
    if not isinstance(acts, _DeviceTensor):
        return check_acts(acts, name)
    n, c = acts.shape[:2]
    folded = (n, c, int(np.prod(acts.shape[2:], dtype=np.int64)))
    if not callable(getattr(acts.obj, "reshape", None)):
        raise TypeError(f"{name} is a CUDA DLPack object ({type(acts.obj).__name__}) without .reshape: "
                        f"pass it as (N, C, S) = {folded} yourself")
    return _DeviceTensor(acts.obj.reshape(folded), folded, acts.where)


def _matrix(X: Any, device: str, name: str = "X") -> np.ndarray | _DeviceTensor:
    """An (n, d) float32 input: a checked C-contiguous array or a checked CUDA tensor."""
    X = _take_float32(X, name, device, (2,), "2-D (n_samples, n_features)")
    if isinstance(X, _DeviceTensor):
        return X
    return check_matrix(X, name, check_finite=False)  # the core checks finiteness while it reads rows


def _arg(mod: Any, X: np.ndarray | _DeviceTensor, name: str = "X", device: str = "auto") -> Any:
    """What to hand to ``mod``: the device tensor only to _core_cuda (device='auto' may have
    resolved to the CPU, which cannot read device memory)."""
    if not isinstance(X, _DeviceTensor):
        return X
    if mod is not _cuda:
        _n, why = _cuda_status()
        raise RuntimeError(f"{name} is a CUDA tensor ({X.where}) but device={device!r} resolved to the "
                           f"CPU core ({why or 'the CUDA core lacks this kernel'}); copy it to host "
                           f"memory yourself (e.g. {name}.cpu()) or fix the CUDA build")
    return X.obj


# ---- build information and threads ----------------------------------------------------------


def build_info() -> dict:
    """What was compiled and what serves each kernel.

    Returns
    -------
    dict
        ``version``, ``openmp`` (bool), ``max_threads`` (what OpenMP offers), ``thread_ceiling``
        (the most threads the core starts, see :func:`set_num_threads`), ``num_threads``,
        ``simd`` (SIMD levels compiled in), ``simd_supported`` (those this CPU runs),
        ``simd_best``, ``simd_selected`` (the level in use, see :func:`set_simd_level`), ``compiler``,
        ``cuda`` (bool: ``_core_cuda`` built and a GPU visible), ``cuda_built`` (bool),
        ``cuda_devices`` (int), ``cuda_error`` (why not, or None: the import error, or
        ``_core_cuda``'s own reason such as ``cudaGetDeviceCount failed:
        cudaErrorInsufficientDriver (...)``), ``cuda_info`` (``_core_cuda.build_info()``), ``kernels`` (name ->
        ``{"cpu": "native" | "missing", "cuda": "native" | "missing"}``).
    """
    info: dict[str, Any] = {}
    if _core is not None:
        info.update(_core.build_info())
    else:
        info.update(version=None, openmp=False, max_threads=0, simd=[], core_error=_core_error)
    n_dev, why = _cuda_status()
    info["cuda_built"] = _cuda is not None
    info["cuda_devices"] = n_dev
    info["cuda"] = _cuda is not None and n_dev > 0
    info["cuda_error"] = why
    if _cuda is not None:
        try:
            info["cuda_info"] = dict(_cuda.build_info())
        except Exception as exc:
            info["cuda_info"] = {"error": str(exc)}
    info["kernels"] = {
        k: {"cpu": "native" if _core is not None and hasattr(_core, k) else "missing",
            "cuda": "native" if _cuda is not None and hasattr(_cuda, k) else "missing"}
        for k in KERNELS
    }
    return info


def set_num_threads(n: int) -> None:
    """Set the OpenMP thread count of the CPU core (results do not depend on it).

    Parameters
    ----------
    n : int
        ``1 <= n <= build_info()["thread_ceiling"]`` (4 per processor, at least 64, within
        ``OMP_THREAD_LIMIT``). Every kernel also starts no more threads than it has work items.

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n`` is outside that range (the core decides the ceiling and names it and ``n``).
    """
    n = check_int(n, "n", 1)
    # the ceiling lives in the core (csrc/cpu/parallel.cpp), which raises ValueError naming it
    _backend("cpu", "set_num_threads").set_num_threads(n)


def get_num_threads() -> int:
    """OpenMP threads the CPU core uses: the :func:`set_num_threads` count, else OpenMP's default
    (``OMP_NUM_THREADS``), clipped to ``build_info()["thread_ceiling"]``."""
    return int(_backend("cpu", "get_num_threads").get_num_threads())


#: Environment variable that picks the CPU core's SIMD level at import (see :func:`set_simd_level`).
SIMD_ENV = "BACKDOORLAB_SIMD"


def simd_levels() -> list[str]:
    """SIMD levels of the CPU core that this CPU can run, worst first (e.g. ``["sse2", "avx2",
    "avx512"]``); ``build_info()["simd"]`` lists every level compiled in."""
    return [str(x) for x in _backend("cpu", "build_info").build_info()["simd_supported"]]


def set_simd_level(level: str) -> None:
    """Run the CPU core's hot loops with this SIMD level from now on (for tests and benchmarks).

    Parameters
    ----------
    level : {"sse2", "avx2", "avx512", "auto"}
        A level compiled in and supported by this CPU (:func:`simd_levels`), or ``"auto"`` for
        the best one. Results are deterministic per level; they may differ between levels in
        the last bits (other vector widths sum in another order).

    Raises
    ------
    TypeError
        ``level`` is not a str.
    ValueError
        Unknown level, or one this CPU cannot run (the message lists the choices).

    Notes
    -----
    Call it while no kernel runs in another thread: a kernel reads the level when it starts.
    """
    if not isinstance(level, str):
        raise TypeError(f"level must be a str (one of {simd_levels()} or 'auto'), got {type(level).__name__}")
    core = _backend("cpu", "set_simd_level")
    name = level.strip().lower()
    if name == "auto":
        name = str(core.build_info()["simd_best"])
    core.set_simd_level(name)  # ValueError naming the level and the choices


def _simd_from_env() -> None:
    """Honour BACKDOORLAB_SIMD once, at import: unset or empty = the best level."""
    import os

    value = os.environ.get(SIMD_ENV, "").strip()
    if not value or _core is None:
        return
    try:
        set_simd_level(value)
    except ValueError as exc:
        raise ValueError(f"{SIMD_ENV}={value!r}: {exc}; unset it to use the best level") from None


_simd_from_env()


# ---- 1. activation statistics ----------------------------------------------------------------


def activation_stats(acts: np.ndarray, labels: np.ndarray | None = None, n_classes: int | None = None,
                     device: str = "cpu") -> dict:
    """Per-channel mean, std, max and fraction > 0 of activations, optionally per class.

    Parameters
    ----------
    acts : ndarray or DLPack tensor of shape (N, C) or (N, C, H, W), float32
        Activations; for conv maps every spatial position counts as one value of its channel.
    labels : ndarray of shape (N,), integer, optional
        Class of every row; with it every statistic is per (class, channel).
    n_classes : int, optional
        Number of classes with ``labels`` (``labels.max() + 1`` by default).
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    dict
        ``mean``, ``std`` (population, ddof=0), ``max``, ``frac_positive``: float64 of shape
        (C,) or (n_classes, C) (NaN for a class without rows); ``count``: int64 rows, shape ()
        or (n_classes,).

    Raises
    ------
    TypeError, ValueError
        Wrong dtype/ndim, empty input, NaN/Inf, labels out of range.
    """
    a = _acts(acts, device)
    acc = ActivationStats(a.shape[1], stats_classes(a.shape[0], labels, n_classes), device=device)
    acc.update(acts, labels)
    return acc.result()


class ActivationStats(RunningMoments):
    """Streaming per-channel statistics: feed batches, read the statistics of everything fed.

    The accumulator keeps, per (class, channel), the count, mean and sum of squared deviations
    in float64 and merges every batch with Chan et al.'s parallel update, so a data set streamed
    in any batch sizes gives the statistics of the whole without holding it.

    Parameters
    ----------
    n_channels : int
        C, the channel count every batch must have.
    n_classes : int, optional
        With it, statistics are per (class, channel) and every ``update`` needs labels.
    device : {"cpu", "cuda", "auto"}
    """

    def __init__(self, n_channels: int, n_classes: int | None = None, device: str = "cpu") -> None:
        super().__init__(n_channels, n_classes)
        self.device = device
        self._mod = _backend(device, "stats_update")

    def update(self, batch: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add a batch.

        Parameters
        ----------
        batch : ndarray or DLPack tensor of shape (B, C) or (B, C, H, W), float32
        labels : ndarray of shape (B,), integer — required iff the accumulator is per class.

        Raises
        ------
        TypeError, ValueError
            Wrong dtype/shape/channel count, NaN/Inf (the accumulator is left unchanged).
        """
        a = _acts(batch, self.device, "batch")
        groups = self._groups(a.shape, labels)
        self._mod.stats_update(_arg(self._mod, a, "batch", self.device), groups, self._count, self._values,
                               self._mean, self._m2, self._max, self._npos)


# ---- 2. FastICA and PCA ----------------------------------------------------------------------


def fastica(X: np.ndarray, offsets: np.ndarray, n_components: int = 10, max_iter: int = 1000,
            tol: float = 0.005, seed: int = 0, device: str = "cpu", *,
            return_n_iter: bool = False):
    """FastICA fitted on every class: the Activation-Clustering dimensionality reduction.

    Per class: centre, whiten with the top ``n_components`` eigenvectors of the covariance
    (eigen-decomposition, no LAPACK), then the parallel (symmetric) FastICA fixed point with
    G = logcosh, started from a seeded standard-normal matrix, until
    ``max|abs(diag(W_new W^T)) - 1| < tol`` or ``max_iter`` iterations — scikit-learn's
    ``FastICA(whiten="unit-variance", fun="logcosh", algorithm="parallel")``.

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
        Rows grouped by class (C-contiguous; a strided view is copied).
    offsets : ndarray of shape (n_classes + 1,), int64
        Class ``c`` is ``X[offsets[c]:offsets[c+1]]``; empty classes are skipped.
    n_components : int
        Output dimension, ``1 <= n_components <= d``; every non-empty class needs at least
        ``max(n_components, 2)`` rows.
    max_iter : int
    tol : float
    seed : int
        Seeds every class's initial matrix (class ``c`` draws from a stream derived from
        ``(seed, c)``, so results do not depend on the thread count).
    device : {"cpu", "cuda", "auto"}
    return_n_iter : bool
        Also return the iterations used per class.

    Returns
    -------
    sources : ndarray of shape (n, n_components), float32
        Unit-variance independent components of every row, rows aligned with ``X``.
    n_iter : ndarray of shape (n_classes,), int32
        Only with ``return_n_iter``; ``max_iter`` means not converged.
    """
    X = _matrix(X, device)
    offsets, n_components, max_iter, tol = fastica_args(X.shape, offsets, n_components, max_iter, tol)
    seed = check_int(seed, "seed", 0, 2**64 - 1)
    mod = _backend(device, "fastica")
    sources, n_iter = mod.fastica(_arg(mod, X, device=device), offsets, n_components, max_iter, tol, seed)
    return (sources, n_iter) if return_n_iter else sources


def pca(X: np.ndarray, offsets: np.ndarray, n_components: int = 10, device: str = "cpu") -> np.ndarray:
    """Per-class PCA projection ``(x - mu) @ V_k`` (not whitened).

    ``V_k`` are the top ``n_components`` eigenvectors of the class covariance, each signed so
    its largest-magnitude entry is positive (scikit-learn's ``svd_flip`` convention).

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
    offsets : ndarray of shape (n_classes + 1,), int64
    n_components : int
        ``1 <= n_components <= d``; every non-empty class needs at least that many rows.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    ndarray of shape (n, n_components), float32
    """
    X = _matrix(X, device)
    offsets, n_components = pca_args(X.shape, offsets, n_components)
    mod = _backend(device, "pca")
    return mod.pca(_arg(mod, X, device=device), offsets, n_components)


def whiten(X: np.ndarray, offsets: np.ndarray, n_components: int = 10, device: str = "cpu") -> np.ndarray:
    """Per-class whitening: the top ``n_components`` principal components scaled to unit variance.

    This is FastICA's whitening step (scikit-learn's ``whiten="unit-variance"``: ddof 0) without
    the unmixing rotation that follows it. What k-means, silhouettes and every Activation-Clustering
    analysis read of the reduced rows is their Euclidean distances within a class, and an orthogonal
    rotation keeps those: on whitened rows they give FastICA's clusters, for the whitening's cost
    alone (:func:`backdoorlab.defences.activation_clustering.cluster_classes`). Computed as
    :func:`pca` (same signs), each class's columns divided by their deviation (:func:`unit_variance`).

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
        Rows grouped by class.
    offsets : ndarray of shape (n_classes + 1,), int64
    n_components : int
        ``1 <= n_components <= d``; every non-empty class needs at least ``max(n_components, 2)`` rows.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    ndarray of shape (n, n_components), float32
        NaN in a class with fewer than ``n_components`` independent directions (a zero deviation;
        FastICA's whitening divides by zero there too).
    """
    X = _matrix(X, device)
    offsets, n_components = whiten_args(X.shape, offsets, n_components)
    mod = _backend(device, "pca")
    projected = np.asarray(mod.pca(_arg(mod, X, device=device), offsets, n_components), dtype=np.float32)
    return unit_variance(projected, offsets)


# ---- 3. k-means and silhouette ---------------------------------------------------------------


def kmeans(X: np.ndarray, offsets: np.ndarray, k: int = 2, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4, seed: int = 0, device: str = "cpu") -> KMeansResult:
    """k-means fitted on every class (k-means++ init, Lloyd iterations, best of ``n_init``).

    As scikit-learn's ``KMeans(algorithm="lloyd")``: greedy k-means++ with ``2 + log(k)``
    local trials; stop when the labels no longer change or the squared centre shift is at most
    ``tol`` times the mean feature variance of the class; a final assignment step; the run
    with the lowest inertia wins. An empty cluster is re-seeded with the row farthest from its
    centre.

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
    offsets : ndarray of shape (n_classes + 1,), int64
    k : int
        Clusters per class; every non-empty class needs at least ``k`` rows.
    n_init, max_iter : int
    tol : float
    seed : int
        Class ``c``, run ``r`` draws from a stream derived from ``(seed, c, r)``.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    KMeansResult
        ``labels`` int32 (n,) in ``[0, k)`` within each class, ``centers`` float32
        (n_classes, k, d), ``inertia`` float64 (n_classes,) (NaN for empty classes).
    """
    X = _matrix(X, device)
    offsets, k, n_init, max_iter, tol = kmeans_args(X.shape, offsets, k, n_init, max_iter, tol)
    seed = check_int(seed, "seed", 0, 2**64 - 1)
    mod = _backend(device, "kmeans")
    labels, centers, inertia, _n_iter = mod.kmeans(_arg(mod, X, device=device), offsets, k, n_init, max_iter, tol, seed)
    return KMeansResult(labels, centers, inertia)


def silhouette_samples(X: np.ndarray, offsets: np.ndarray, labels: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Silhouette of every row within its class (Euclidean; scikit-learn's definition).

    ``s = (b - a) / max(a, b)`` with ``a`` the mean distance to the other rows of its cluster
    and ``b`` the lowest mean distance to another cluster of the same class. Rows alone in
    their cluster get 0.0; a class whose rows share one label has no silhouette and gets 0.0
    (scikit-learn raises there; a batched call must not fail for one degenerate class).

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
    offsets : ndarray of shape (n_classes + 1,), int64
    labels : ndarray of shape (n,), integer
        Cluster of every row within its class (e.g. ``kmeans(...).labels``), ``>= 0``.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    ndarray of shape (n,), float32
    """
    X = _matrix(X, device)
    offsets = check_offsets(offsets, X.shape[0])
    labels = np.ascontiguousarray(check_labels(labels, X.shape[0]), dtype=np.int32)  # checked to fit int32
    mod = _backend(device, "silhouette_samples")
    return mod.silhouette_samples(_arg(mod, X, device=device), offsets, labels)


# ---- 4. spectral signatures ------------------------------------------------------------------


def spectral_scores(X: np.ndarray, offsets: np.ndarray, center: bool = True, device: str = "cpu") -> np.ndarray:
    """Spectral-signature outlier score of every row within its class.

    ``center=True`` (Tran et al. 2018): ``|<v, x - mu>|`` with ``v`` the top right singular
    vector of the centred class matrix. ``center=False`` reproduces IBM ART 1.20 (SVD of the
    un-centred class matrix, un-centred rows projected): ``|<v, x>|``. On the CPU ``v`` comes
    from Lanczos iteration on ``Xc^T (Xc v)`` with float32 products to a residual of 1e-6 of the
    top eigenvalue (from 64 features on), else — or where that does not converge — from float64
    Lanczos to 1e-10 and a dense eigen-solver (docs/native.md). Scores agree with a float64 SVD
    to ~1e-6 of the class's largest score.

    Parameters
    ----------
    X : ndarray or DLPack tensor of shape (n, d), float32
    offsets : ndarray of shape (n_classes + 1,), int64
    center : bool
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    ndarray of shape (n,), float32
    """
    center = check_center(center)
    X = _matrix(X, device)
    offsets = check_offsets(offsets, X.shape[0])
    mod = _backend(device, "spectral_scores")
    return mod.spectral_scores(_arg(mod, X, device=device), offsets, center)


# ---- 5. pruning ------------------------------------------------------------------------------


def pruning_order(mean_activation: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Channels by ascending mean activation, ties in channel order (stable sort).

    Parameters
    ----------
    mean_activation : ndarray of shape (C,), floating point (converted to float64)
    device : {"cpu", "cuda", "auto"}
        The input is a host array of C values either way; the CUDA twin exists so that every
        kernel runs on both devices (for C of a few hundred the CPU is as fast).

    Returns
    -------
    ndarray of shape (C,), int64
        ``order[0]`` is the channel Fine-Pruning removes first.
    """
    m = check_mean_activation(mean_activation)
    return _backend(device, "pruning_order").pruning_order(m)


def pruning_mask(order: np.ndarray, n_pruned: int, device: str = "cpu") -> np.ndarray:
    """Channel mask pruning the first ``n_pruned`` channels of ``order``.

    Parameters
    ----------
    order : ndarray of shape (C,), integer
        A permutation of ``0..C-1`` (e.g. from :func:`pruning_order`).
    n_pruned : int
        ``0 <= n_pruned <= C``.
    device : {"cpu", "cuda", "auto"}

    Returns
    -------
    ndarray of shape (C,), float32
        0.0 for pruned channels, 1.0 for kept ones.
    """
    order, n_pruned = pruning_mask_args(order, n_pruned)
    return _backend(device, "pruning_mask").pruning_mask(np.ascontiguousarray(order), n_pruned)


# The reference twins, for callers that want to compare (tests, benchmarks).
reference = _ref
