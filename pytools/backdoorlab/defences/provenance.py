"""Data Provenance (Baracaldo et al., 2017/2018): judge training data by where it came from.

Training rows carry a ``provenance`` id (GTSRB track, YTAF video, synthetic batch — the HDF5
``provenance`` column). For each group we compare a model trained *with* it and one trained
*without* it on the trusted clean set, and flag the groups whose inclusion lowers trusted accuracy
by more than ``threshold``. Flagged groups are removed — by row index — and the model is retrained.

Making it affordable. ART retrains the full classifier twice per group on the whole training set;
with hundreds of groups that is hundreds of trainings. We instead:

1. split the trusted clean set (seeded) into a *tuning* part ``R`` and a *holdout* part ``E``;
2. build one shared base model ``B`` (``base="scratch"``: fresh weights trained on ``R`` with the
   training recipe for at least ``base_steps`` optimizer steps — it has never seen a trigger, so a poisoned group can hurt it;
   ``base="current"``: a copy of the incoming model, cheaper but it may already have learnt the
   backdoor, which hides the harm of a poisoned group);
3. ``without`` = ``B`` fine-tuned on ``R`` for ``epochs`` (shared by all groups);
   ``with_g`` = ``B`` fine-tuned on ``g + R`` for the same ``epochs`` (default 4), same seed;
4. ``delta_g = acc(without, E) - acc(with_g, E)``; flag ``g`` if ``delta_g > threshold`` and
   (``rule="robust"``, the default) ``delta_g`` is also an outlier among all groups' deltas:
   ``delta_g > median + z * max(1.4826 * MAD, threshold / 2)``. Any group of one class nudges the
   short fine-tune towards that class and costs holdout accuracy; with a small trusted set that
   cost alone passes an absolute threshold for most clean groups (seen: 86.6 % of the clean rows
   removed in the quick study). The median is that common cost; a poisoned group, which teaches
   wrong labels, stands out above it. ``rule="absolute"`` is the threshold alone.

``R`` is replayed in both arms so a group holding one class only does not make the model forget
the others; both arms see the same schedule, so the difference is the effect of the group. The
cost is one short fine-tune on ``|g| + |R|`` rows per group.

Rows are selected by *index* (``np.flatnonzero`` on the provenance ids). ART's
``ProvenanceDefense.filter_input`` selects rows with ``np.isin`` on pixel *values*, which on 8-bit
images drops nearly every row; a regression test guards this.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from backdoorlab.data import to_float_chw
from backdoorlab.devices import resolve_device
from backdoorlab.evaluate import predict
from backdoorlab.train import epoch_order, make_optimizer, train_model

from .base import DefenceContext, FilteringDefence
from .params import check_choice, check_fraction, check_positive_int
from .retrain import reinitialised_copy

__all__ = ["DataProvenance", "group_rows"]


def group_rows(provenance: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices (int64, ascending) of each provenance id."""
    provenance = np.asarray(provenance)
    if provenance.ndim != 1:
        raise ValueError(f"provenance must be 1-D, got shape {provenance.shape}")
    if not np.issubdtype(provenance.dtype, np.integer):
        raise TypeError(f"provenance ids must be integers, got dtype {provenance.dtype}")
    ids, inverse = np.unique(provenance, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=ids.size))])
    return {int(g): order[bounds[i] : bounds[i + 1]].astype(np.int64) for i, g in enumerate(ids)}


def _accuracy(model, dataset, device: str) -> float:
    preds = predict(model, dataset, device=device)
    return float((preds == np.asarray(dataset.labels)).mean())


