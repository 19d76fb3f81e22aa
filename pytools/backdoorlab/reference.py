"""NumPy / scikit-learn twins of every native kernel (the specification the native core must meet).

Every function here has the signature of its twin in :mod:`backdoorlab.native` minus ``device``
(docs/contracts.md, section 1) and computes the same quantity the obvious way: per class, with
NumPy in float64 or with the scikit-learn estimator the defences of the literature used (IBM ART's
Activation Clustering calls ``FastICA(n_components=10, max_iter=1000, tol=0.005)`` and
``KMeans(n_clusters=2)``; its Spectral Signatures calls ``numpy.linalg.svd``). The tests compare
the native core against these functions on the same inputs, and ``python -m backdoorlab.bench
kernels`` times both in one run.

The input rules (dtype, shape, finiteness, offsets, minimum rows per class) are checked by the
helpers of :mod:`backdoorlab._validate`, which :mod:`backdoorlab.native` uses too, so both sides
reject the same inputs with the same messages. This module imports only NumPy and scikit-learn: it works without the compiled
core.

FastICA and k-means get the float32 rows as IBM ART passes them (scikit-learn then computes in
float32); the deterministic twins compute in float64. Stochastic kernels agree with the native
core in distribution, not bit for bit: the random initialisations come from different generators. Tests compare them through
invariants (inertia within 1 %, sources recovered, clusters found), never element by element.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

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

__all__ = [
    "KMeansResult",
    "group_by_class",
    "activation_stats",
    "ActivationStats",
    "fastica",
    "pca",
    "whiten",
    "unit_variance",
    "kmeans",
    "silhouette_samples",
    "spectral_scores",
    "pruning_order",
    "pruning_mask",
]


class KMeansResult(NamedTuple):
    """Per-class k-means result.

    Attributes
    ----------
    labels : ndarray of shape (n,), int32
        Cluster of every row, numbered 0..k-1 within its class.
    centers : ndarray of shape (n_classes, k, d), float32
        Cluster centres per class (NaN for an empty class).
    inertia : ndarray of shape (n_classes,), float64
        Sum of squared distances of the class rows to their centre (NaN for an empty class).
    """

    labels: np.ndarray
    centers: np.ndarray
    inertia: np.ndarray


# ---- input helpers of the twins ------------------------------------------------------------


def _sklearn_seed(seed: int) -> int:
    """``seed`` checked as the native core takes it (an int in [0, 2^64 - 1]), folded to the 32
    bits scikit-learn's ``random_state`` accepts (the streams differ from the core's anyway)."""
    return check_int(seed, "seed", 0, 2**64 - 1) % 2**32


def _classes(offsets: np.ndarray):
    """(class index, start, stop) of every non-empty class."""
    for c in range(offsets.size - 1):
        start, stop = int(offsets[c]), int(offsets[c + 1])
        if stop > start:
            yield c, start, stop


# ---- helpers --------------------------------------------------------------------------------


def group_by_class(X: np.ndarray, labels: np.ndarray, n_classes: int | None = None):
    """Sort rows by class so the batched kernels can take them with class offsets.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
        Rows to group (copied to C order if needed; see :func:`check_matrix`).
    labels : ndarray of shape (n,), integer
        Class of every row, in ``[0, n_classes)``.
    n_classes : int, optional
        Number of classes; ``labels.max() + 1`` by default. Classes without rows get empty
        ranges.

    Returns
    -------
    X_sorted : ndarray of shape (n, d), float32
        ``X[order]``.
    offsets : ndarray of shape (n_classes + 1,), int64
        Class ``c`` is ``X_sorted[offsets[c]:offsets[c+1]]``.
    order : ndarray of shape (n,), int64
        Stable sort of ``labels``; map per-row results back with ``out[order] = res``.
    """
    X = check_matrix(X, check_finite=False)
    labels = check_labels(labels, X.shape[0])
    top = int(labels.max()) + 1
    if n_classes is None:
        n_classes = top
    n_classes = check_int(n_classes, "n_classes", 1)
    if top > n_classes:
        raise ValueError(f"labels hold class {top - 1}, but n_classes={n_classes}")
    order = np.argsort(labels, kind="stable").astype(np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    offsets = np.zeros(n_classes + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return np.ascontiguousarray(X[order]), offsets, order


# ---- 1. activation statistics ----------------------------------------------------------------


def activation_stats(acts: np.ndarray, labels: np.ndarray | None = None, n_classes: int | None = None) -> dict:
    """Per-channel mean, std, max and fraction > 0 of activations, optionally per class.

    Parameters
    ----------
    acts : ndarray of shape (N, C) or (N, C, H, W), float32
        Activations; for conv maps every spatial position counts as one value of its channel.
    labels : ndarray of shape (N,), integer, optional
        Class of every row; with it every statistic is per (class, channel).
    n_classes : int, optional
        Number of classes with ``labels`` (``labels.max() + 1`` by default).

    Returns
    -------
    dict
        ``mean``, ``std`` (population), ``max``, ``frac_positive``: float64 of shape (C,) or
        (n_classes, C) (NaN for a class without rows); ``count``: int64 number of rows, () or
        (n_classes,).
    """
    a = check_acts(acts)
    acc = ActivationStats(a.shape[1], stats_classes(a.shape[0], labels, n_classes))
    acc.update(acts, labels)
    return acc.result()


class ActivationStats(RunningMoments):
    """Streaming per-channel statistics (NumPy twin of :class:`backdoorlab.native.ActivationStats`).

    Batches are merged with Chan et al.'s parallel update of (count, mean, M2) in float64, so a
    data set streamed in any batch sizes gives the statistics of the whole.

    Parameters
    ----------
    n_channels : int
        C, the channel count every batch must have.
    n_classes : int, optional
        With it, statistics are per (class, channel) and every ``update`` needs labels.
    """

    def update(self, batch: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add a batch of shape (B, C) or (B, C, H, W), float32 (with (B,) labels if per class)."""
        a = check_acts(batch, "batch")
        groups = self._groups(a.shape, labels)
        if not np.isfinite(a).all():
            bad = int(np.flatnonzero(~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1))[0])
            raise ValueError(f"batch contains NaN or Inf (first at row {bad})")
        s = a.shape[2]
        for g in np.unique(groups):
            rows = a[groups == g].astype(np.float64)          # (b, C, S)
            nb = rows.shape[0] * s
            vals = rows.transpose(1, 0, 2).reshape(self.n_channels, -1)
            bmean = vals.mean(axis=1)
            bm2 = ((vals - bmean[:, None]) ** 2).sum(axis=1)
            na = self._values[g]
            tot = na + nb
            delta = bmean - self._mean[g]
            self._mean[g] = self._mean[g] + delta * (nb / tot)
            self._m2[g] = self._m2[g] + bm2 + delta**2 * (na * nb / tot)
            self._values[g] = tot
            self._count[g] += rows.shape[0]
            self._max[g] = np.maximum(self._max[g], vals.max(axis=1))
            self._npos[g] += (vals > 0).sum(axis=1)


