"""What every defence receives, returns and reports.

A defence is one step of a pipeline: it takes a :class:`DefenceContext` (the current model, the
current training set, the trusted clean set, the test sets and the training recipe) and returns a
new context plus a :class:`DefenceResult`. Data-filtering defences (AC, SS, DP) set
``result.flags`` — one boolean per row of the *incoming* training set, ``True`` = removed — and
retrain on what they keep; the model-repair defence (FP) sets ``result.pruned_channels`` and
returns a repaired model on the same training set.

The removal columns of the paper (Milakovic & Mayer, DBSec 2022, Tables 4 and 7: poisoned
samples present, removed poisoned, removed clean, with percentages) are computed here once, by
:func:`removal_report`, so every defence reports them the same way. Parameter checks live in
:mod:`.params`, retraining in :mod:`.retrain`, activations in :mod:`backdoorlab.activations`,
predictions in :mod:`backdoorlab.evaluate`, devices in :mod:`backdoorlab.devices`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from torch import nn

from .retrain import retrain

__all__ = [
    "DefenceContext",
    "DefenceResult",
    "Removal",
    "Pruning",
    "Defence",
    "FilteringDefence",
    "removal_report",
    "class_mix_weights",
]


@dataclass
class DefenceContext:
    """The state a defence step receives and returns (a new one; the input is never mutated).

    Attributes
    ----------
    model : torch.nn.Module
        The current model; it answers ``layer(role_or_name)`` and ``layer_name(role_or_name)``.
    train : H5Split
        The current training set (rows may already be a subset of the HDF5 ``train`` split).
    clean : H5Split
        The trusted clean set (tuning set of Fine-Pruning, evaluation set of Data Provenance).
    test, test_triggered : H5Split
        Clean test images, and triggered copies of the source-class test images.
    target_class : int
        The attacker's target label (attack success = share of ``test_triggered`` predicted as it).
    train_config : TrainConfig
        The recipe used to retrain after filtering (and the default fine-tuning schedule).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    seed : int
        Seed of every random choice of the step (same seed, same result).
    """

    model: nn.Module
    train: Any
    clean: Any
    test: Any
    test_triggered: Any
    target_class: int
    train_config: Any
    device: str = "auto"
    seed: int = 0

    def replace(self, **changes: Any) -> "DefenceContext":
        """A copy with ``changes`` applied (the dataclass fields named in ``changes``)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Removal:
    """The paper's removal columns of one data-filtering step (Tables 4 and 7).

    Percentages are of the poisoned (clean) rows present, 0.0 when there are none.
    """

    n_samples: int
    poisoned_present: int
    removed_poisoned: int
    removed_poisoned_pct: float
    removed_clean: int
    removed_clean_pct: float
    removed_total: int
    kept_total: int

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "Removal | None":
        """The columns as a report holds them (:func:`removal_report`), or None when it has none."""
        if report.get("removed_poisoned") is None:
            return None
        return cls(**{f.name: report[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Pruning:
    """What a model-repair step pruned (Fine-Pruning, Neural Cleanse's pruning repair).

    ``threshold`` is the clean-accuracy drop the search allowed (None where the defence has none).
    """

    layer: str
    n_channels: int
    neurons_pruned: int
    threshold: float | None = None

    @property
    def label(self) -> str:
        """``"pruned/channels"``, the paper's "neurons pruned" column."""
        return f"{self.neurons_pruned}/{self.n_channels}"

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "Pruning | None":
        """The pruning a report records (``layer``, ``n_channels``, ``neurons_pruned``, ``threshold``)."""
        if report.get("neurons_pruned") is None:
            return None
        threshold = report.get("threshold")
        return cls(layer=str(report.get("layer")), n_channels=int(report["n_channels"]),
                   neurons_pruned=int(report["neurons_pruned"]),
                   threshold=None if threshold is None else float(threshold))


@dataclass
class DefenceResult:
    """What one defence step found and did.

    Attributes
    ----------
    name : str
        Registry name of the defence (``"ac"``, ``"ss"``, ``"dp"``, ``"fp"``).
    flags : ndarray of bool, shape (n_train,) or None
        Data filtering: ``True`` for each row of the incoming ``ctx.train`` that was removed.
    pruned_channels : ndarray of int64, shape (n_pruned,) or None
        Model repair: indices of the channels masked in ``pruning.layer``.
    report : dict
        Everything the step found, JSON-ready (the analysis details and, in the same keys as the
        typed fields below, the paper's columns): what ``defend --report`` and the cells record.
    removal : Removal or None
        The paper's removal columns of a data-filtering step.
    pruning : Pruning or None
        The paper's pruning columns of a model-repair step.

    ``removal`` and ``pruning`` are read from ``report`` when the defence does not pass them, so
    the typed view and the JSON always agree.
    """

    name: str
    flags: np.ndarray | None = None
    pruned_channels: np.ndarray | None = None
    report: dict = field(default_factory=dict)
    removal: Removal | None = None
    pruning: Pruning | None = None

    def __post_init__(self) -> None:
        if self.removal is None:
            self.removal = Removal.from_report(self.report)
        if self.pruning is None:
            self.pruning = Pruning.from_report(self.report)


class Defence:
    """Base class of the defences: configure in ``__init__``, act in :meth:`run`.

    Subclasses validate every parameter in their constructor (so a bad pipeline spec fails before
    any training starts) and implement :meth:`run`.
    """

    name: str = "defence"

    def run(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[DefenceContext, DefenceResult]:
        raise NotImplementedError

    def config(self) -> dict:
        """The parameters of this defence (JSON-ready), recorded in every report."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class FilteringDefence(Defence):
    """A data-filtering defence (AC, SS, DP): :meth:`detect` flags training rows, :meth:`run`
    removes them, retrains (``self.retrain``: ``"scratch"``, ``"fine-tune"`` or ``"none"``) and
    adds the paper's removal columns to the report."""

    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[np.ndarray, dict]:
        """Flag rows of ``ctx.train`` without retraining. Returns ``(flags, report)``."""
        raise NotImplementedError

    def run(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[DefenceContext, DefenceResult]:
        flags, report = self.detect(ctx, progress=progress)
        return self._remove_and_retrain(ctx, flags, report, progress=progress)

    def _remove_and_retrain(self, ctx: DefenceContext, flags: np.ndarray, report: dict, *, progress: bool,
                            model=None, kept=None) -> tuple[DefenceContext, DefenceResult]:
        """Retrain on the unflagged rows (unless ``model``/``kept`` are already given) and report."""
        if model is None:
            model, kept = retrain(ctx, ~flags, mode=self.retrain, progress=progress)
        report.update(removal_report(flags, np.asarray(ctx.train.is_poisoned, dtype=bool)))
        report["retrain"] = self.retrain
        report["config"] = self.config()
        return ctx.replace(model=model, train=kept), DefenceResult(self.name, flags=flags, report=report)


# --------------------------------------------------------------------------- reports


def removal_report(flags: np.ndarray, is_poisoned: np.ndarray) -> dict:
    """The paper's removal columns for one data-filtering step.

    Parameters
    ----------
    flags : ndarray of bool, shape (n,)
        ``True`` = the row was removed.
    is_poisoned : ndarray of bool, shape (n,)
        Ground truth of the same rows (known in the HDF5 file, never used by a defence to decide).

    Returns
    -------
    dict
        ``n_samples``, ``poisoned_present``, ``removed_poisoned``, ``removed_poisoned_pct`` (of the
        poisoned present), ``removed_clean``, ``removed_clean_pct`` (of the clean present),
        ``removed_total``, ``kept_total``. Percentages are 0.0 when the denominator is 0.
    """
    flags = np.asarray(flags)
    is_poisoned = np.asarray(is_poisoned)
    if flags.dtype != np.bool_ or is_poisoned.dtype != np.bool_:
        raise TypeError(f"flags and is_poisoned must be bool arrays, got {flags.dtype} and {is_poisoned.dtype}")
    if flags.shape != is_poisoned.shape or flags.ndim != 1:
        raise ValueError(f"flags {flags.shape} and is_poisoned {is_poisoned.shape} must be equal 1-D shapes")
    n = int(flags.size)
    n_poisoned = int(is_poisoned.sum())
    n_clean = n - n_poisoned
    removed_poisoned = int((flags & is_poisoned).sum())
    removed_clean = int((flags & ~is_poisoned).sum())
    return {
        "n_samples": n,
        "poisoned_present": n_poisoned,
        "removed_poisoned": removed_poisoned,
        "removed_poisoned_pct": 100.0 * removed_poisoned / n_poisoned if n_poisoned else 0.0,
        "removed_clean": removed_clean,
        "removed_clean_pct": 100.0 * removed_clean / n_clean if n_clean else 0.0,
        "removed_total": removed_poisoned + removed_clean,
        "kept_total": n - removed_poisoned - removed_clean,
    }


def class_mix_weights(reference_labels, labels, n_classes: int) -> np.ndarray:
    """Per-row weights that give ``labels`` the class mix of ``reference_labels``.

    Row ``i`` of class ``c`` gets ``share_ref(c) / share(c)``: a weighted mean over the rows then
    estimates the same mean under the reference class mix. Our clean splits are held out by whole
    tracks, one or two per class (synth-signs, GTSRB), so their class mix is nearly flat while the
    training set (and a test set drawn like it) follows GTSRB's skewed class frequencies; a threshold
    set on the clean split (STRIP) or a fine-tune on it (Neural Cleanse's unlearning) inherits the
    flat mix unless it is reweighted. A defender's reference is the training labels, which include
    an attack's relabelled rows (all-to-one poisoning inflates the target's share): measured in
    results/nc-strip-full, neither reweighting helped, so both are options, off by default. A class
    of ``labels`` absent from the reference gets weight 0.

    Parameters
    ----------
    reference_labels : array-like of int, shape (m,)
        Labels whose class mix is wanted (the training split's, as the model saw them).
    labels : array-like of int, shape (n,)
        Labels of the rows to weight.
    n_classes : int

    Returns
    -------
    ndarray of float64, shape (n,), mean 1 under the reference mix
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    ref, lab = np.asarray(reference_labels), np.asarray(labels)
    for name, arr in (("reference_labels", ref), ("labels", lab)):
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be a non-empty 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} must lie in [0, {n_classes}), got min {arr.min()}, max {arr.max()}")
    ref_share = np.bincount(ref, minlength=n_classes) / ref.size
    share = np.bincount(lab, minlength=n_classes) / lab.size
    return ref_share[lab] / share[lab]
