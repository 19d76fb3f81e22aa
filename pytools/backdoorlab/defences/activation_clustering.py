"""Activation Clustering (Chen et al., 2018): find poisoned training samples by how they activate.

A backdoored model separates, inside the target class, the genuine samples from the triggered ones
it learnt to relabel: their last-hidden-layer activations form two groups. Per class we reduce the
activations (FastICA to 10 dimensions by default — its whitening, which yields FastICA's clusters: see
:func:`cluster_classes` — or PCA), split them with 2-means and decide which
cluster, if any, is poisoned. Everything numeric (grouping, ICA/PCA, k-means, silhouettes, per-class
means) runs in the native core (``backdoorlab.native``); this module only wires it and decides.

Analyses (``analysis=``), all of them computed and reported on every run so the choice can be
compared on the same clustering:

``smaller``
    ART 1.20 ``analyze_by_size``: flags the smaller cluster of *every* class. It is what the paper
    ran — consistent with its 31-33 % of clean GTSRB data removed — and is kept to reproduce it.
``relative-size``
    flags the smaller cluster only if it holds less than ``size_threshold`` of its class.
``distance``
    flags the smaller cluster if its mean activation (in the un-reduced penultimate space, where
    classes are comparable — ART compares the per-class ICA spaces, which are not) is closer to
    another class's mean than to the rest of its own class.
``silhouette-scores`` (default)
    flags the smaller cluster only if it is small (``< size_threshold``) AND the 2-means split is
    real (mean silhouette ``> silhouette_threshold``). Only the suspect cluster is flagged: ART
    1.20 leaves the large cluster's flags uninitialised, so a suspicious class is flagged almost
    whole. A clean class, whose 2-means split is arbitrary, scores a low silhouette and is left
    alone. The silhouettes are measured in a PCA projection of the class (``silhouette_space=
    "pca"``, default), not in the FastICA space the clusters were found in: FastICA whitens every
    component to unit variance, which erases the scale that tells a real gap from an arbitrary
    cut (on our toy data a poisoned class and clean classes both score ~0.1 there, but 0.65
    against <= 0.22 in the PCA projection). ``silhouette_space="reduced"`` is ART's choice.

``exclusionary=True`` adds exclusionary reclassification: a model is trained without every
flagged cluster, then classifies each flagged cluster; a cluster predicted mostly as its own label
(own / best-other >= ``reclass_threshold``) was legitimate and is kept.

Activations are streamed batch by batch into one float32 matrix by
:func:`backdoorlab.activations.extract` (``activations_out`` may name a ``.npy`` file to
memory-map it), never the images; flags are per row of the incoming training set, in its
order (the grouping permutation is undone), which the tests check.
"""

from __future__ import annotations


import numpy as np

from backdoorlab import native
from backdoorlab.activations import extract
from backdoorlab.devices import native_device
from backdoorlab.evaluate import predict

from .base import DefenceContext, DefenceResult, FilteringDefence, removal_report
from .params import check_choice, check_fraction, check_layer, check_positive_int
from .retrain import retrain

__all__ = ["ActivationClustering", "ANALYSES", "REDUCTIONS", "cluster_classes", "analyse_clusters"]

ANALYSES = ("silhouette-scores", "relative-size", "distance", "smaller")
REDUCTIONS = ("fastica", "pca")


def _group(acts: np.ndarray, labels: np.ndarray, min_class_size: int, class_names: list[str] | None):
    """Group rows by label with only the present classes; error on a class too small to cluster."""
    present, dense = np.unique(labels, return_inverse=True)
    counts = np.bincount(dense, minlength=present.size)
    small = [(int(c), int(n)) for c, n in zip(present, counts) if n < min_class_size]
    if small:
        named = ", ".join(
            f"class {c}" + (f" ({class_names[c]})" if class_names and c < len(class_names) else "") + f": {n} samples"
            for c, n in small
        )
        raise ValueError(f"too few samples to cluster (need >= {min_class_size} per class): {named}")
    x_sorted, offsets, order = native.group_by_class(
        np.ascontiguousarray(acts, dtype=np.float32), dense.astype(np.int64), int(present.size)
    )
    return present, x_sorted, np.asarray(offsets, dtype=np.int64), np.asarray(order, dtype=np.int64)