class DataProvenance(FilteringDefence):
    """Data Provenance with a shared base and short with/without fine-tunes per group.

    Parameters
    ----------
    threshold : float in (0, 1)
        Flag a group whose inclusion lowers holdout accuracy by more than this (absolute; default
        0.05 — on a holdout of a few dozen images one image is already ~0.03).
    epochs : int
        Fine-tuning epochs of each with/without arm (default 4). The arms must be long enough for a
        group to leave a mark: on the toy data 2 epochs (4 optimizer steps) from a converged base
        showed no effect of any group, 4 epochs separated every poisoned group (accuracy -0.23 to
        -0.33) from every clean one (0.00).
    lr : float or None
        Fine-tuning learning rate (default: the training recipe's).
    base : {"scratch", "current"}
        Starting point shared by all arms (see the module docstring).
    rule : {"robust", "absolute"}
        ``"robust"`` (default) also asks a flagged group's delta to be an outlier among the groups
        (``median + z * max(1.4826 * MAD, threshold / 2)``); ``"absolute"`` uses the threshold alone.
    z : float
        Outlier distance of the robust rule, in robust standard deviations (default 3.5).
    tune_share : float in (0, 1)
        Share of the trusted clean set used for training (the rest is the holdout; default 0.5).
    base_steps : int
        Least optimizer steps of the ``"scratch"`` base (default 300; the recipe's epochs are raised
        until the small tuning set gets them).
    retrain : {"scratch", "fine-tune", "none"}
        How the model is rebuilt on the kept samples.
    """

    name = "dp"

    def __init__(
        self,
        threshold: float = 0.05,
        epochs: int = 4,
        lr: float | None = None,
        base: str = "scratch",
        rule: str = "robust",
        z: float = 3.5,
        tune_share: float = 0.5,
        base_steps: int = 300,
        retrain: str = "scratch",
    ) -> None:
        self.threshold = check_fraction("threshold", threshold)
        self.epochs = check_positive_int("epochs", epochs)
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number or None, got {lr!r}")
        self.lr = None if lr is None else float(lr)
        self.base = check_choice("base", base, ("scratch", "current"))
        self.rule = check_choice("rule", rule, ("robust", "absolute"))
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not np.isfinite(z) or z <= 0:
            raise ValueError(f"z must be a positive finite number, got {z!r}")
        self.z = float(z)
        self.tune_share = check_fraction("tune_share", tune_share)
        self.base_steps = check_positive_int("base_steps", base_steps)
        self.retrain = check_choice("retrain mode", retrain, ("scratch", "fine-tune", "none"))

    def _fine_tune(self, model, images: torch.Tensor, labels: torch.Tensor, ctx: DefenceContext):
        """A short fine-tune of ``model`` on uint8 ``images`` (n, H, W, 3) with the recipe's optimizer.

        The two arms of a group mix rows of two splits (the group's training rows and the trusted
        tuning rows), which no single ``H5Split`` holds; the rows are small and already in memory,
        so a plain loop over index tensors does it. Shuffling follows ``train.epoch_order`` (seeded),
        dropout the seeded torch RNG: the arms differ only by their data.
        """
        dev = resolve_device(ctx.device)
        config = ctx.train_config.replace(lr=self.lr) if self.lr is not None else ctx.train_config
        model.to(dev).train()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        loss_fn = torch.nn.CrossEntropyLoss()
        images, labels = images.to(dev), labels.to(dev)
        n = labels.numel()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            for epoch in range(self.epochs):
                order = epoch_order(n, ctx.seed, epoch).to(dev)
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    loss = loss_fn(model(to_float_chw(images[idx])), labels[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return model.eval()

    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[np.ndarray, dict]:
        """Flag rows of ``ctx.train`` (whole groups) without retraining. Returns ``(flags, report)``."""
        train, clean = ctx.train, ctx.clean
        if len(train) == 0:
            raise ValueError("Data Provenance got an empty training set")
        if len(clean) < 4:
            raise ValueError(f"Data Provenance needs a trusted clean set of >= 4 samples, got {len(clean)}")
        groups = group_rows(np.asarray(train.provenance))
        perm = np.random.default_rng(ctx.seed).permutation(len(clean))
        n_tune = min(max(1, int(round(self.tune_share * len(clean)))), len(clean) - 1)
        tune, holdout = clean.subset(np.sort(perm[:n_tune])), clean.subset(np.sort(perm[n_tune:]))

        if self.base == "scratch":
            # The tuning set is small: a recipe made for the full training set gives it only a few
            # dozen optimizer steps, which leaves the base undertrained and every arm's accuracy
            # swinging. Train it for at least ``base_steps`` steps.
            steps_per_epoch = -(-len(tune) // ctx.train_config.batch_size)
            epochs = max(ctx.train_config.epochs, min(500, -(-self.base_steps // steps_per_epoch)))
            base = train_model(reinitialised_copy(ctx.model, ctx.seed), tune,
                               ctx.train_config.replace(epochs=epochs), seed=ctx.seed, device=ctx.device,
                               progress=progress)
        else:
            base = ctx.model
        tune_images = tune.load_images()
        tune_labels = torch.as_tensor(tune.labels, dtype=torch.int64)
        without = self._fine_tune(copy.deepcopy(base), tune_images, tune_labels, ctx)
        acc_without = _accuracy(without, holdout, ctx.device)
        del without

        per_group = []
        for g, rows in tqdm(groups.items(), desc="provenance groups", disable=not progress, leave=False):
            group = train.subset(rows)  # by row index, never by pixel value
            images = torch.cat([group.load_images(), tune_images])
            labels = torch.cat([torch.as_tensor(group.labels, dtype=torch.int64), tune_labels])
            with_g = self._fine_tune(copy.deepcopy(base), images, labels, ctx)
            acc_with = _accuracy(with_g, holdout, ctx.device)
            per_group.append({"group": g, "n": int(rows.size), "accuracy_with": acc_with,
                              "delta": acc_without - acc_with})
        cutoff = self._cutoff(np.array([e["delta"] for e in per_group], dtype=np.float64))
        flagged_ids = []
        for entry in per_group:
            entry["flagged"] = bool(entry["delta"] > cutoff)
            if entry["flagged"]:
                flagged_ids.append(entry["group"])
        flags = np.zeros(len(train), dtype=bool)
        for g in flagged_ids:
            flags[groups[g]] = True  # by row index, never by value
        is_poisoned = np.asarray(train.is_poisoned, dtype=bool)
        for entry in per_group:
            entry["poisoned"] = int(is_poisoned[groups[entry["group"]]].sum())
        report = {"base": self.base, "rule": self.rule, "cutoff": cutoff,
                  "accuracy_without": acc_without, "n_groups": len(groups),
                  "flagged_groups": [int(g) for g in flagged_ids], "n_tune": int(n_tune),
                  "n_holdout": int(len(clean) - n_tune), "per_group": per_group}
        return flags, report

    def _cutoff(self, deltas: np.ndarray) -> float:
        """The delta a group must exceed to be flagged (see ``rule``)."""
        if self.rule == "absolute" or deltas.size == 0:
            return self.threshold
        median = float(np.median(deltas))
        spread = max(1.4826 * float(np.median(np.abs(deltas - median))), self.threshold / 2)
        return max(self.threshold, median + self.z * spread)
