"""Activations of a named layer over a split, streamed in batches: what the defences analyse.

Activation Clustering and Spectral Signatures read the (post-ReLU) output of a hidden layer for
every training row; Fine-Pruning needs the mean activation of each channel of the last conv
layer on clean data. Everything here runs the model in eval mode without gradients, one batch
at a time, and *stops the forward pass at the hooked layer* (the rest of the network is not
needed), so only one batch of images and activations is in memory besides the output.

- :func:`iter_activations` yields ``(start, acts, labels)`` batches (the building block);
- :func:`extract` fills an ``(N, D)`` float32 matrix, flattened or reduced to channel means,
  in memory or in a ``.npy`` memory-mapped file (``out=``) for YTAF-sized data;
- :func:`extract_by_class` writes the rows directly in class order with class offsets (the
  layout of the native kernels), with no second copy for the sort;
- :func:`channel_means` streams into the ``ActivationStats`` accumulator of the native core.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from backdoorlab import fastpath, reference
from backdoorlab.data import H5Split, row_batches
from backdoorlab.devices import resolve_device
from backdoorlab.models import BackdoorModel
from backdoorlab.models.compat import check_compatible
from datasets_gen.atomic import atomic_path

REDUCTIONS = ("flatten", "channel_mean")


class _StopForward(Exception):
    """Raised by the hook once the layer's output is captured: the rest of the forward is skipped."""


def _reduce(acts: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "channel_mean" and acts.dim() > 2:
        return acts.flatten(2).mean(2)
    return acts.flatten(1)


def iter_activations(model: BackdoorModel, dataset: H5Split, layer: str, *, batch_size: int = 256,
                     device: str | torch.device = "auto", progress: bool = False,
                     ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Stream the output of ``layer`` over ``dataset`` in row order.

    Yields
    ------
    (start, acts, labels)
        ``start`` is the row of the batch's first item; ``acts`` float32 on the CPU with the
        layer's own shape ``(b, C, H, W)`` or ``(b, D)``; ``labels`` int64 ``(b,)`` (the split's
        training labels).
    """
    check_compatible(model, dataset)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    yield from iter_layer_outputs(model, layer, row_batches(dataset, int(batch_size), dev),
                                  total=len(dataset), device=dev, progress=progress)


def iter_layer_outputs(model: BackdoorModel, layer: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                       total: int | None = None, device: str | torch.device = "auto", progress: bool = False,
                       ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The one forward loop of the house: the output of ``layer`` for each ``(x, y)`` of ``batches``.

    ``batches`` are image tensors with their labels (a variant's rows through
    :func:`iter_activations`, or images held in memory, e.g. stamped with a reversed trigger);
    each is moved to ``device``. The forward stops at ``layer``. Yields ``(start, acts, labels)``
    as :func:`iter_activations`.
    """
    module = model.layer(layer)  # KeyError naming the valid layers
    dev = resolve_device(device)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output.detach())
        raise _StopForward

    model.to(dev)
    handle = module.register_forward_hook(hook)
    try:
        start = 0
        # no_grad, not inference_mode: callers may write into the yielded activations in place
        with fastpath.evaluation(model, dev) as channels_last, torch.no_grad(), tqdm(
                total=total, desc=f"activations {layer}", unit="img", disable=not progress, leave=False) as bar:
            for x, y in batches:
                captured.clear()
                try:
                    model(fastpath.to_layout(x.to(dev), channels_last))
                except _StopForward:
                    pass
                if len(captured) != 1:
                    raise RuntimeError(f"layer {layer!r} produced {len(captured)} outputs in one forward pass; expected 1")
                # contiguous: the channels-last run's outputs in the default layout, as callers expect
                acts = captured[0].float().cpu().contiguous()
                yield start, acts, y.cpu()
                start += acts.shape[0]
                bar.update(acts.shape[0])
    finally:
        handle.remove()


def image_channel_means(model: BackdoorModel, images: Iterable[torch.Tensor], layer: str, *,
                        device: str | torch.device = "auto") -> np.ndarray:
    """Mean over all images of each channel's spatial mean at ``layer`` (a dense layer: each unit),
    for batches of images held in memory (no labels); float64 ``(C,)``."""
    unlabelled = ((x, torch.full((x.shape[0],), -1, dtype=torch.long)) for x in images)
    total, n = None, 0
    for _, acts, _ in iter_layer_outputs(model, layer, unlabelled, device=device):
        s = _reduce(acts, "channel_mean").double().sum(0)
        total = s if total is None else total + s
        n += acts.shape[0]
    if total is None:
        raise ValueError("image_channel_means needs at least one image")
    return (total / n).numpy()


def layer_width(model: BackdoorModel, layer: str, reduce: str = "flatten") -> int:
    """Columns ``D`` that :func:`extract` gives for ``layer`` (from one forward pass of a zero image)."""
    module = model.layer(layer)
    shapes: list[tuple[int, ...]] = []

    def hook(_m, _i, out):
        shapes.append(tuple(out.shape))
        raise _StopForward

    dev = next(model.parameters()).device
    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(torch.zeros(1, 3, *model.input_size, device=dev))
            except _StopForward:
                pass
    finally:
        handle.remove()
        model.train(was_training)
    shape = shapes[0][1:]
    return int(shape[0]) if reduce == "channel_mean" else int(np.prod(shape))