def cluster_classes(
    x_sorted: np.ndarray, offsets: np.ndarray, *, reduce: str, n_components: int, seed: int, device: str,
    n_init: int = 50, ica_rotation: bool = False, projected: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce each class and split it in two. Returns ``(reduced (n, n_components), clusters (n,))``.

    ``reduce="fastica"`` stops after FastICA's whitening unless ``ica_rotation``: FastICA's sources
    are the whitened rows times an orthogonal unmixing matrix (symmetric decorrelation keeps it
    orthogonal at every iteration, converged or not), which preserves every distance within a
    class. k-means (k-means++ seeding, Lloyd steps, inertia), the silhouettes and all four
    analyses read the reduced rows only through those distances, so the clusters are FastICA's —
    the tests check them equal — without its iterations, half to three quarters of the AC core's
    time on the GTSRB and YTAF shapes (with ART's ``max_iter=1000, tol=0.005`` most classes of
    near-Gaussian activations run all 1,000).
    ``ica_rotation=True`` computes the sources themselves. ``projected``: the classes' PCA
    projection to ``n_components`` when the caller has it (AC measures silhouettes there); the
    whitening then only rescales it instead of decomposing every class again.
    """
    try:
        if reduce == "fastica" and not ica_rotation and projected is not None:
            reduced = native.unit_variance(projected, offsets)
        elif reduce == "fastica" and not ica_rotation:
            reduced = native.whiten(x_sorted, offsets, n_components=n_components, device=device)
        elif reduce == "fastica":
            reduced = native.fastica(x_sorted, offsets, n_components=n_components, seed=seed, device=device)
        else:
            reduced = native.pca(x_sorted, offsets, n_components=n_components, device=device)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{reduce} of the per-class activations ({x_sorted.shape[1]} wide) failed in the native core: {exc}; "
            f"a smaller prereduce_dims may help"
        ) from exc
    reduced = np.ascontiguousarray(reduced, dtype=np.float32)
    km = native.kmeans(reduced, offsets, k=2, n_init=n_init, seed=seed, device=device)
    return reduced, np.asarray(km.labels, dtype=np.int64)


def analyse_clusters(
    x_sorted: np.ndarray,
    reduced: np.ndarray,
    offsets: np.ndarray,
    clusters: np.ndarray,
    *,
    size_threshold: float,
    silhouette_threshold: float,
    device: str,
    silhouette_space: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Every analysis on one clustering.

    Returns
    -------
    flags : dict analysis -> ndarray of bool, shape (n,)
        Rows (in grouped order) each analysis flags; only ever the suspect (smaller) cluster.
    per_class : list of dict
        Per class: cluster sizes, suspect cluster and its share, mean silhouette, distances and
        the verdict of each analysis.

    ``silhouette_space`` (rows grouped like ``reduced``) is where silhouettes are measured;
    default ``reduced``.
    """
    n_classes = offsets.size - 1
    n = x_sorted.shape[0]
    space = reduced if silhouette_space is None else silhouette_space
    silhouettes = np.asarray(native.silhouette_samples(space, offsets, clusters.astype(np.int32), device=device))
    class_of_row = np.repeat(np.arange(n_classes), np.diff(offsets))
    # per class and per (class, cluster) means of the raw activations, streamed by the native core
    class_means = np.asarray(native.activation_stats(x_sorted, class_of_row, n_classes)["mean"], dtype=np.float64)
    cluster_means = np.asarray(
        native.activation_stats(x_sorted, class_of_row * 2 + clusters, 2 * n_classes)["mean"], dtype=np.float64
    ).reshape(n_classes, 2, -1)

    flags = {name: np.zeros(n, dtype=bool) for name in ANALYSES}
    per_class = []
    for c in range(n_classes):
        lo, hi = int(offsets[c]), int(offsets[c + 1])
        sizes = np.bincount(clusters[lo:hi], minlength=2)
        suspect = int(np.argmin(sizes))  # ties -> cluster 0, as ART
        share = float(sizes[suspect] / sizes.sum())
        mean_sil = float(silhouettes[lo:hi].mean())
        # distance: the suspect cluster's centre against its own class's other cluster and every other class
        centre = cluster_means[c, suspect]
        own = float(np.linalg.norm(centre - cluster_means[c, 1 - suspect])) if sizes[1 - suspect] else np.inf
        others = [float(np.linalg.norm(centre - class_means[j])) for j in range(n_classes) if j != c]
        nearest_other = min(others) if others else np.inf
        verdict = {
            "smaller": True,
            "relative-size": share < size_threshold,
            "distance": nearest_other < own,
            "silhouette-scores": share < size_threshold and mean_sil > silhouette_threshold,
        }
        in_suspect = np.zeros(hi - lo, dtype=bool)
        in_suspect[clusters[lo:hi] == suspect] = True
        for name, flagged in verdict.items():
            if flagged:
                flags[name][lo:hi] = in_suspect
        per_class.append(
            {
                "cluster_sizes": sizes.tolist(),
                "suspect_cluster": suspect,
                "suspect_share": share,
                "mean_silhouette": mean_sil,
                "distance_own": own,
                "distance_nearest_other": nearest_other,
                "flagged_by": [name for name, v in verdict.items() if v],
            }
        )
    return flags, per_class


class ActivationClustering(FilteringDefence):
    """Activation Clustering with a choice of analysis; retrains on the kept samples.

    Parameters
    ----------
    layer : str
        Role or module name whose outputs are clustered (default ``"penultimate"``).
    reduce : {"fastica", "pca"}
        Dimensionality reduction per class (default FastICA, as Chen et al. and ART).
    n_components : int
        Dimensions kept (default 10).
    prereduce_dims : int or None
        When the layer is wider, project all rows onto their top ``prereduce_dims`` principal
        components first (default 256; None = never). See :meth:`_prereduce`.
    n_init : int
        k-means restarts per class (default 50; ART/scikit-learn use 10). Two-cluster k-means on a
        few hundred 10-d points is cheap, and on our toy data 10 restarts repeatedly missed the
        lowest-inertia split, which was the poisoned one.
    analysis : {"silhouette-scores", "relative-size", "distance", "smaller"}
        Which analysis decides the flags (default ``"silhouette-scores"``); ``"smaller"`` reproduces
        the paper/ART. All four are reported.
    size_threshold : float in (0, 1)
        Largest share of its class a poisoned cluster may hold (default 0.35, ART's).
    silhouette_threshold : float in (0, 1)
        Smallest mean silhouette of a real split (default 0.3).
    silhouette_space : {"pca", "reduced"}
        Where silhouettes are measured (see the module docstring; default ``"pca"``).
    exclusionary : bool
        Run exclusionary reclassification on the flagged clusters (default False).
    reclass_threshold : float
        Keep a flagged cluster if (predicted as own label) / (predicted as best other) >= this.
    retrain : {"scratch", "fine-tune", "none"}
        How the model is rebuilt on the kept samples (default ``"scratch"``, as the paper).
    batch_size : int
        Batch size of activation extraction.
    activations_out : str or None
        ``.npy`` file to memory-map the activation matrix to (for data sets whose activations do
        not fit); see :func:`backdoorlab.activations.extract`.
    """

    name = "ac"

    def __init__(
        self,
        layer: str = "penultimate",
        reduce: str = "fastica",
        n_components: int = 10,
        n_init: int = 50,
        prereduce_dims: int | None = 256,
        analysis: str = "silhouette-scores",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.3,
        silhouette_space: str = "pca",
        exclusionary: bool = False,
        reclass_threshold: float = 1.0,
        retrain: str = "scratch",
        batch_size: int = 256,
        activations_out: str | None = None,
    ) -> None:
        self.layer = check_layer(layer)
        self.reduce = check_choice("reduction", str(reduce).lower(), REDUCTIONS)
        self.n_components = check_positive_int("n_components", n_components)
        self.n_init = check_positive_int("n_init", n_init)
        self.prereduce_dims = None if prereduce_dims is None else check_positive_int("prereduce_dims", prereduce_dims)
        if self.prereduce_dims is not None and self.prereduce_dims < self.n_components:
            raise ValueError(f"prereduce_dims={prereduce_dims} must be >= n_components={n_components}")
        self.analysis = check_choice("analysis", analysis, ANALYSES)
        self.size_threshold = check_fraction("size_threshold", size_threshold)
        self.silhouette_threshold = check_fraction("silhouette_threshold", silhouette_threshold)
        self.silhouette_space = check_choice("silhouette_space", silhouette_space, ("pca", "reduced"))
        self.exclusionary = bool(exclusionary)
        if not (isinstance(reclass_threshold, (int, float)) and reclass_threshold > 0):
            raise ValueError(f"reclass_threshold must be a positive number, got {reclass_threshold!r}")
        self.reclass_threshold = float(reclass_threshold)
        self.retrain = check_choice("retrain mode", retrain, ("scratch", "fine-tune", "none"))
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.activations_out = activations_out

    # ------------------------------------------------------------------ detection only
    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[np.ndarray, dict]:
        """Flag rows of ``ctx.train`` without retraining. Returns ``(flags (n_train,), report)``."""
        train = ctx.train
        n = len(train)
        if n == 0:
            raise ValueError("Activation Clustering got an empty training set")
        acts = extract(ctx.model, train, self.layer, batch_size=self.batch_size, device=ctx.device,
                       out=self.activations_out, progress=progress)
        if self.n_components > acts.shape[1]:
            raise ValueError(
                f"n_components={self.n_components} exceeds the width {acts.shape[1]} of layer {self.layer!r}"
            )
        # Units that never vary over the training set (dead ReLUs) carry no information and make
        # the per-class whitening of ICA/PCA rank-deficient; drop them (the same columns for all classes).
        live = acts.max(axis=0) > acts.min(axis=0)
        n_dead = int((~live).sum())
        if n_dead:
            acts = np.ascontiguousarray(acts[:, live])
        if self.n_components > acts.shape[1]:
            raise ValueError(
                f"n_components={self.n_components} exceeds the {acts.shape[1]} non-constant units of layer "
                f"{self.layer!r} ({n_dead} are constant over the training set)"
            )
        prereduced = None
        if self.prereduce_dims is not None and acts.shape[1] > self.prereduce_dims:
            acts, prereduced = self._prereduce(acts, native_device(ctx.device))
        labels = np.asarray(train.labels, dtype=np.int64)
        class_names = list(getattr(train, "class_names", []) or [])
        # 2-means needs two points per cluster and ICA/PCA more rows than components
        min_size = max(self.n_components + 1, 4)
        present, x_sorted, offsets, order = _group(acts, labels, min_size, class_names)
        dev = native_device(ctx.device)
        sil_space = None  # silhouettes in the classes' PCA projection, computed once: it also gives the whitening
        if self.silhouette_space == "pca" and self.reduce != "pca":
            sil_space = np.ascontiguousarray(
                native.pca(x_sorted, offsets, n_components=self.n_components, device=dev), dtype=np.float32
            )
        reduced, clusters = cluster_classes(
            x_sorted, offsets, reduce=self.reduce, n_components=self.n_components, seed=ctx.seed, device=dev,
            n_init=self.n_init, projected=sil_space,
        )
        if not np.isfinite(reduced).all():
            bad = sorted({int(present[c]) for c in range(offsets.size - 1)
                          if not np.isfinite(reduced[offsets[c]:offsets[c + 1]]).all()})
            raise ValueError(
                f"{self.reduce} to {self.n_components} dimensions gave NaN/inf for classes {bad}: their "
                f"activations have fewer than {self.n_components} independent directions; lower n_components"
            )
        flags_sorted, per_class = analyse_clusters(
            x_sorted,
            reduced,
            offsets,
            clusters,
            size_threshold=self.size_threshold,
            silhouette_threshold=self.silhouette_threshold,
            device=dev,
            silhouette_space=sil_space,
        )
        del x_sorted, reduced, sil_space
        is_poisoned = np.asarray(train.is_poisoned, dtype=bool)
        flags_by_analysis = {}
        for name, fs in flags_sorted.items():
            f = np.zeros(n, dtype=bool)
            f[order] = fs  # undo the grouping: flags line up with the rows of ctx.train
            flags_by_analysis[name] = f
        cluster_of_row = np.empty(n, dtype=np.int64)
        cluster_of_row[order] = clusters
        for c, entry in zip(present, per_class):
            entry["class"] = int(c)
            rows = labels == c
            entry["poisoned_in_class"] = int(is_poisoned[rows].sum())
            entry["poisoned_in_suspect"] = int(
                (is_poisoned & rows & (cluster_of_row == entry["suspect_cluster"])).sum()
            )
        report = {
            "layer": self.layer,
            "reduce": self.reduce,
            # FastICA's unmixing rotation changes no distance, so no cluster: skipped (cluster_classes)
            "ica_rotation": False if self.reduce == "fastica" else None,
            "n_components": self.n_components,
            "analysis": self.analysis,
            "silhouette_space": self.silhouette_space,
            "activation_width": int(acts.shape[1]) + n_dead,
            "constant_units_dropped": n_dead,
            "prereduced": prereduced,
            "analyses": {name: removal_report(f, is_poisoned) for name, f in flags_by_analysis.items()},
            "per_class": per_class,
        }
        self._cluster_of_row = cluster_of_row  # for exclusionary reclassification
        return flags_by_analysis[self.analysis], report

    def _prereduce(self, acts: np.ndarray, device: str) -> tuple[np.ndarray, dict]:
        """One global PCA of all rows to ``prereduce_dims`` dimensions before the per-class work.

        Per class, ICA/PCA only keep the top ``n_components`` directions, which live in the
        high-variance subspace a global PCA keeps; projecting first makes every per-class
        eigenproblem ``prereduce_dims``-sized instead of ``width``-sized (4096 for VGG-Face) and
        avoids the rank-deficient ``width x width`` covariance of a class with fewer rows than
        units. The share of variance kept is reported.
        """
        n = acts.shape[0]
        # A PCA of n rows has at most n components: small training sets get fewer dimensions.
        dims = min(self.prereduce_dims, n)
        projected = np.ascontiguousarray(
            native.pca(acts, np.array([0, n], dtype=np.int64), n_components=dims, device=device),
            dtype=np.float32,
        )
        total = float(np.asarray(native.activation_stats(acts)["std"], dtype=np.float64).__pow__(2).sum())
        kept = float(np.asarray(native.activation_stats(projected)["std"], dtype=np.float64).__pow__(2).sum())
        return projected, {"dims": dims, "from": int(acts.shape[1]),
                           "variance_kept": kept / total if total > 0 else 1.0}

    # ------------------------------------------------------------------ full step
    def run(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[DefenceContext, DefenceResult]:
        flags, report = self.detect(ctx, progress=progress)
        model = kept = None
        if self.exclusionary and flags.any():
            flags, model, kept, report["exclusionary"] = self._reclassify(ctx, flags, progress=progress)
        return self._remove_and_retrain(ctx, flags, report, progress=progress, model=model, kept=kept)

    def _reclassify(self, ctx: DefenceContext, flags: np.ndarray, *, progress: bool):
        """Exclusionary reclassification: keep flagged clusters a model trained without them agrees with."""
        labels = np.asarray(ctx.train.labels, dtype=np.int64)
        model, kept = retrain(ctx, ~flags, mode="scratch" if self.retrain == "none" else self.retrain, progress=progress)
        preds = predict(model, ctx.train.subset(np.flatnonzero(flags)), device=ctx.device)
        pred_of_row = np.full(len(labels), -1, dtype=np.int64)
        pred_of_row[flags] = preds
        decisions = []
        reinstated = np.zeros_like(flags)
        for c in np.unique(labels[flags]):
            rows = flags & (labels == c)
            counts = np.bincount(pred_of_row[rows], minlength=int(max(labels.max(), preds.max())) + 1)
            own = int(counts[c])
            counts[c] = 0
            best_other = int(counts.argmax())
            ratio = own / max(int(counts[best_other]), 1)
            keep = ratio >= self.reclass_threshold
            if keep:
                reinstated |= rows
            decisions.append(
                {"class": int(c), "n": int(rows.sum()), "predicted_own": own, "best_other_class": best_other,
                 "predicted_best_other": int(counts[best_other]), "ratio": ratio, "kept": bool(keep)}
            )
        new_flags = flags & ~reinstated
        if reinstated.any():
            model, kept = retrain(ctx, ~new_flags, mode=self.retrain, progress=progress)
        elif self.retrain == "none":
            model, kept = ctx.model, kept
        return new_flags, model, kept, {"threshold": self.reclass_threshold, "clusters": decisions}
