"""STRIP (Gao et al., ACSAC 2019): triggered inputs stay confidently classified under strong perturbation.

Superimposing a clean image on a clean input scrambles the prediction (high entropy of the softmax);
superimposed on a triggered input, the trigger survives and keeps pulling the prediction to the target
class (low entropy). For every input we blend it with ``n_overlays`` images drawn from the trusted clean
split, average the Shannon entropy (nats) of the model's softmax over the blends, and reject inputs
whose entropy falls *below* a threshold. The threshold is the ``frr`` quantile of the same score on the
clean split itself, so about ``frr`` of clean inputs are rejected by construction (the paper fits a
normal distribution to the clean entropies; the empirical quantile needs no such assumption).

``class_weight="train"`` takes that quantile under the *training* split's class mix (each clean row
weighted by its class's share of the training split over its share of the clean split,
:func:`~backdoorlab.defences.base.class_mix_weights`): the clean entropy depends on the class, and our
clean splits are held out by whole tracks, one or two per class, so their class mix is flat while
run-time inputs follow the training mix. It is off by default (``"none"``, the plain quantile): on a
fully trained synth-signs model (results/nc-strip-full) the plain 5 % threshold rejected 7.6 % of the
clean test inputs and the weighted one 15.8 % — the training labels a defender holds include the
attack's relabelled rows, which inflate the target class's weight.

Blending (``blend=``): ``"add"`` is the paper's image addition, saturated at 1; ``"mean"`` averages the
two images (what several re-implementations do).

As a pipeline step STRIP is a data filter (like AC): it flags the training rows it would reject and
retrains without them (``retrain=``). With ``filter_train=False`` it is only the run-time detector of
the paper (no training row is scored or removed, the model passes unchanged; ``retrain`` must then be
``"none"``): scoring a GTSRB-sized training set costs ``n_overlays`` forward passes per row. At test time it reports, with the same model and threshold, the
share of triggered test inputs it rejects (``test_triggered_rejected_pct``) and of clean test inputs it
wrongly rejects (``test_clean_rejected_pct``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backdoorlab import fastpath
from backdoorlab.data import row_batches, to_float_chw
from backdoorlab.devices import resolve_device
from backdoorlab.seeding import keyed_generator

from .base import DefenceContext, FilteringDefence, class_mix_weights
from .params import check_choice, check_fraction, check_positive_int

__all__ = ["Strip", "superimpose", "strip_entropy", "weighted_quantile", "BLENDS", "CLASS_WEIGHTS"]

BLENDS = ("add", "mean")
CLASS_WEIGHTS = ("train", "none")
#: Salts of the keyed overlay streams: each scored split draws its own overlays.
_SALTS = {"clean": 1, "train": 2, "test": 3, "test_triggered": 4}


def superimpose(inputs: torch.Tensor, overlays: torch.Tensor, blend: str = "add") -> torch.Tensor:
    """Every input blended with each of its overlays.

    Parameters
    ----------
    inputs : Tensor of shape (B, 3, H, W) in [0, 1]
    overlays : Tensor of shape (B, N, 3, H, W) in [0, 1]
    blend : {"add", "mean"}

    Returns
    -------
    Tensor of shape (B, N, 3, H, W) in [0, 1]
    """
    check_choice("blend", blend, BLENDS)
    if inputs.dim() != 4 or overlays.dim() != 5 or overlays.shape[0] != inputs.shape[0] \
            or overlays.shape[2:] != inputs.shape[1:]:
        raise ValueError(f"overlays must be (B, N, *inputs.shape[1:]) for inputs {tuple(inputs.shape)}, "
                         f"got {tuple(overlays.shape)}")
    if blend == "add":
        return (inputs[:, None] + overlays).clamp_(max=1.0)
    return (inputs[:, None] + overlays) * 0.5


def weighted_quantile(values, weights, q: float) -> float:
    """The ``q`` quantile of ``values`` under row ``weights``, interpolated linearly.

    Sorted values sit at positions ``(S_i - w_i) / (S_n - w_n)`` (``S`` the running sum of the weights),
    which are ``i / (n - 1)`` for equal weights: then it is ``np.quantile(values, q)`` (numpy's default
    ``"linear"`` method), the rule Strip used before weights existed.

    Parameters
    ----------
    values : array-like of float, shape (n,)
    weights : array-like of float, shape (n,), non-negative, positive sum
    q : float in [0, 1]
    """
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or w.shape != v.shape:
        raise ValueError(f"values and weights must be non-empty 1-D arrays of one length, got {v.shape} and {w.shape}")
    if not (np.isfinite(v).all() and np.isfinite(w).all()) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("values must be finite and weights finite, non-negative, with a positive sum")
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not 0 <= q <= 1:
        raise ValueError(f"q must be a number in [0, 1], got {q!r}")
    keep = w > 0  # a row of weight 0 takes no part
    v, w = v[keep], w[keep]
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    if v.size == 1:
        return float(v[0])
    cum = np.cumsum(w)
    pos = (cum - w) / (cum[-1] - w[-1])
    return float(np.interp(q, pos, v))


@torch.no_grad()
def strip_entropy(model: nn.Module, dataset: Any, pool: torch.Tensor, *, n_overlays: int = 20,
                  blend: str = "add", batch_size: int = 64, seed: int = 0, salt: int = 0,
                  device: str | torch.device = "auto", progress: bool = False) -> np.ndarray:
    """Mean prediction entropy (nats) of every row of ``dataset`` under ``n_overlays`` superimposed images.

    Parameters
    ----------
    model : nn.Module
    dataset : H5Split or Tensor of shape (m, 3, H, W) in [0, 1]
        The inputs scored (an H5Split is streamed in row order).
    pool : Tensor of shape (n, 3, H, W) in [0, 1]
        Clean images the overlays are drawn from (with replacement, independently per input).
    n_overlays : int
        Blends per input (N in the paper).
    blend : {"add", "mean"}
    batch_size : int
        Inputs per forward pass (each brings ``n_overlays`` blends).
    seed, salt : int
        The overlays are drawn from a stream keyed by both (same seed, same scores).

    Returns
    -------
    ndarray of float64, shape (len(dataset),)
    """
    n_overlays = check_positive_int("n_overlays", n_overlays)
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("blend", blend, BLENDS)
    if not isinstance(pool, torch.Tensor) or pool.dim() != 4 or pool.shape[0] == 0:
        raise ValueError(f"pool must be a non-empty (n, 3, H, W) tensor, got {getattr(pool, 'shape', pool)!r}")
    dev = resolve_device(device)
    model.to(dev)
    gen = keyed_generator(int(seed), int(salt))
    if isinstance(dataset, torch.Tensor):
        if dataset.dim() != 4 or dataset.shape[1:] != pool.shape[1:]:
            raise ValueError(f"input images {tuple(dataset.shape)} must be (m, *pool.shape[1:]) = "
                             f"(m, {', '.join(map(str, pool.shape[1:]))})")
        batches = ((dataset[i:i + batch_size], None) for i in range(0, dataset.shape[0], batch_size))
    else:
        batches = row_batches(dataset, batch_size, "cpu")
    out = np.empty(len(dataset), dtype=np.float64)
    pos = 0
    # eval mode, channels-last on CPU (the model is handed back as it came): b * n_overlays forwards a batch
    with fastpath.evaluation(model, dev) as channels_last, tqdm(
            total=len(dataset), desc=f"STRIP {getattr(dataset, 'split', '')}", unit="img", disable=not progress,
            leave=False) as bar:
        for x, _ in batches:
            b = x.shape[0]
            picks = torch.randint(0, pool.shape[0], (b, n_overlays), generator=gen)
            blended = fastpath.to_layout(superimpose(x, pool[picks], blend).reshape(-1, *x.shape[1:]).to(dev),
                                         channels_last)
            logp = torch.log_softmax(model(blended).double(), dim=1)
            entropy = -(logp.exp() * logp).sum(1).reshape(b, n_overlays).mean(1)
            out[pos:pos + b] = entropy.cpu().numpy()
            pos += b
            bar.update(b)
    return out


class Strip(FilteringDefence):
    """STRIP as a pipeline step: reject low-entropy training rows, retrain; report test-time rejection.

    Parameters
    ----------
    n_overlays : int
        Clean images superimposed on each input (default 100; the paper's N).
    frr : float in (0, 1)
        Target false-rejection rate on clean inputs; sets the threshold (default 0.05).
    blend : {"add", "mean"}
        How an overlay is superimposed (default ``"add"``, the paper's).
    retrain : {"scratch", "fine-tune", "none"}
        What to do after removing the flagged rows (default ``"scratch"``, as AC).
    test_time : bool
        Also score the test splits and report rejection rates (default True).
    batch_size : int
        Inputs per forward pass (default 64).
    filter_train : bool
        Score the training split and remove the rows below the threshold (default True); False: the
        run-time detector only (requires ``retrain="none"``).
    test_sample : int
        Most rows of each test split scored for the test-time false rejections (a seeded sample; default 2000:
        a GTSRB-sized test split would otherwise cost ``n_overlays`` forward passes for each of its 12,630 images).
    class_weight : {"train", "none"}
        ``"train"``: the threshold is the ``frr`` quantile of the clean entropies under the training
        split's class mix (see the module docstring); ``"none"`` (default): the plain quantile.
    """

    name = "strip"

    def __init__(self, n_overlays: int = 100, frr: float = 0.05, blend: str = "add", retrain: str = "scratch",
                 test_time: bool = True, batch_size: int = 64, test_sample: int = 2000,
                 filter_train: bool = True, class_weight: str = "none") -> None:
        self.n_overlays = check_positive_int("n_overlays", n_overlays)
        self.frr = check_fraction("frr", frr)
        self.blend = check_choice("blend", blend, BLENDS)
        self.retrain = check_choice("retrain", retrain, ("scratch", "fine-tune", "none"))
        if not isinstance(test_time, bool):
            raise TypeError(f"test_time must be True or False, got {test_time!r}")
        self.test_time = test_time
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.test_sample = check_positive_int("test_sample", test_sample)
        if not isinstance(filter_train, bool):
            raise TypeError(f"filter_train must be True or False, got {filter_train!r}")
        if not filter_train and (self.retrain != "none" or not test_time):
            raise ValueError(f"filter_train=False removes no training row: it needs retrain='none' (got "
                             f"{self.retrain!r}) and test_time=True (got {test_time!r})")
        self.filter_train = filter_train
        self.class_weight = check_choice("class_weight", class_weight, CLASS_WEIGHTS)

    def _score(self, ctx: DefenceContext, split: str, pool: torch.Tensor, progress: bool,
               dataset: Any = None) -> np.ndarray:
        dataset = getattr(ctx, split) if dataset is None else dataset
        return strip_entropy(ctx.model, dataset, pool, n_overlays=self.n_overlays, blend=self.blend,
                             batch_size=self.batch_size, seed=ctx.seed, salt=_SALTS[split], device=ctx.device,
                             progress=progress)

    def clean_weights(self, ctx: DefenceContext) -> np.ndarray:
        """Row weights of the clean split in the calibration: the training class mix, or all ones."""
        labels = np.asarray(ctx.clean.labels, dtype=np.int64)
        if self.class_weight == "none":
            return np.ones(labels.size)
        train = np.asarray(ctx.train.labels, dtype=np.int64)
        n_classes = int(max(getattr(ctx.clean, "n_classes", 0), labels.max() + 1, train.max() + 1))
        return class_mix_weights(train, labels, n_classes)

    def calibrate(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[float, torch.Tensor, np.ndarray]:
        """``(threshold, overlay pool, clean entropies)`` from the clean split."""
        if len(ctx.clean) < 2:
            raise ValueError(f"STRIP needs at least 2 clean images to draw overlays from, got {len(ctx.clean)}")
        pool = to_float_chw(ctx.clean.load_images())
        clean = self._score(ctx, "clean", pool, progress)
        # reject below the frr quantile: on the clean split (under the weights), at most about frr falls below it
        if self.class_weight == "none":
            return float(np.quantile(clean, self.frr)), pool, clean
        return weighted_quantile(clean, self.clean_weights(ctx), self.frr), pool, clean

    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[np.ndarray, dict]:
        started = time.perf_counter()
        threshold, pool, clean = self.calibrate(ctx, progress=progress)
        report: dict[str, Any] = {
            "threshold": threshold,
            "clean_entropy_mean": float(clean.mean()),
            "clean_rejected_pct": 100.0 * float((clean < threshold).mean()),
            "class_weight": self.class_weight,
        }
        if self.class_weight != "none":  # the rate the threshold was set to: the clean split under the training mix
            w = self.clean_weights(ctx)
            report["clean_rejected_weighted_pct"] = 100.0 * float((w * (clean < threshold)).sum() / w.sum())
        if self.filter_train:
            train = self._score(ctx, "train", pool, progress)
            flags = train < threshold
            report["train_entropy_mean"] = float(train.mean())
        else:
            flags = np.zeros(len(ctx.train), dtype=bool)
        if self.test_time:
            for split, key in (("test_triggered", "test_triggered_rejected_pct"), ("test", "test_clean_rejected_pct")):
                data = getattr(ctx, split)
                if len(data) > self.test_sample:
                    rng = np.random.default_rng([int(ctx.seed), _SALTS[split]])
                    data = data.subset(np.sort(rng.choice(len(data), self.test_sample, replace=False)))
                if len(data):
                    scores = self._score(ctx, split, pool, progress, dataset=data)
                    report[key] = 100.0 * float((scores < threshold).mean())
                    report[f"{split}_entropy_mean"] = float(scores.mean())
                    report[f"{split}_scored"] = len(data)
        report["detect_seconds"] = time.perf_counter() - started
        return flags, report

    def run(self, ctx: DefenceContext, *, progress: bool = True):
        flags, report = self.detect(ctx, progress=progress)
        if not self.filter_train:  # the run-time detector only: the model and the training set pass unchanged
            return self._remove_and_retrain(ctx, flags, report, progress=progress, model=ctx.model, kept=ctx.train)
        return self._remove_and_retrain(ctx, flags, report, progress=progress)
