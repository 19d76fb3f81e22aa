"""How training and inference run fast without changing what they compute (and mixed precision, which does).

Used by :mod:`backdoorlab.train` (the training step) and by the inference loops
(:func:`backdoorlab.evaluate.predict`, :func:`backdoorlab.activations.iter_layer_outputs`, STRIP's
:func:`backdoorlab.defences.strip.strip_entropy`);
measured on the GTSRB CNN at the paper's batch of 32 (figures and commands in ``docs/models.md``,
"Training throughput"):

- **Memory layout.** On CPU, oneDNN convolutions run on channels-last ``(N, H, W, C)`` tensors
  without the layout reorders they need around every call on the default ``(N, C, H, W)``
  layout, so the model's 4-D weights and every input batch are put in channels-last for the run
  and the model is given back in the default layout. Only the strides change, not the shapes or
  what a layer means; the float results differ by rounding only (another summation order inside
  the convolution). Dropout is the one layer whose *values* would change: PyTorch draws CPU
  dropout noise in memory order, so our models use :class:`backdoorlab.models.base.Dropout`,
  which draws it in logical order (same mask, same RNG use, whatever the layout).
- **Optimizer.** PyTorch's default single-tensor Adam/SGD on CPU issue a dozen small kernels per
  parameter tensor, each a parallel region; the ``fused`` kernels (Adam, SGD) do the same
  arithmetic in one pass, and ``foreach`` (Adadelta, which has no fused kernel) groups them.
- **Freed memory kept for reuse** (:func:`retain_freed_memory`, CPU runs on Linux/glibc). Every
  step allocates and frees the same few-MiB activation and gradient tensors; glibc's malloc hands
  blocks that large back to the kernel (``mmap``/``munmap``, heap trimming), so the next step
  takes them again as fresh pages, each zeroed by the kernel on its first touch: ~450k page faults
  and 1.2 s of system time in a 7 s GTSRB CNN step loop (``perf stat``). Raising malloc's mmap
  and trim thresholds keeps them in the process. Nothing computed changes (bit for bit); the process keeps up to
  ``KEEP_FREED_BYTES`` of freed memory per malloc arena instead of returning it.
- **Evaluation in channels-last** (:func:`evaluation`): prediction and activation extraction run
  the model in eval mode in the same channels-last layout on CPU (the forward without oneDNN's
  layout reorders: predictions 1.3-1.9x faster on our three models), and give the model back in
  the layout it came in. Same outputs up to the convolutions' rounding.
- **Mixed precision**, opt-in only (``TrainConfig(precision="mixed")``, :func:`autocast_dtype`): the
  forward pass under autocast. Unlike everything above it changes what is computed, so it is part
  of a run's resume identity and no preset uses it.

``TrainConfig(fast=False)`` switches the layout and the optimizer off in training: the plain eager
path that the tests compare against (bit for bit with a hand-written loop) and against which the
fast path is checked within float tolerance. ``fast`` is not part of a run's resume identity:
either path may resume the other's checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import platform
import sys

import torch
from torch import nn

# glibc <malloc.h>: mallopt's parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit: larger blocks stay mmap'd
KEEP_FREED_BYTES = 256 << 20     # free memory at the top of a heap beyond this goes back to the kernel
# A user's own malloc settings win: any of these in the environment and we leave malloc alone.
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
_retained: bool | None = None  # the outcome of the first call (the setting is process-wide)


def use_channels_last(model: nn.Module, device: torch.device, fast: bool) -> bool:
    """Whether the run uses the channels-last layout: the fast path, on CPU, for a model with 2-D convolutions.

    On CUDA the layout is left alone: cuDNN picks its own, and CUDA dropout draws its noise with a
    fused kernel whose order we do not control (so a seed would train differently).
    """
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    return bool(fast) and device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def set_layout(model: nn.Module, optimizer: torch.optim.Optimizer | None, channels_last: bool) -> None:
    """Put ``model``'s 4-D parameters and buffers (and the matching optimizer state) in one layout.

    Parameters keep their identity (``Module.to`` swaps ``.data``), so an optimizer built on them
    stays valid; its per-parameter state (e.g. Adam's moments, possibly loaded from a checkpoint
    in the other layout) is given the same strides, which the fused kernels expect. Values are
    not changed, only strides.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    if optimizer is None:
        return
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() == 4:
                state[key] = value.contiguous(memory_format=fmt)