# ---- 2. FastICA and PCA per class ------------------------------------------------------------


def fastica(X: np.ndarray, offsets: np.ndarray, n_components: int = 10, max_iter: int = 1000,
            tol: float = 0.005, seed: int = 0, *, return_n_iter: bool = False):
    """scikit-learn FastICA (parallel, logcosh, unit-variance whitening) fitted on every class.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
        Rows grouped by class.
    offsets : ndarray of shape (n_classes + 1,), int64
    n_components, max_iter, tol, seed
        As ``sklearn.decomposition.FastICA`` (``random_state=seed`` for every class).
    return_n_iter : bool
        Also return the iterations used per class.

    Returns
    -------
    sources : ndarray of shape (n, n_components), float32
        The estimated sources of every row, fitted within its class.
    n_iter : ndarray of shape (n_classes,), int32
        Only with ``return_n_iter`` (0 for empty classes).
    """
    from sklearn.decomposition import FastICA

    X = check_matrix(X)
    offsets, n_components, max_iter, tol = fastica_args(X.shape, offsets, n_components, max_iter, tol)
    seed = _sklearn_seed(seed)
    out = np.zeros((X.shape[0], n_components), dtype=np.float32)
    n_iter = np.zeros(offsets.size - 1, dtype=np.int32)
    for c, start, stop in _classes(offsets):
        ica = FastICA(n_components=n_components, max_iter=max_iter, tol=tol, random_state=seed,
                      whiten="unit-variance", fun="logcosh", algorithm="parallel")
        with warnings.catch_warnings():
            # non-convergence within max_iter is part of the defence's normal life (ART ignores it too)
            warnings.simplefilter("ignore")
            # float32 in, as IBM ART hands the activations over (scikit-learn keeps float32)
            out[start:stop] = ica.fit_transform(X[start:stop])
        n_iter[c] = ica.n_iter_
    return (out, n_iter) if return_n_iter else out


