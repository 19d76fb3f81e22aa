"""Spectral Signatures (Tran, Li & Madry, 2018): poisoned samples leave a trace along one direction.

Per class, the learnt representations of the poisoned samples shift the class mean along the top
singular vector ``v`` of the centred representation matrix; the score ``|<v, x - mu>|`` is largest
for them. We remove the ``eps_multiplier * expected_poison_share`` highest-scoring share of every
class (defaults 1.5 x 0.05 = 7.5 %) and retrain on the rest. The scores come from the native core
(``native.spectral_scores``).

Scoring modes (``scoring=``):

``centred`` (default)
    ``|<v, x - mu>|`` with ``v`` the top right-singular vector of ``X - mu`` — the method as
    published.
``art-compatible``
    ``|<v, x>|`` with ``v`` from the *un-centred* ``X``, as IBM ART 1.20 does. For non-negative
    (post-ReLU) features the top singular vector of the raw matrix points along the class mean,
    not along the direction that separates the poisoned sub-population, so the scores mostly rank
    samples by their activation norm. Together with ART's defaults (0.33 x 1.5: ~49.5 % of every
    class removed) this may be why the paper saw Spectral Signatures fail. Kept to compare.
"""

from __future__ import annotations

import numpy as np

from backdoorlab import native
from backdoorlab.activations import extract
from backdoorlab.devices import native_device

from .base import DefenceContext, FilteringDefence
from .params import check_choice, check_fraction, check_layer, check_positive_int

__all__ = ["SpectralSignatures", "SCORINGS", "spectral_flags"]

SCORINGS = ("centred", "art-compatible")


def spectral_flags(scores: np.ndarray, offsets: np.ndarray, share: float) -> np.ndarray:
    """Flag the top ``floor(share * n_c)`` scores of every class (rows grouped by ``offsets``).

    Ties break by row order (stable), so the result is deterministic.
    """
    flags = np.zeros(scores.shape[0], dtype=bool)
    for c in range(offsets.size - 1):
        lo, hi = int(offsets[c]), int(offsets[c + 1])
        n_remove = int(np.floor(share * (hi - lo)))
        if n_remove == 0:
            continue
        ranked = np.argsort(-scores[lo:hi], kind="stable")[:n_remove]
        flags[lo + ranked] = True
    return flags


class SpectralSignatures(FilteringDefence):
    """Spectral Signatures: remove the top-scoring share of every class and retrain.

    Parameters
    ----------
    layer : str
        Role or module name of the representations (default ``"penultimate"``).
    expected_poison_share : float in (0, 1)
        Expected share of poisoned samples in a class (default 0.05; ART's 0.33 is the pitfall).
    eps_multiplier : float > 0
        Safety factor on the share removed (default 1.5, Tran et al.); the product must be < 1.
    scoring : {"centred", "art-compatible"}
        See the module docstring.
    retrain : {"scratch", "fine-tune", "none"}
        How the model is rebuilt on the kept samples.
    """

    name = "ss"

    def __init__(
        self,
        layer: str = "penultimate",
        expected_poison_share: float = 0.05,
        eps_multiplier: float = 1.5,
        scoring: str = "centred",
        retrain: str = "scratch",
        batch_size: int = 256,
    ) -> None:
        self.layer = check_layer(layer)
        self.expected_poison_share = check_fraction("expected_poison_share", expected_poison_share)
        if isinstance(eps_multiplier, bool) or not isinstance(eps_multiplier, (int, float)) or not eps_multiplier > 0:
            raise ValueError(f"eps_multiplier must be a positive number, got {eps_multiplier!r}")
        self.eps_multiplier = float(eps_multiplier)
        check_fraction("eps_multiplier * expected_poison_share", self.eps_multiplier * self.expected_poison_share)
        self.scoring = check_choice("scoring", scoring, SCORINGS)
        self.retrain = check_choice("retrain mode", retrain, ("scratch", "fine-tune", "none"))
        self.batch_size = check_positive_int("batch_size", batch_size)

    @property
    def removal_share(self) -> float:
        """Share of every class removed: ``eps_multiplier * expected_poison_share``."""
        return self.eps_multiplier * self.expected_poison_share

    def scores(self, ctx: DefenceContext, *, progress: bool = True) -> np.ndarray:
        """Outlier score of every row of ``ctx.train`` (in its order): float32, shape (n_train,)."""
        if len(ctx.train) == 0:
            raise ValueError("Spectral Signatures got an empty training set")
        acts = extract(ctx.model, ctx.train, self.layer, batch_size=self.batch_size, device=ctx.device,
                       progress=progress)
        labels = np.asarray(ctx.train.labels, dtype=np.int64)
        present, dense = np.unique(labels, return_inverse=True)
        counts = np.bincount(dense)
        if (counts < 2).any():
            bad = ", ".join(f"class {int(c)}: {int(n)}" for c, n in zip(present, counts) if n < 2)
            raise ValueError(f"too few samples for a spectral score (need >= 2 per class): {bad}")
        x_sorted, offsets, order = native.group_by_class(acts, dense.astype(np.int64), int(present.size))
        s = native.spectral_scores(x_sorted, np.asarray(offsets), center=self.scoring == "centred",
                                   device=native_device(ctx.device))
        out = np.empty(len(labels), dtype=np.float32)
        out[np.asarray(order)] = s
        return out

    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[np.ndarray, dict]:
        """Flag rows of ``ctx.train`` without retraining. Returns ``(flags (n_train,), report)``."""
        if len(ctx.train) == 0:
            raise ValueError("Spectral Signatures got an empty training set")
        scores = self.scores(ctx, progress=progress)
        labels = np.asarray(ctx.train.labels, dtype=np.int64)
        present, dense = np.unique(labels, return_inverse=True)
        order = np.argsort(dense, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(dense))]).astype(np.int64)
        flags = np.zeros(len(labels), dtype=bool)
        flags[order] = spectral_flags(scores[order], offsets, self.removal_share)
        is_poisoned = np.asarray(ctx.train.is_poisoned, dtype=bool)
        per_class = []
        for c in present:
            rows = labels == c
            per_class.append({"class": int(c), "n": int(rows.sum()), "removed": int(flags[rows].sum()),
                              "poisoned_in_class": int(is_poisoned[rows].sum()),
                              "removed_poisoned": int((flags & rows & is_poisoned).sum())})
        report = {"layer": self.layer, "scoring": self.scoring, "removal_share": self.removal_share,
                  "per_class": per_class}
        return flags, report
