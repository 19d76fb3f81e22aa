"""Training-time data augmentation on whole batches: small random affine moves plus photometric jitter.

Small real subsets (the GTSRB subset in ``shared/data/gtsrb-32`` holds 5 tracks, about 215
distinct signs, per class) let the victim CNN memorise the training frames; a little geometric
and photometric variety narrows the gap between training and test accuracy. The paper's presets
train without augmentation and stay so: augmentation is an opt-in field of
:class:`backdoorlab.train.TrainConfig` (``augment=None`` by default).

What one :class:`Augmentation` does to a float batch ``(B, C, H, W)`` in [0, 1], per image:

1. an affine resampling (``F.affine_grid`` + ``F.grid_sample``, bilinear, edges replicated):
   rotation by ``U(-rotate_deg, rotate_deg)``, zoom by a factor ``U(1 - scale, 1 + scale)``,
   shift by ``U(-translate_px, translate_px)`` pixels along each axis; all built in pixel units,
   so non-square inputs (DeepID's 55x47) are rotated without shear;
2. contrast: ``(x - mean) * c + mean`` with ``c ~ U(1 - contrast, 1 + contrast)`` and ``mean``
   the image's mean over pixels and channels;
3. brightness: ``x * b`` with ``b ~ U(1 - brightness, 1 + brightness)``; clamp to [0, 1].

No horizontal flips: traffic signs are not mirror-symmetric (a "turn left" sign mirrored is a
"turn right" sign).

Reproducibility: :func:`epoch_params` draws every image's parameters of one epoch from a
generator seeded by ``(seed, epoch)`` (a stream of its own, distinct from the shuffle's and
independent of the global torch RNG, so dropout draws do not change when augmentation is
switched on). A resumed run therefore sees exactly the augmentations of an uninterrupted one.

The backdoor trigger: poisoned training images already carry the trigger when they are
augmented, so the trigger is rotated, zoomed, shifted and re-lit together with the sign. The
model thus learns a trigger that may sit a few pixels off centre and slightly blurred; the test
trigger (exactly in the centre, not augmented) lies inside that range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backdoorlab.seeding import keyed_generator

#: Columns of the per-image parameter table drawn by :func:`epoch_params`.
PARAM_COLUMNS = ("angle_rad", "zoom", "shift_x_px", "shift_y_px", "contrast", "brightness")

# Salt that separates the augmentation stream from the shuffle stream ``(seed, epoch)``.
_STREAM = 0xA067


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random per-image transform (validated on construction; 0 switches a part off).

    Parameters
    ----------
    rotate_deg : float
        Maximum rotation in degrees, in [0, 180].
    scale : float
        Zoom factor drawn from ``[1 - scale, 1 + scale]``; in [0, 1).
    translate_px : float
        Maximum shift in pixels along each axis, >= 0.
    brightness : float
        Brightness factor drawn from ``[1 - brightness, 1 + brightness]``; in [0, 1).
    contrast : float
        Contrast factor drawn from ``[1 - contrast, 1 + contrast]``; in [0, 1).
    """

    rotate_deg: float = 0.0
    scale: float = 0.0
    translate_px: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise ValueError(f"Augmentation.{f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"Augmentation.{f.name} must be >= 0, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        if self.rotate_deg > 180:
            raise ValueError(f"Augmentation.rotate_deg must be <= 180, got {self.rotate_deg!r}")
        for name in ("scale", "brightness", "contrast"):
            if getattr(self, name) >= 1:
                raise ValueError(f"Augmentation.{name} must be < 1 (a factor range [1 - v, 1 + v] "
                                 f"that stays positive), got {getattr(self, name)!r}")

    @property
    def geometric(self) -> bool:
        """Whether any affine part is switched on."""
        return self.rotate_deg > 0 or self.scale > 0 or self.translate_px > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_spec(cls, spec) -> "Augmentation | None":
        """An :class:`Augmentation` (or None for no augmentation) from an instance, a name of
        :data:`AUGMENTATIONS`, a dict of fields, or None."""
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            if spec not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {spec!r}; choose one of {sorted(AUGMENTATIONS)}")
            return AUGMENTATIONS[spec]
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"unknown Augmentation fields {unknown}; known: "
                                 f"{[f.name for f in dataclasses.fields(cls)]}")
            return cls(**spec)
        raise TypeError(f"augmentation must be None, a name, a dict or an Augmentation, got {type(spec).__name__}")


#: Named settings. ``"gtsrb"``: +-10 degrees, zoom +-10 %, shift +-2 px (a camera's framing between
#: frames of a sign), brightness x[0.3, 1.7] and contrast x[0.5, 1.5]: the GTSRB test set holds
#: many signs photographed in near darkness, which the 5 training tracks of a class may lack.
AUGMENTATIONS: dict[str, Augmentation | None] = {
    "none": None,
    "gtsrb": Augmentation(rotate_deg=10.0, scale=0.1, translate_px=2.0, brightness=0.7, contrast=0.5),
}


def epoch_params(aug: Augmentation, n: int, seed: int, epoch: int) -> torch.Tensor:
    """Per-image transform parameters of one epoch: float32 ``(n, 6)``, columns :data:`PARAM_COLUMNS`.

    Row ``i`` belongs to the ``i``-th image *in the epoch's order* (position, not dataset index).
    Depends only on ``(aug, n, seed, epoch)``.
    """
    if not isinstance(aug, Augmentation):
        raise TypeError(f"aug must be an Augmentation, got {type(aug).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    u = torch.rand(int(n), len(PARAM_COLUMNS), generator=keyed_generator(seed, epoch, _STREAM), dtype=torch.float64)
    u = u * 2 - 1  # U(-1, 1)
    half_ranges = torch.tensor([math.radians(aug.rotate_deg), aug.scale, aug.translate_px, aug.translate_px,
                                aug.contrast, aug.brightness], dtype=torch.float64)
    offsets = torch.tensor([0, 1, 0, 0, 1, 1], dtype=torch.float64)
    return (u * half_ranges + offsets).float()


def apply(aug: Augmentation, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Augment the float batch ``x`` (B, C, H, W) in [0, 1] with ``params`` (B, 6) from :func:`epoch_params`.

    Returns a new float tensor of ``x``'s shape and device, in [0, 1]; ``x`` is not modified.
    """
    if not isinstance(aug, Augmentation):
        raise TypeError(f"aug must be an Augmentation, got {type(aug).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (B, C, H, W) tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    b, _, h, w = x.shape
    if not isinstance(params, torch.Tensor) or tuple(params.shape) != (b, len(PARAM_COLUMNS)):
        raise ValueError(f"params must be a ({b}, {len(PARAM_COLUMNS)}) tensor for a batch of {b}, "
                         f"got {tuple(getattr(params, 'shape', ()))}")
    p = params.to(device=x.device, dtype=x.dtype)
    out = x
    if aug.geometric:
        angle, zoom, sx, sy = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output to input coordinates, normalised to [-1, 1] per axis. In pixel
        # units the map is R(angle)/zoom plus a shift; conjugating with diag(W/2, H/2) gives the
        # normalised matrix, so a non-square image is rotated without shear.
        theta = torch.stack([
            torch.stack([cos, -sin * (h / w), sx * (2.0 / w)], dim=1),
            torch.stack([sin * (w / h), cos, sy * (2.0 / h)], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.contrast > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * p[:, 4].view(b, 1, 1, 1) + mean
    if aug.brightness > 0:
        out = out * p[:, 5].view(b, 1, 1, 1)
    if out is x:
        return x.clone()
    return out.clamp_(0.0, 1.0)