def _sklearn_pca(X: np.ndarray, offsets: np.ndarray, n_components: int, whiten: bool) -> np.ndarray:
    """scikit-learn's ``PCA`` fitted on every class (float64 rows), float32 out; ``whiten``: to unit
    ddof-0 variance."""
    from sklearn.decomposition import PCA

    out = np.zeros((X.shape[0], n_components), dtype=np.float32)
    for _, start, stop in _classes(offsets):
        m = stop - start
        if m == 1:
            continue  # one row: centred it is zero, so is its projection (whiten needs 2 rows)
        with np.errstate(divide="ignore", invalid="ignore"):  # whiten: a zero variance gives NaN, as FastICA
            z = PCA(n_components=n_components, svd_solver="full", whiten=whiten).fit_transform(
                X[start:stop].astype(np.float64))
        # scikit-learn whitens to ddof-1 unit variance, FastICA (and whiten below) to ddof 0
        out[start:stop] = z * np.sqrt(m / (m - 1)) if whiten else z
    return out


def pca(X: np.ndarray, offsets: np.ndarray, n_components: int = 10) -> np.ndarray:
    """Per-class PCA projection (centred, not whitened), signs as scikit-learn's ``svd_flip``.

    Returns
    -------
    ndarray of shape (n, n_components), float32
    """
    X = check_matrix(X)
    offsets, n_components = pca_args(X.shape, offsets, n_components)
    return _sklearn_pca(X, offsets, n_components, whiten=False)


def whiten(X: np.ndarray, offsets: np.ndarray, n_components: int = 10) -> np.ndarray:
    """Per-class whitening to ``n_components`` unit-variance (ddof 0) dimensions: FastICA's first step.

    scikit-learn's ``PCA(whiten=True)`` (which divides by the ddof-1 deviation), rescaled by
    ``sqrt(m / (m - 1))`` for a class of ``m`` rows; signs as :func:`pca`.

    Returns
    -------
    ndarray of shape (n, n_components), float32
    """
    X = check_matrix(X)
    offsets, n_components = whiten_args(X.shape, offsets, n_components)
    return _sklearn_pca(X, offsets, n_components, whiten=True)


