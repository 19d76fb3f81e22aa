"""Input rules of the activation kernels, shared by :mod:`backdoorlab.native` and :mod:`backdoorlab.reference`.

Both kernel sets must reject the same inputs with the same messages (docs/native.md, "Input
rules"), so the checks live here once and each side imports them; neither side imports the
other's private helpers. Each check returns the input in the form the kernels take (C-contiguous
float32, int64 offsets, ...) or raises ``TypeError``/``ValueError`` naming the bad value.
NumPy only: it works without the compiled core.
"""

from __future__ import annotations

import numpy as np

# Class counts, cluster ids, iteration counts and seeds below 2^31 are int32 in the core.
INT32_MAX = 2**31 - 1


def check_matrix(X: np.ndarray, name: str = "X", *, check_finite: bool = True) -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 (n, d) array, or raise naming the problem.

    float32 is required (TypeError otherwise: a silent float64 -> float32 copy would double the
    memory of a large activation matrix behind the caller's back). A non-contiguous float32 view
    is copied to C order — documented, and the only conversion done.
    """
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
    if X.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {X.dtype} (convert with {name}.astype(np.float32))")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {X.ndim}-D with shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    X = np.ascontiguousarray(X)
    if check_finite and not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise ValueError(f"{name} contains NaN or Inf (first at row {bad})")
    return X


def check_offsets(offsets: np.ndarray, n_rows: int, name: str = "offsets") -> np.ndarray:
    """Return ``offsets`` as int64 (n_classes + 1,), or raise naming the problem.

    Class ``c`` holds rows ``offsets[c]:offsets[c+1]``; offsets start at 0, end at ``n_rows`` and
    never decrease (an empty class, two equal offsets, is allowed).
    """
    offsets = np.asarray(offsets)
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {offsets.dtype}")
    if offsets.ndim != 1 or offsets.size < 2:
        raise ValueError(f"{name} must be 1-D with n_classes + 1 >= 2 entries, got shape {offsets.shape}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {offsets[0]}")
    if offsets[-1] != n_rows:
        raise ValueError(f"{name}[-1] must equal the number of rows of X ({n_rows}), got {offsets[-1]}")
    steps = np.diff(offsets)
    if (steps < 0).any():
        c = int(np.flatnonzero(steps < 0)[0])
        raise ValueError(f"{name} must be non-decreasing, but {name}[{c + 1}]={offsets[c + 1]} < {name}[{c}]={offsets[c]}")
    return offsets


def check_min_rows(offsets: np.ndarray, min_rows: int, what: str) -> None:
    """Raise if a non-empty class has fewer than ``min_rows`` rows (empty classes are skipped)."""
    sizes = np.diff(offsets)
    bad = np.flatnonzero((sizes > 0) & (sizes < min_rows))
    if bad.size:
        c = int(bad[0])
        raise ValueError(f"class {c} has {int(sizes[c])} rows, fewer than {what}={min_rows}")


def check_int(value: int, name: str, minimum: int, maximum: int = INT32_MAX) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (int32 by default: what the core takes)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_tol(tol: float, name: str = "tol") -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(tol).__name__}")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {tol}")
    return float(tol)


def check_components(n_components: int, d: int) -> int:
    n_components = check_int(n_components, "n_components", 1)
    if n_components > d:
        raise ValueError(f"n_components={n_components} exceeds the number of features d={d}")
    return n_components


def check_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if n and labels.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {labels.min()} at row {int(np.argmin(labels))}")
    if n and labels.max() > INT32_MAX:  # class counts and cluster ids are int32 in the core
        raise ValueError(f"{name} must fit in int32, got {labels.max()} at row {int(np.argmax(labels))}")
    return labels


def check_acts(acts: np.ndarray, name: str = "acts") -> np.ndarray:
    """Return activations as float32 (N, C, S) (S = H*W, 1 for (N, C)); raise naming the problem."""
    if not isinstance(acts, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(acts).__name__}")
    if acts.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {acts.dtype} (convert with {name}.astype(np.float32))")
    if acts.ndim not in (2, 4):
        raise ValueError(f"{name} must be (N, C) or (N, C, H, W), got {acts.ndim}-D with shape {acts.shape}")
    if acts.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {acts.shape}")
    if acts.shape[1] == 0 or (acts.ndim == 4 and acts.shape[2] * acts.shape[3] == 0):
        raise ValueError(f"{name} has no channels or an empty spatial map: shape {acts.shape}")
    n, c = acts.shape[:2]
    return np.ascontiguousarray(acts).reshape(n, c, -1)


def check_groups(labels: np.ndarray | None, n_classes: int | None, n: int) -> tuple[np.ndarray | None, int | None]:
    if labels is None:
        if n_classes is not None:
            raise ValueError("n_classes was given without labels")
        return None, None
    labels = check_labels(labels, n)
    top = int(labels.max()) + 1 if n else 0
    if n_classes is None:
        raise ValueError("n_classes is required with labels (the accumulator's shape must not depend on the batch)")
    n_classes = check_int(n_classes, "n_classes", 1)
    if top > n_classes:
        raise ValueError(f"labels hold class {top - 1}, but n_classes={n_classes}")
    return labels.astype(np.int64, copy=False), n_classes


def check_order(order: np.ndarray) -> np.ndarray:
    order = np.asarray(order)
    if order.dtype.kind not in "iu":
        raise TypeError(f"order must hold integers, got dtype {order.dtype}")
    if order.ndim != 1 or order.size == 0:
        raise ValueError(f"order must be 1-D and non-empty, got shape {order.shape}")
    order = order.astype(np.int64, copy=False)
    if not np.array_equal(np.sort(order), np.arange(order.size)):
        raise ValueError(f"order must be a permutation of 0..{order.size - 1}")
    return order


# ---- the argument set of each kernel -----------------------------------------------------------
# Each takes X's shape (n, d) rather than X, so native can check a CUDA tensor by its metadata.


def fastica_args(shape: tuple[int, ...], offsets: np.ndarray, n_components: int, max_iter: int,
                 tol: float) -> tuple[np.ndarray, int, int, float]:
    """``(offsets, n_components, max_iter, tol)`` of a FastICA call, checked."""
    offsets = check_offsets(offsets, shape[0])
    n_components = check_components(n_components, shape[1])
    check_min_rows(offsets, max(n_components, 2), "n_components (and at least 2)")
    return offsets, n_components, check_int(max_iter, "max_iter", 1), check_tol(tol)


def whiten_args(shape: tuple[int, ...], offsets: np.ndarray, n_components: int) -> tuple[np.ndarray, int]:
    """``(offsets, n_components)`` of a whitening call, checked (FastICA's row minimum: a variance needs 2 rows)."""
    offsets = check_offsets(offsets, shape[0])
    n_components = check_components(n_components, shape[1])
    check_min_rows(offsets, max(n_components, 2), "n_components (and at least 2)")
    return offsets, n_components


def pca_args(shape: tuple[int, ...], offsets: np.ndarray, n_components: int) -> tuple[np.ndarray, int]:
    """``(offsets, n_components)`` of a PCA call, checked."""
    offsets = check_offsets(offsets, shape[0])
    n_components = check_components(n_components, shape[1])
    check_min_rows(offsets, n_components, "n_components")
    return offsets, n_components


def kmeans_args(shape: tuple[int, ...], offsets: np.ndarray, k: int, n_init: int, max_iter: int,
                tol: float) -> tuple[np.ndarray, int, int, int, float]:
    """``(offsets, k, n_init, max_iter, tol)`` of a k-means call, checked."""
    offsets = check_offsets(offsets, shape[0])
    k = check_int(k, "k", 1)
    check_min_rows(offsets, k, "k")
    return offsets, k, check_int(n_init, "n_init", 1), check_int(max_iter, "max_iter", 1), check_tol(tol)


def check_center(center: bool) -> bool:
    if not isinstance(center, (bool, np.bool_)):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    return bool(center)


def check_mean_activation(mean_activation: np.ndarray) -> np.ndarray:
    """The per-channel means Fine-Pruning orders, as a C-contiguous float64 (C,) array."""
    m = np.asarray(mean_activation)
    if m.dtype.kind != "f":
        raise TypeError(f"mean_activation must be floating point, got dtype {m.dtype}")
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"mean_activation must be 1-D and non-empty, got shape {m.shape}")
    return np.ascontiguousarray(m, dtype=np.float64)


def pruning_mask_args(order: np.ndarray, n_pruned: int) -> tuple[np.ndarray, int]:
    """``(order, n_pruned)`` of a pruning-mask call, checked (``0 <= n_pruned <= C``)."""
    order = check_order(order)
    n_pruned = check_int(n_pruned, "n_pruned", 0)
    if n_pruned > order.size:
        raise ValueError(f"n_pruned={n_pruned} exceeds the channel count {order.size}")
    return order, n_pruned


def stats_classes(n_rows: int, labels: np.ndarray | None, n_classes: int | None) -> int | None:
    """The class count of an ``activation_stats`` call: None without labels, else ``n_classes``
    (``labels.max() + 1`` when not given)."""
    if labels is None:
        if n_classes is not None:
            raise ValueError("n_classes was given without labels")
        return None
    return int(check_labels(labels, n_rows).max()) + 1 if n_classes is None else n_classes
