"""Dropout noise drawn as PyTorch draws it on the CPU — the same values and RNG use — but natively.

PyTorch's CPU dropout (``F.dropout`` in training) is ``x * (empty_like(x).bernoulli_(keep) / keep)``.
On CPUs where ATen does not take MKL's generator (AMD's, for one) ``bernoulli_`` draws serially
from the default generator's mt19937, ~8 ns an element: for the GTSRB CNN's four dropout layers
(337k units a batch of 32) ~3 ms of a ~36 ms training step (``torch.profiler``, 2 threads, AMD
EPYC). :func:`noise` draws the same numbers from a copy of the generator's state in the native
core (``_core._dropout_noise``) and hands the advanced state back, so the run consumes the RNG
exactly as before and every later draw (the next batch's noise, a data shuffle) is unchanged.

The equality is not assumed: :func:`available` checks it once per process against ``bernoulli_``
itself — masks of several shapes and layouts, drawn across the generator's 624-word refills, and
the generator's state after them. Where they differ (e.g. a PyTorch build that draws with MKL on an
Intel CPU, or another state layout), where the native core is missing, and for anything but
float32, PyTorch draws the noise: :func:`noise` returns it for a channels-last batch (drawn in
logical order, so both layouts get the same mask) and None for a contiguous one (the caller's
``nn.Dropout`` draws exactly that itself).
"""

from __future__ import annotations

import functools

import torch

_available: bool | None = None  # the outcome of the one check per process


def _core():
    from backdoorlab import native  # native imports NumPy and the compiled core: only when asked
    return native._core


def _draw(shape: tuple[int, ...], keep: float, scale: float, channels_last: bool) -> torch.Tensor:
    """The native draw (no check): noise of ``shape``, the default CPU generator advanced past it."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(shape, dtype=torch.float32, memory_format=fmt)
    state = torch.get_rng_state()  # a copy; written back below
    # channels-last (N, C, H, W) is (N, H, W, C) in memory: the kernel writes it in that order
    buf = out.permute(0, 2, 3, 1) if channels_last else out
    _core()._dropout_noise(state.numpy(), buf.numpy(), float(keep), float(scale), bool(channels_last))
    torch.set_rng_state(state)
    return out


def _torch_noise(shape: tuple[int, ...], keep: float, channels_last: bool,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What PyTorch's CPU dropout multiplies a contiguous input by (ATen: ``empty_like(x).bernoulli_(keep)``,
    divided by ``keep``): drawn in logical order, then laid out channels-last if asked."""
    n = torch.empty(shape, dtype=dtype).bernoulli_(keep).div_(keep)
    return n.contiguous(memory_format=torch.channels_last) if channels_last else n


@functools.lru_cache(maxsize=16)
def _scale(keep: float) -> float:
    """The kept units' value as PyTorch computes it (1 / keep in float32, by its own division)."""
    return torch.ones((), dtype=torch.float32).div_(keep).item()


def available() -> bool:
    """Whether :func:`noise` draws natively in this process: checked once against ``bernoulli_``."""
    global _available
    if _available is None:
        _available = False
        core = _core()
        if core is not None and hasattr(core, "_dropout_noise"):
            saved = torch.get_rng_state()
            try:
                same = True
                # sizes across several 624-word refills, odd shapes, both layouts, keep 0.5 / 0.8 / 0.9
                for shape, keep, cl in (((3, 5, 7, 11), 0.8, True), ((2, 7, 5, 3), 0.5, False), ((700,), 0.9, False),
                                        ((4, 33, 3, 2), 0.8, True)):
                    start = torch.get_rng_state()
                    want = _torch_noise(shape, keep, cl)
                    want_state = torch.get_rng_state()
                    torch.set_rng_state(start)
                    got = _draw(shape, keep, _scale(keep), cl)
                    same = (same and torch.equal(got, want) and torch.equal(torch.get_rng_state(), want_state)
                            and got.stride() == want.stride())
                _available = same
            finally:
                torch.set_rng_state(saved)
    return _available


def noise(x: torch.Tensor, p: float) -> torch.Tensor | None:
    """Dropout noise for ``x`` (drop probability ``p``) in ``x``'s layout, or None where ``nn.Dropout`` draws it.

    The values and the RNG use are those of ``empty(x.shape).bernoulli_(1 - p).div_(1 - p)`` (drawn
    in logical order) from the default CPU generator; for a channels-last 4-D ``x`` the noise is
    laid out channels-last too, ready to multiply. Drawn natively for float32 where
    :func:`available`, else by PyTorch. None when ``x`` is not a CPU tensor in the default or
    channels-last layout, ``p`` is not inside (0, 1), or ``x`` is contiguous and the noise would
    come from PyTorch anyway (``nn.Dropout`` draws the same).
    """
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or not 0.0 < p < 1.0:
        return None
    if x.is_contiguous():
        channels_last = False
    elif x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        channels_last = True
    else:
        return None
    keep = 1.0 - p
    if x.dtype == torch.float32 and available():
        return _draw(tuple(x.shape), keep, _scale(keep), channels_last)
    return _torch_noise(tuple(x.shape), keep, True, x.dtype) if channels_last else None