def _in_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-D tensors are all in channels-last memory order (False when it has none)."""
    four_d = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.dim() == 4]
    return bool(four_d) and all(t.is_contiguous(memory_format=torch.channels_last) for t in four_d) and not all(
        t.is_contiguous() for t in four_d)


@contextlib.contextmanager
def evaluation(model: nn.Module, device: torch.device):
    """Run ``model`` for inference: eval mode, and the channels-last layout where it is faster.

    Yields whether the batches should be channels-last (:func:`to_layout`): True on CPU for a
    model with 2-D convolutions (:func:`use_channels_last`). On leaving, the model gets back its
    training flag and the layout it came in (a model already in channels-last, e.g. one being
    trained on the fast path, is left in it). Gradients are not switched off here: the caller
    chooses ``torch.no_grad`` or ``torch.inference_mode`` for what it does with the outputs.
    Called inside ``torch.inference_mode`` the layout is left alone: weights converted there would
    become inference tensors, which no later training step could use.
    """
    channels_last = use_channels_last(model, device, True) and not torch.is_inference_mode_enabled()
    convert = channels_last and not _in_channels_last(model)  # and convert back on leaving
    was_training = model.training
    model.eval()
    if convert:
        set_layout(model, None, True)
    try:
        yield channels_last
    finally:
        if convert:
            set_layout(model, None, False)
        model.train(was_training)


PRECISIONS = ("float32", "mixed")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training run: None for ``"float32"``; for ``"mixed"``, bfloat16 on
    CPU (float32's exponent range, so no loss scaling; fast where the CPU has bfloat16 dot products,
    e.g. AVX512_BF16 or AMX) and float16 on CUDA (the tensor cores' type; the trainer scales the loss).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    if precision == "float32":
        return None
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    raise ValueError(f"precision='mixed' is for CPU or CUDA devices, not {device.type!r}")


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The input batch in the run's layout (a copy only when it is not in it already)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def optimizer_options(name: str, device: torch.device, fast: bool) -> dict:
    """Keyword arguments for ``torch.optim.<name>`` on ``device``: ``fused`` or ``foreach`` on the fast path.

    Every key is always present (``None`` = PyTorch's default), so the options can also be
    written over the ``param_groups`` of a state dict loaded from a checkpoint of the other path.
    """
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    on = bool(fast) and device.type in ("cpu", "cuda")
    if name in ("adam", "sgd"):
        return {"fused": True if on else None, "foreach": None}
    if name == "adadelta":
        return {"foreach": True if on else None}
    raise ValueError(f"unknown optimizer {name!r}")


def apply_optimizer_options(optimizer: torch.optim.Optimizer, options: dict) -> None:
    """Write ``options`` over every param group (after ``load_state_dict``, which restores the saved ones).

    A fused kernel wants each parameter's ``step`` counter on the parameter's device (float32);
    a state saved by the single-tensor path keeps it on the CPU, so it is moved (a no-op on CPU).
    """
    for group in optimizer.param_groups:
        group.update(options)
        if not options.get("fused"):
            continue
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if torch.is_tensor(step):
                state["step"] = step.to(device=p.device, dtype=torch.float32)


def retain_freed_memory() -> bool:
    """Keep freed blocks in the process (glibc malloc), so a training step reuses the last one's pages.

    Sets glibc's mmap threshold to ``MMAP_THRESHOLD_BYTES`` and its trim threshold to
    ``KEEP_FREED_BYTES`` (``mallopt``; the same as ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` in the environment). Process-wide and lasting: called by the fast CPU
    training path (and by ``bench train`` for all its variants); later calls return the first
    call's outcome. Returns whether the
    setting is in force: False off Linux/glibc, when the environment already configures malloc
    (``MALLOC_*_``, ``GLIBC_TUNABLES``) or preloads another allocator (``LD_PRELOAD``), or when
    glibc refuses a value.
    """
    global _retained
    if _retained is None:
        _retained = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" and not any(
                os.environ.get(k) for k in _MALLOC_ENV):
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # mallopt returns 1 on success; a setting that fails leaves glibc's default in force
            _retained = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
                mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    return _retained
