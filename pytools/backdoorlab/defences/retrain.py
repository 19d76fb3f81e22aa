"""Retraining after a data-filtering defence: from scratch (what the paper does) or fine-tuned.

Its own module because it needs :mod:`backdoorlab.train`, which the protocol in :mod:`.base`
does not; :class:`~.base.FilteringDefence` calls :func:`retrain` on the rows it keeps.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from backdoorlab.train import train_model

from .params import check_choice

if TYPE_CHECKING:  # base imports this module (FilteringDefence retrains); the hint must not import back
    from .base import DefenceContext

__all__ = ["reinitialised_copy", "retrain"]


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with fresh parameters, drawn from ``seed``.

    ``reset_parameters`` of every submodule, then the model's own initialisation if it has one
    (``keras_init`` of the victim models), so "retrain from scratch" starts like the original.

    Buffers that are not parameters' statistics — in particular a Fine-Pruning channel mask — are
    kept, so a pruned architecture stays pruned when it is retrained.
    """
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        reset_stats = getattr(module, "reset_running_stats", None)
        if callable(reset_stats):
            reset_stats()
    # a victim model's own initialisation (Keras's Glorot-uniform for the paper's models) wins
    own_init = getattr(fresh, "keras_init", None)
    if callable(own_init):
        own_init()
    return fresh


def retrain(ctx: DefenceContext, keep: np.ndarray, *, mode: str = "scratch", progress: bool = True) -> tuple[nn.Module, Any]:
    """Train on the kept rows of ``ctx.train``; returns ``(model, kept training set)``.

    ``mode``: ``"scratch"`` (fresh weights, ``ctx.train_config`` — what the paper does),
    ``"fine-tune"`` (continue from ``ctx.model`` with the same recipe) or ``"none"`` (keep the
    model; only the training set shrinks).
    """
    check_choice("retrain mode", mode, ("scratch", "fine-tune", "none"))
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(ctx.train),):
        raise ValueError(f"keep mask has shape {keep.shape}, expected ({len(ctx.train)},)")
    if not keep.any():
        raise ValueError("the defence removed every training sample; nothing left to retrain on")
    kept = ctx.train.subset(np.flatnonzero(keep))
    if mode == "none":
        return ctx.model, kept
    model = reinitialised_copy(ctx.model, ctx.seed) if mode == "scratch" else copy.deepcopy(ctx.model)
    model = train_model(model, kept, ctx.train_config, seed=ctx.seed, device=ctx.device, progress=progress)
    return model, kept