def _collect(n: int, d: int, out: str | os.PathLike | None, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """Run ``fill`` on a fresh ``(n, d)`` float32 array: in memory, or with ``out`` a memory-mapped
    ``<out>.tmp.npy`` moved onto ``out`` only once filled (a failed extraction leaves no file)."""
    if out is None:
        arr = np.empty((n, d), dtype=np.float32)
        fill(arr)
        return arr
    path = Path(out)
    if path.suffix != ".npy":
        raise ValueError(f"out must be a .npy path (a NumPy memory-mapped file), got {str(path)!r}")
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
        try:
            fill(arr)
            arr.flush()
        finally:
            del arr  # unmap before the rename (or the removal on failure)
    return np.load(path, mmap_mode="r")


def _finite(acts: torch.Tensor, layer: str, start: int) -> torch.Tensor:
    # NaN/inf activations come from a diverged model; every analysis of them (clustering, spectra,
    # statistics) would silently give garbage, so stop at the first batch that has them.
    if not torch.isfinite(acts).all():
        raise ValueError(f"activations of layer {layer!r} contain NaN or inf (batch at row {start}); is the model diverged?")
    return acts


def extract(model: BackdoorModel, dataset: H5Split, layer: str, *, reduce: str = "flatten", batch_size: int = 256,
            device: str | torch.device = "auto", out: str | os.PathLike | None = None,
            progress: bool = True) -> np.ndarray:
    """Activations of ``layer`` for every row of ``dataset``.

    Parameters
    ----------
    model : BackdoorModel
    dataset : H5Split
    layer : str
        Role (``"penultimate"``, ``"last_conv"``, ``"second_last_conv"``) or module name.
    reduce : {"flatten", "channel_mean"}
        Conv maps ``(C, H, W)`` become ``C*H*W`` columns, or ``C`` spatial means.
    out : path-like ending in ``.npy``, optional
        Spill to a memory-mapped file (written as ``<out>.tmp.npy``, renamed when complete);
        the returned array is then a read-only memmap of it.

    Returns
    -------
    np.ndarray of float32, shape (len(dataset), D)
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    model.layer(layer)
    model.to(resolve_device(device))
    d = layer_width(model, layer, reduce)

    def fill(arr: np.ndarray) -> None:
        for start, acts, _ in iter_activations(model, dataset, layer, batch_size=batch_size, device=device, progress=progress):
            arr[start : start + acts.shape[0]] = _reduce(_finite(acts, layer, start), reduce).numpy()

    return _collect(len(dataset), d, out, fill)


def extract_by_class(model: BackdoorModel, dataset: H5Split, layer: str, *, reduce: str = "flatten",
                     batch_size: int = 256, device: str | torch.device = "auto",
                     out: str | os.PathLike | None = None, progress: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations grouped by the split's labels, in the layout of the native kernels.

    Returns
    -------
    X_sorted : np.ndarray of float32, shape (N, D)
        Rows in stable class order: ``X_sorted = extract(...)[order]``.
    offsets : np.ndarray of int64, shape (n_classes + 1,)
        Class ``c`` is ``X_sorted[offsets[c]:offsets[c + 1]]``.
    order : np.ndarray of int64, shape (N,)
        Row of ``dataset`` for each row of ``X_sorted`` (map results back with ``res_rows[order] = res``).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    labels = dataset.labels
    n_classes = max(dataset.n_classes, model.n_classes)
    order = np.argsort(labels, kind="stable").astype(np.int64)
    offsets = np.zeros(n_classes + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=n_classes), out=offsets[1:])
    position = np.empty_like(order)
    position[order] = np.arange(order.size)  # sorted position of every dataset row
    model.layer(layer)
    model.to(resolve_device(device))
    d = layer_width(model, layer, reduce)

    def fill(arr: np.ndarray) -> None:
        for start, acts, _ in iter_activations(model, dataset, layer, batch_size=batch_size, device=device, progress=progress):
            arr[position[start : start + acts.shape[0]]] = _reduce(_finite(acts, layer, start), reduce).numpy()

    return _collect(len(dataset), d, out, fill), offsets, order


def channel_stats(model: BackdoorModel, dataset: H5Split, layer: str, *, by_class: bool = False,
                  batch_size: int = 256, device: str | torch.device = "auto", backend: str = "native",
                  progress: bool = True) -> dict:
    """Per-channel statistics of ``layer`` over ``dataset`` (mean, std, max, frac_positive, count).

    Streams every batch into ``backdoorlab.native.ActivationStats`` (``backend="native"``) or its
    NumPy twin ``backdoorlab.reference.ActivationStats`` (``backend="reference"``); with
    ``by_class`` the statistics are per (class, channel).
    """
    if backend == "native":
        try:
            from backdoorlab.native import ActivationStats
        except ImportError as exc:
            raise ImportError(
                f"backdoorlab.native is not available ({exc}); build the native core or pass backend='reference'"
            ) from exc
    elif backend == "reference":
        ActivationStats = reference.ActivationStats
    else:
        raise ValueError(f"backend must be 'native' or 'reference', got {backend!r}")
    model.to(resolve_device(device))
    n_channels = layer_width(model, layer, "channel_mean")
    n_classes = max(dataset.n_classes, model.n_classes)
    acc = ActivationStats(n_channels, n_classes if by_class else None)
    for _, acts, labels in iter_activations(model, dataset, layer, batch_size=batch_size, device=device, progress=progress):
        batch = np.ascontiguousarray(acts.numpy(), dtype=np.float32)
        acc.update(batch, labels.numpy().astype(np.int64) if by_class else None)
    return acc.result()


def channel_means(model: BackdoorModel, dataset: H5Split, layer: str = "last_conv", **kw) -> np.ndarray:
    """Mean activation of every channel of ``layer`` over ``dataset`` (Fine-Pruning's ranking).

    Returns
    -------
    np.ndarray, shape (C,)
        Mean over rows and spatial positions; keyword arguments as :func:`channel_stats`.
    """
    if kw.get("by_class"):
        raise ValueError("channel_means is over the whole split; use channel_stats(by_class=True) per class")
    return np.asarray(channel_stats(model, dataset, layer, **kw)["mean"])