def unit_variance(Y: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every class's columns of ``Y`` divided by their deviation (ddof 0, about 0: ``Y`` is centred).

    What turns a per-class PCA projection (:func:`pca`) into its whitening (:func:`whiten`), so a
    caller that has the projection does not decompose the classes again.

    Parameters
    ----------
    Y : ndarray of shape (n, k), float32
        Centred per class, rows grouped like ``offsets``.
    offsets : ndarray of shape (n_classes + 1,), int64

    Returns
    -------
    ndarray of shape (n, k), float32
        NaN in a column whose deviation is zero (a class with fewer than ``k`` independent
        directions; FastICA's whitening divides by zero there too).
    """
    Y = check_matrix(Y, "Y", check_finite=False)
    offsets = check_offsets(offsets, Y.shape[0])
    sizes = np.diff(offsets)
    present = sizes > 0
    if not present.any():
        return Y.copy()
    sq = np.add.reduceat(np.square(Y, dtype=np.float64), offsets[:-1][present], axis=0)
    deviation = np.sqrt(sq / sizes[present, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (1.0 / deviation).astype(np.float32)
    return Y * np.repeat(scale, sizes[present], axis=0)


# ---- 3. k-means and silhouette per class -----------------------------------------------------


def kmeans(X: np.ndarray, offsets: np.ndarray, k: int = 2, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    """scikit-learn KMeans (k-means++, Lloyd) fitted on every class.

    Returns
    -------
    KMeansResult
        labels int32 (n,), centers float32 (n_classes, k, d), inertia float64 (n_classes,).
    """
    from sklearn.cluster import KMeans

    X = check_matrix(X)
    offsets, k, n_init, max_iter, tol = kmeans_args(X.shape, offsets, k, n_init, max_iter, tol)
    seed = _sklearn_seed(seed)
    n_classes = offsets.size - 1
    labels = np.zeros(X.shape[0], dtype=np.int32)
    centers = np.full((n_classes, k, X.shape[1]), np.nan, dtype=np.float32)
    inertia = np.full(n_classes, np.nan)
    for c, start, stop in _classes(offsets):
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed,
                    algorithm="lloyd")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            km.fit(X[start:stop])  # float32, as ART calls it
        labels[start:stop] = km.labels_
        centers[c] = km.cluster_centers_
        inertia[c] = km.inertia_
    return KMeansResult(labels, centers, inertia)


def silhouette_samples(X: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette of every row within its class (Euclidean), scikit-learn's definition.

    A class whose rows all share one cluster label has no silhouette; its rows get 0.0
    (scikit-learn would raise; a batched call must not fail for one degenerate class). Rows in a
    cluster of one get 0.0, as in scikit-learn.

    Returns
    -------
    ndarray of shape (n,), float32
    """
    from scipy.spatial.distance import cdist
    from sklearn.metrics import silhouette_samples as sk_silhouette

    X = check_matrix(X)
    offsets = check_offsets(offsets, X.shape[0])
    labels = check_labels(labels, X.shape[0])
    out = np.zeros(X.shape[0], dtype=np.float32)
    for _, start, stop in _classes(offsets):
        lab = labels[start:stop]
        n_labels = np.unique(lab).size
        if n_labels < 2:
            continue
        if n_labels == stop - start:
            continue  # every row alone in its cluster: every silhouette is 0
        # Distances by direct differences: scikit-learn's Euclidean expands |x|^2 + |y|^2 - 2xy,
        # whose rounding leaves ~1e-8 between identical rows, and on a class of identical rows
        # that noise alone decides every silhouette (the exact answer is 0).
        D = cdist(X[start:stop].astype(np.float64), X[start:stop].astype(np.float64))
        out[start:stop] = sk_silhouette(D, lab, metric="precomputed")
    return out


# ---- 4. spectral signatures ------------------------------------------------------------------


def spectral_scores(X: np.ndarray, offsets: np.ndarray, center: bool = True) -> np.ndarray:
    """Spectral-signature outlier score of every row within its class.

    ``center=True`` (Tran et al. 2018): ``|<v, x - mu>|`` with ``v`` the top right singular
    vector of the centred class matrix. ``center=False`` reproduces IBM ART 1.20, which takes the
    SVD of the un-centred class matrix and projects the un-centred rows: ``|<v, x>|``.

    Returns
    -------
    ndarray of shape (n,), float32
    """
    center = check_center(center)
    X = check_matrix(X)
    offsets = check_offsets(offsets, X.shape[0])
    out = np.zeros(X.shape[0], dtype=np.float32)
    for _, start, stop in _classes(offsets):
        rows = X[start:stop].astype(np.float64)
        if center:
            rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        out[start:stop] = np.abs(rows @ vt[0])
    return out


# ---- 5. pruning order and mask ---------------------------------------------------------------


def pruning_order(mean_activation: np.ndarray) -> np.ndarray:
    """Channels by ascending mean activation, ties kept in channel order (stable).

    Parameters
    ----------
    mean_activation : ndarray of shape (C,), float

    Returns
    -------
    ndarray of shape (C,), int64
        ``order[0]`` is the channel to prune first.
    """
    m = check_mean_activation(mean_activation)
    if not np.isfinite(m).all():
        raise ValueError(f"mean_activation contains NaN or Inf (first at channel {int(np.flatnonzero(~np.isfinite(m))[0])})")
    return np.argsort(m, kind="stable").astype(np.int64)


def pruning_mask(order: np.ndarray, n_pruned: int) -> np.ndarray:
    """Channel mask that prunes the first ``n_pruned`` channels of ``order``.

    Returns
    -------
    ndarray of shape (C,), float32
        0.0 for pruned channels, 1.0 for kept ones.
    """
    order, n_pruned = pruning_mask_args(order, n_pruned)
    mask = np.ones(order.size, dtype=np.float32)
    mask[order[:n_pruned]] = 0.0
    return mask
