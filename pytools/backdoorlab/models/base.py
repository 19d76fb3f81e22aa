"""The common base of every victim model: layer roles and the named blocks defences hook into.

Defences ask a model for a layer *by role* ("last_conv", "second_last_conv", "penultimate") or
by module name, hook its output and, for Fine-Pruning, silence some of its channels. So that the
hooked output is what the papers analyse -- the activation *after* the non-linearity -- every
named layer of our models is a small block (:class:`ConvReLU`, :class:`LinearReLU`) that holds
its weights (``.conv`` / ``.linear``) and applies the ReLU itself. A forward hook on
``model.layer("last_conv")`` therefore sees post-ReLU feature maps ``(N, C, H, W)``, and a
hook on ``model.layer("penultimate")`` the post-ReLU hidden vector ``(N, D)``.

Each block also carries a ``channel_mask`` buffer (all ones by default, float32 ``(C,)``)
multiplied onto its output. Fine-Pruning sets entries to 0 with :meth:`BackdoorModel.prune`;
the mask is part of the state dict, so a pruned model saved and loaded stays pruned, and the
pruned channels stay silent while the rest of the network is fine-tuned.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from backdoorlab import dropout_noise

ROLES: tuple[str, ...] = ("last_conv", "second_last_conv", "penultimate")

#: Input normalisations a model can apply to its [0, 1] input before the first layer:
#: ``"none"`` (the paper's models) or ``"per_image"`` (each image shifted to mean 0 and scaled to
#: standard deviation 1 over its pixels and channels; a parameter-free layer, so it is part of
#: the model and every consumer -- training, evaluation, defences -- sees the same input).
INPUT_NORMS: tuple[str, ...] = ("none", "per_image")


class _MaskedBlock(nn.Module):
    """A weight layer + ReLU whose output channels can be masked (pruned)."""

    out_channels: int

    def _init_mask(self, n_channels: int) -> None:
        self.out_channels = int(n_channels)
        self.register_buffer("channel_mask", torch.ones(n_channels, dtype=torch.float32))

    def _apply_mask(self, y: torch.Tensor) -> torch.Tensor:
        # An all-ones mask is skipped: multiplying by 1 is exact, so the result is the same bit for
        # bit, and the multiply (with its backward) costs ~8 % of a small CNN's training step on CPU.
        if not torch.compiler.is_compiling() and self._mask_is_identity():
            return y
        shape = (1, -1) + (1,) * (y.dim() - 2)
        return y * self.channel_mask.view(shape)

    def _mask_is_identity(self) -> bool:
        """Whether ``channel_mask`` is all ones, re-checked only when the mask changed.

        A check per forward would sync a GPU at every block; instead the answer is cached against
        the mask tensor itself (held, so its address cannot be reused), its storage and its version
        counter, which every in-place write (``prune``, ``load_state_dict``, ``mask[i] = 0``) bumps.
        """
        mask = self.channel_mask
        if mask.is_inference():  # inference tensors keep no version counter: no cache
            return bool((mask == 1).all())
        key = (mask.data_ptr(), mask._version)
        cached = self.__dict__.get("_mask_cache")
        if cached is None or cached[0] is not mask or cached[1] != key:
            cached = (mask, key, bool((mask == 1).all()))
            self.__dict__["_mask_cache"] = cached
        return cached[2]


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is the same whatever the memory layout of its input, drawn fast.

    PyTorch's CPU dropout draws its Bernoulli noise in the memory order of the input, so a
    channels-last batch (the faster layout for convolutions on CPU, see :mod:`backdoorlab.train`)
    would get a different mask from the same RNG state than the default layout -- and train
    differently from the same seed. Here a channels-last input gets the noise drawn in logical
    ``(N, C, H, W)`` order, exactly as ATen draws it for a contiguous input, so both layouts drop
    the same units and consume the RNG alike. On the CPU the noise comes from
    :func:`backdoorlab.dropout_noise.noise` (natively for float32 where that gives ``bernoulli_``'s
    values and RNG use, checked once per process, several times faster); any other input goes to
    ``nn.Dropout`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and (noise := dropout_noise.noise(x, self.p)) is not None:
            return x.mul_(noise) if self.inplace else x * noise
        return super().forward(x)


class ConvReLU(_MaskedBlock):
    """``relu(conv(x)) * channel_mask``; the hooked output is post-ReLU ``(N, C, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int | str = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self._init_mask(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(torch.relu(self.conv(x)))


class LinearReLU(_MaskedBlock):
    """``relu(linear(x)) * channel_mask``; the hooked output is post-ReLU ``(N, D)``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self._init_mask(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(torch.relu(self.linear(x)))


class UnknownLayerError(KeyError, ValueError):
    """A layer role or module name the model does not have.

    A ``KeyError`` for lookups (what :meth:`BackdoorModel.layer` documents) and a ``ValueError`` for
    the defences, whose layer is a bad parameter value; one type, so both callers catch it as theirs.
    """

    def __str__(self) -> str:
        # KeyError quotes its message as if it were the missing key
        return str(self.args[0]) if self.args else ""


class BackdoorModel(nn.Module):
    """Base class of the victim models.

    Subclasses set :attr:`arch` (registry name), :attr:`input_size` ``(H, W)``, fill
    :attr:`roles` (role -> module name) and name their last layer in :attr:`classifier_name`.
    ``forward`` takes float32 ``(N, 3, H, W)`` images in ``[0, 1]``; the model applies its own
    normalisation.
    """

    arch: ClassVar[str] = ""
    input_size: tuple[int, int] = (0, 0)
    roles: dict[str, str]
    classifier_name: str = ""

    def __init__(self, n_classes: int):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.n_classes = int(n_classes)
        self.roles = {}
        # Constructor arguments, saved in checkpoints so `checkpoint.load` can rebuild the model.
        self.spec: dict = {"name": self.arch, "n_classes": self.n_classes}
        self.input_norm = "none"

    def set_input_norm(self, input_norm: str) -> None:
        """Choose the input normalisation (one of :data:`INPUT_NORMS`); called by constructors.

        Recorded in :attr:`spec` only when not ``"none"``, so the paper models' checkpoints are
        unchanged and older checkpoints load as ``"none"``.
        """
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        if input_norm == "none":
            self.spec.pop("input_norm", None)
        else:
            self.spec["input_norm"] = input_norm

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply :attr:`input_norm` to a checked ``(N, 3, H, W)`` batch.

        ``"per_image"`` divides by ``max(std, 1/sqrt(3*H*W))`` (as TensorFlow's
        ``per_image_standardization``) so a flat image is not blown up. Why it helps: the real
        GTSRB images range from nearly black to overexposed, and standardising removes most of
        that variation before the first convolution instead of leaving it to be learnt.
        """
        if self.input_norm == "none":
            return x
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        floor = 1.0 / math.sqrt(flat.shape[1])
        std = flat.std(1, unbiased=False).clamp_min(floor).view(-1, 1, 1, 1)
        return (x - mean) / std

    def keras_init(self) -> None:
        """Glorot-uniform weights and zero biases (Keras's defaults, the framework of the paper's models).

        PyTorch's default (Kaiming-uniform with a = sqrt(5)) starts these small networks with
        weaker signals, so they sit at chance for the first epochs; this init learns from the start.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- layer lookup -------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """All module names usable with :meth:`layer` (besides the roles)."""
        return [name for name, _ in self.named_modules() if name]

    def layer_name(self, role_or_name: str) -> str:
        """Resolve a role ("last_conv", "second_last_conv", "penultimate") or module name.

        Raises
        ------
        UnknownLayerError
            (a ``KeyError`` and a ``ValueError``) if it is neither a role nor a module name; the
            message lists the valid ones.
        """
        if not isinstance(role_or_name, str):
            raise TypeError(f"layer must be a role or module name (str), got {type(role_or_name).__name__}")
        if role_or_name in self.roles:
            return self.roles[role_or_name]
        names = self.layer_names()
        if role_or_name in names:
            return role_or_name
        raise UnknownLayerError(
            f"unknown layer {role_or_name!r} for {self.arch}: roles are {sorted(self.roles)}, "
            f"module names are {names}"
        )

    def layer(self, role_or_name: str) -> nn.Module:
        """The module for a role or module name (see :meth:`layer_name`)."""
        return self.get_submodule(self.layer_name(role_or_name))

    def classifier(self) -> nn.Module:
        """The last (output) layer: the only one trained in the ``trainable="last"`` setting."""
        return self.get_submodule(self.classifier_name)

    # -- pruning ------------------------------------------------------------------------------
    def prune(self, role_or_name: str, channels) -> None:
        """Silence output channels of a named block (Fine-Pruning); cumulative, not reset.

        Parameters
        ----------
        role_or_name : str
            A role or the name of a :class:`ConvReLU` / :class:`LinearReLU` block.
        channels : array-like of int, shape (k,)
            Channel indices in ``[0, out_channels)``.
        """
        block = self.layer(role_or_name)
        if not isinstance(block, _MaskedBlock):
            raise TypeError(
                f"layer {role_or_name!r} ({type(block).__name__}) cannot be pruned; "
                f"prunable blocks: {[n for n, m in self.named_modules() if isinstance(m, _MaskedBlock)]}"
            )
        idx = np.asarray(channels)
        if idx.size == 0:
            return
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"channels must be a 1-D integer array, got dtype {idx.dtype} shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= block.out_channels:
            raise ValueError(
                f"channel index out of range [0, {block.out_channels}) for layer {role_or_name!r}: "
                f"min {idx.min()}, max {idx.max()}"
            )
        with torch.no_grad():
            block.channel_mask[torch.as_tensor(idx, dtype=torch.long, device=block.channel_mask.device)] = 0.0

    def pruned_channels(self, role_or_name: str) -> np.ndarray:
        """Indices (int64) of the channels currently masked in a named block."""
        block = self.layer(role_or_name)
        if not isinstance(block, _MaskedBlock):
            raise TypeError(f"layer {role_or_name!r} ({type(block).__name__}) has no channel mask")
        return np.flatnonzero(block.channel_mask.detach().cpu().numpy() == 0).astype(np.int64)

    # -- input checks ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a float ``(N, 3, H, W)`` batch of this model's size."""
        if not torch.is_tensor(x):
            raise TypeError(f"{self.arch} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != tuple(self.input_size):
            raise ValueError(
                f"{self.arch} expects input of shape (N, 3, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.arch} expects float images in [0, 1], got dtype {x.dtype}")
