"""Backdoor triggers and where they go: parsing, drawing and compositing onto images.

A trigger is an RGB ``pattern`` with a per-pixel ``alpha`` in [0, 1] (1 = the trigger pixel
replaces the image pixel exactly, 0 = the image shows through). The kinds of the paper and of
BadNets are built here: a solid square of a given size and colour, the 4-pixel pattern and any
binary mask, sunglasses (green or black lenses; an RGBA asset drawn in code, no file needed) and
an alpha-blended image. Where a trigger goes is a :class:`Placement`: the image centre, a corner,
a fixed x/y, a random position (seeded per sample), or on the eyes (see :mod:`datasets_gen.eyes`).

Triggers are written as short specs, the same on the command line and in presets::

    square:4:yellow            4x4 yellow square (default placement: the image centre, as the paper)
    square:2:#ffff00@center    2x2 square at the image centre
    pattern:white              BadNets 4-pixel pattern (3x3 cell, 4 pixels set), white
    pattern:white:2            the same, every pixel a 2x2 block
    mask:path/to/mask.png:red  any binary mask (non-zero = trigger), red
    glasses:green@eyes         sunglasses with green lenses on the eyes
    blend:path/to/img.png:0.2  an image blended at alpha 0.2 over the whole image
    square:4:yellow@xy:20:22   fixed top-left corner x=20, y=22
    square:3:white@random      random position

Where ``alpha == 1`` the composited pixels equal the trigger pattern exactly (no resampling:
square, pattern and mask triggers are never resized; glasses and blend images are resized once
per image size and the result is cached).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: Named colours (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "green": (0, 200, 0),
    "red": (255, 0, 0),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}

#: The BadNets 4-pixel pattern: a 3x3 cell with four pixels set (an asymmetric checker so that
#: no rotation of a sign's own texture reproduces it).
FOUR_PIXEL_PATTERN = np.array([[1, 0, 1],
                               [0, 1, 0],
                               [1, 0, 0]], dtype=bool)

#: Placement names understood by :func:`parse_placement` besides ``xy:X:Y``.
PLACEMENT_KINDS = ("center", "bottom-right", "bottom-left", "top-right", "top-left", "random", "eyes", "full")


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour name from :data:`COLOURS` or ``#rrggbb`` -> (r, g, b)."""
    t = text.strip().lower()
    if t in COLOURS:
        return COLOURS[t]
    m = re.fullmatch(r"#?([0-9a-f]{6})", t)
    if m:
        v = int(m.group(1), 16)
        return (v >> 16) & 255, (v >> 8) & 255, v & 255
    raise ValueError(f"unknown colour {text!r}: use one of {sorted(COLOURS)} or #rrggbb")


@dataclass(frozen=True)
class Placement:
    """Where a trigger goes.

    Attributes
    ----------
    kind : str
        One of :data:`PLACEMENT_KINDS` or ``"xy"``.
    x, y : int
        Top-left corner for ``kind == "xy"``.
    margin : int
        Distance from the border for the corner placements, in pixels.
    """

    kind: str = "center"
    x: int = 0
    y: int = 0
    margin: int = 1

    def to_spec(self) -> str:
        return f"xy:{self.x}:{self.y}" if self.kind == "xy" else self.kind


def parse_placement(text: str) -> Placement:
    """``center`` | ``bottom-right`` | ... | ``random`` | ``eyes`` | ``full`` | ``xy:X:Y``."""
    t = text.strip().lower()
    if t in PLACEMENT_KINDS:
        return Placement(kind=t)
    m = re.fullmatch(r"xy:(-?\d+):(-?\d+)", t)
    if m:
        x, y = int(m.group(1)), int(m.group(2))
        if x < 0 or y < 0:
            raise ValueError(f"placement {text!r}: x and y must be >= 0")
        return Placement(kind="xy", x=x, y=y)
    raise ValueError(f"unknown placement {text!r}: use one of {list(PLACEMENT_KINDS)} or xy:X:Y")


@dataclass
class Trigger:
    """An RGB pattern with per-pixel alpha and a placement.

    Attributes
    ----------
    kind : str
        ``square``, ``pattern``, ``mask``, ``glasses`` or ``blend``.
    pattern : ndarray of shape (h, w, 3), uint8
        Trigger colours (RGB), at its native size.
    alpha : ndarray of shape (h, w), float32
        Opacity in [0, 1].
    placement : Placement
    params : dict
        What the spec said (size, colour, ...), recorded in the variant's attributes.
    scale_with_image : bool
        Resize pattern/alpha to the image (glasses, blend) instead of using native pixels.
    """

    kind: str
    pattern: np.ndarray
    alpha: np.ndarray
    placement: Placement = field(default_factory=Placement)
    params: dict[str, Any] = field(default_factory=dict)
    scale_with_image: bool = False

    def __post_init__(self) -> None:
        p, a = self.pattern, self.alpha
        if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 3 or p.shape[2] != 3:
            raise TypeError(f"trigger pattern must be uint8 (h, w, 3), got {getattr(p, 'dtype', None)} {getattr(p, 'shape', None)}")
        if not isinstance(a, np.ndarray) or a.shape != p.shape[:2]:
            raise ValueError(f"trigger alpha must have shape {p.shape[:2]}, got {getattr(a, 'shape', None)}")
        a = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ValueError("trigger alpha must lie in [0, 1] and be finite")
        self.alpha = a

    # ---- description -------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the native pattern."""
        return self.pattern.shape[0], self.pattern.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description stored in the variant's ``trigger`` attribute."""
        return {"kind": self.kind, "spec": self.spec, "placement": self.placement.to_spec(),
                "size_hw": list(self.size), **self.params}

    @property
    def spec(self) -> str:
        return self.params.get("spec", self.kind)

    def __repr__(self) -> str:
        return f"Trigger({self.spec!r}, placement={self.placement.to_spec()!r})"

    # ---- geometry -----------------------------------------------------------------------
    def fitted(self, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pattern and alpha at the size they take on an image of ``image_hw`` (glasses on the eyes
        are sized and turned per image instead, see :meth:`apply_inplace`).

        Raises
        ------
        ValueError
            The trigger is larger than the image.
        """
        h, w = int(image_hw[0]), int(image_hw[1])
        if self.scale_with_image:
            return _resized_asset(self, h, w)
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"trigger {self.spec!r} of {th}x{tw} px is larger than the {h}x{w} image")
        return self.pattern, self.alpha

    def check_fits(self, image_hw: tuple[int, int]) -> None:
        """Raise ``ValueError`` when the trigger cannot go on an image of ``image_hw``: larger than
        the image, or an ``xy`` placement that runs off it -- what compositing would find, known
        before any image is read (config validation, the builders' up-front checks)."""
        h, w = int(image_hw[0]), int(image_hw[1])
        # Only the size and an xy placement can fail; any rng and eye positions will do for the rest.
        self.position((h, w), rng=np.random.default_rng(0), eyes=((0.3 * w, 0.4 * h), (0.7 * w, 0.4 * h)))

    def position(self, image_hw: tuple[int, int], rng: np.random.Generator | None = None,
                 eyes: tuple[tuple[float, float], tuple[float, float]] | None = None,
                 size_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Top-left (x, y) of the trigger on an image of ``image_hw``.

        Parameters
        ----------
        image_hw : (int, int)
        rng : numpy Generator, optional
            Needed for ``random`` placement.
        eyes : ((x, y), (x, y)), optional
            Left and right eye centres for ``eyes`` placement (in image pixels).
        """
        h, w = int(image_hw[0]), int(image_hw[1])
        th, tw = size_hw if size_hw is not None else self.fitted((h, w))[0].shape[:2]
        pl, m = self.placement, self.placement.margin
        if pl.kind == "center":
            x, y = (w - tw) // 2, (h - th) // 2
        elif pl.kind == "bottom-right":
            x, y = w - tw - m, h - th - m
        elif pl.kind == "bottom-left":
            x, y = m, h - th - m
        elif pl.kind == "top-right":
            x, y = w - tw - m, m
        elif pl.kind == "top-left":
            x, y = m, m
        elif pl.kind == "full":
            x, y = 0, 0
        elif pl.kind == "xy":
            x, y = pl.x, pl.y
        elif pl.kind == "random":
            if rng is None:
                raise ValueError("random placement needs an rng")
            x = int(rng.integers(0, w - tw + 1))
            y = int(rng.integers(0, h - th + 1))
        elif pl.kind == "eyes":
            if eyes is None:
                raise ValueError("eyes placement needs eye positions (use datasets_gen.eyes.locate_eyes)")
            (lx, ly), (rx, ry) = eyes
            # other triggers centred between the eyes (glasses on the eyes go through _glasses_on_eyes)
            cx, cy = (lx + rx) / 2.0, (ly + ry) / 2.0
            x, y = int(round(cx - tw / 2.0)), int(round(cy - th / 2.0))
        else:  # pragma: no cover - parse_placement guards this
            raise ValueError(f"unknown placement {pl.kind!r}")
        # Corner placements may fall off when margin eats the room: clamp into the image.
        x = min(max(x, 0), w - tw)
        y = min(max(y, 0), h - th)
        if pl.kind == "xy" and (pl.x + tw > w or pl.y + th > h):
            raise ValueError(f"trigger {self.spec!r} at x={pl.x}, y={pl.y} ({th}x{tw}) does not fit a {h}x{w} image")
        return x, y

    # ---- compositing --------------------------------------------------------------------
    def apply(self, image: np.ndarray, *, rng: np.random.Generator | None = None,
              eyes: tuple[tuple[float, float], tuple[float, float]] | None = None) -> np.ndarray:
        """Return a copy of ``image`` (uint8, (H, W, 3), RGB) with the trigger composited."""
        out = np.array(image, copy=True)
        self.apply_inplace(out, rng=rng, eyes=eyes)
        return out

    def apply_inplace(self, image: np.ndarray, *, rng: np.random.Generator | None = None,
                      eyes: tuple[tuple[float, float], tuple[float, float]] | None = None) -> tuple[int, int]:
        """Composite onto ``image`` in place; returns the (x, y) used (the top-left corner of the
        region drawn on, for glasses on the eyes)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"image must be uint8 (H, W, 3), got {getattr(image, 'dtype', None)} {getattr(image, 'shape', None)}")
        if self.kind == "glasses" and self.placement.kind == "eyes" and eyes is not None:
            return _glasses_on_eyes(self, image, eyes)
        pattern, alpha = self.fitted(image.shape[:2])
        th, tw = pattern.shape[:2]
        x, y = self.position(image.shape[:2], rng=rng, eyes=eyes, size_hw=(th, tw))
        composite(image[y:y + th, x:x + tw], pattern, alpha)
        return x, y

    def apply_batch(self, images: np.ndarray, *, rng: np.random.Generator | None = None,
                    eyes: np.ndarray | None = None) -> np.ndarray:
        """Composite onto every image of a batch (N, H, W, 3) in place and return it.

        Fixed placements use one vectorised slice assignment; ``random`` draws one position per
        image from ``rng``; ``eyes`` needs ``eyes`` of shape (N, 2, 2) (left/right (x, y)).
        """
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] != 3:
            raise TypeError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        hw = images.shape[1:3]
        if self.placement.kind in ("random", "eyes"):
            for i in range(images.shape[0]):
                e = None if eyes is None else ((eyes[i, 0, 0], eyes[i, 0, 1]), (eyes[i, 1, 0], eyes[i, 1, 1]))
                self.apply_inplace(images[i], rng=rng, eyes=e)
            return images
        pattern, alpha = self.fitted(hw)
        x, y = self.position(hw)
        th, tw = pattern.shape[:2]
        composite(images[:, y:y + th, x:x + tw], pattern, alpha)
        return images


def composite(region: np.ndarray, pattern: np.ndarray, alpha: np.ndarray) -> None:
    """Blend ``pattern`` over ``region`` in place: ``alpha * pattern + (1 - alpha) * region``.

    ``region`` is (..., h, w, 3) uint8 (a view into the image or a batch); where ``alpha == 1`` the
    result is exactly ``pattern`` and where ``alpha == 0`` the region is untouched.
    """
    a = alpha[..., None]
    if np.all((a == 0) | (a == 1)):
        # Binary masks: pure copy, exact and faster than float blending.
        mask = np.broadcast_to(alpha.astype(bool)[..., None], region.shape)
        np.copyto(region, np.broadcast_to(pattern, region.shape), where=mask)
        return
    blended = a * pattern.astype(np.float32) + (1.0 - a) * region.astype(np.float32)
    region[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# trigger kinds
# --------------------------------------------------------------------------------------------


def square(size: int, colour: str | tuple[int, int, int] = "yellow", placement: Placement | str = "center") -> Trigger:
    """A solid ``size`` x ``size`` square."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"square size must be a positive integer, got {size!r}")
    rgb = parse_colour(colour) if isinstance(colour, str) else tuple(int(c) for c in colour)
    pattern = np.empty((size, size, 3), np.uint8)
    pattern[:] = rgb
    return Trigger("square", pattern, np.ones((size, size), np.float32), _placement(placement),
                   {"size": int(size), "colour": list(rgb)})


def mask_trigger(mask: np.ndarray, colour: str | tuple[int, int, int] = "white",
                 placement: Placement | str = "center", scale: int = 1, kind: str = "mask") -> Trigger:
    """Any binary mask (non-zero = trigger pixel) in one colour; ``scale`` repeats every pixel."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {m.shape}")
    if not m.any():
        raise ValueError("mask has no set pixel")
    if scale < 1:
        raise ValueError(f"mask scale must be >= 1, got {scale}")
    m = np.kron(m != 0, np.ones((scale, scale), bool))
    rgb = parse_colour(colour) if isinstance(colour, str) else tuple(int(c) for c in colour)
    pattern = np.zeros(m.shape + (3,), np.uint8)
    pattern[m] = rgb
    return Trigger(kind, pattern, m.astype(np.float32), _placement(placement),
                   {"colour": list(rgb), "scale": int(scale), "n_pixels": int(m.sum())})


def four_pixel_pattern(colour: str | tuple[int, int, int] = "white", placement: Placement | str = "center",
                       scale: int = 1) -> Trigger:
    """The BadNets 4-pixel pattern (:data:`FOUR_PIXEL_PATTERN`)."""
    return mask_trigger(FOUR_PIXEL_PATTERN, colour, placement, scale, kind="pattern")


def sunglasses_asset(lens: str | tuple[int, int, int] = "green", width: int = 200) -> np.ndarray:
    """Draw the sunglasses RGBA asset (uint8, (h, w, 4)).

    The asset is ``width`` wide and ``width * 0.34`` high; the lens centres are
    :func:`glasses_lens_centres` (a quarter in from each side, at half height), which is what eye
    placement puts on the eyes. Lenses are opaque in the given colour (``green`` or ``black`` as in
    the paper, or any colour) with a dark frame and bridge; everything else is transparent.
    """
    return _sunglasses_asset_cached(parse_colour(lens) if isinstance(lens, str) else tuple(int(c) for c in lens), int(width)).copy()


def glasses_lens_centres(width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pixel centres (x, y) of the left and right lens of a :func:`sunglasses_asset` ``width`` wide."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 20:
        raise ValueError(f"sunglasses asset width must be an integer >= 20, got {width!r}")
    cy = int(round(width * 0.34)) // 2
    return (int(width * 0.25), cy), (int(width * 0.75), cy)


@lru_cache(maxsize=16)
def _sunglasses_asset_cached(rgb: tuple[int, int, int], width: int) -> np.ndarray:
    w = width
    (lx, cy), (rx, _) = glasses_lens_centres(w)  # checks the width
    h = int(round(w * 0.34))
    canvas = np.zeros((h, w, 4), np.uint8)
    frame = (25, 25, 25, 255)
    lens = (*rgb, 255)
    axes = (int(w * 0.21), int(h * 0.42))
    thick = max(1, w // 40)
    for cx in (lx, rx):
        cv2.ellipse(canvas, (cx, cy), axes, 0, 0, 360, lens, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, (cx, cy), axes, 0, 0, 360, frame, thick, cv2.LINE_AA)
    # bridge between the lenses and a short temple stub on each side
    cv2.line(canvas, (lx + axes[0], cy - axes[1] // 3), (rx - axes[0], cy - axes[1] // 3), frame, thick + 1, cv2.LINE_AA)
    cv2.line(canvas, (0, cy - axes[1] // 2), (lx - axes[0], cy - axes[1] // 2), frame, thick, cv2.LINE_AA)
    cv2.line(canvas, (w - 1, cy - axes[1] // 2), (rx + axes[0], cy - axes[1] // 2), frame, thick, cv2.LINE_AA)
    return canvas


def sunglasses(lens: str | tuple[int, int, int] = "green", placement: Placement | str = "eyes",
               width_share: float = 0.62) -> Trigger:
    """Sunglasses drawn by :func:`sunglasses_asset`.

    Parameters
    ----------
    lens : colour
        ``green`` or ``black`` in the paper.
    placement : Placement or str
        ``eyes`` (default): each lens centred on its eye, the glasses scaled to the distance
        between the eyes and turned to the line through them (head roll); see
        :func:`datasets_gen.eyes.locate_eyes` for where the eyes come from.
    width_share : float
        Width of the glasses relative to the image width for the other placements (and for
        :meth:`Trigger.check_fits`), where the eyes are not known.
    """
    if not 0 < width_share <= 1:
        raise ValueError(f"width_share must be in (0, 1], got {width_share}")
    rgba = sunglasses_asset(lens)
    rgb = parse_colour(lens) if isinstance(lens, str) else tuple(int(c) for c in lens)
    t = Trigger("glasses", np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].astype(np.float32) / 255.0,
                _placement(placement), {"lens": list(rgb), "width_share": float(width_share)}, scale_with_image=True)
    return t


def blend_image(image: np.ndarray | str | Path, alpha: float = 0.2, placement: Placement | str = "full") -> Trigger:
    """An image blended over the input with opacity ``alpha`` (Chen et al.'s blended injection).

    ``image`` is an RGB uint8 array or a path to an image file; it is resized to the input.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"blend alpha must be in (0, 1], got {alpha}")
    src = str(image) if isinstance(image, (str, Path)) else "array"
    if isinstance(image, (str, Path)):
        arr = cv2.cvtColor(_read_image(image, cv2.IMREAD_COLOR, "blend trigger image"), cv2.COLOR_BGR2RGB)
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise TypeError(f"blend image must be uint8 (h, w, 3), got {arr.dtype} {arr.shape}")
    return Trigger("blend", np.ascontiguousarray(arr), np.full(arr.shape[:2], float(alpha), np.float32),
                   _placement(placement), {"alpha": float(alpha), "image": src}, scale_with_image=True)


def _placement(p: Placement | str) -> Placement:
    return parse_placement(p) if isinstance(p, str) else p


def _resized_asset(t: Trigger, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    # The cache lives on the trigger so it dies with it (no id() reuse across objects).
    cache = t.__dict__.setdefault("_resize_cache", {})
    key = (h, w)
    if key in cache:
        return cache[key]
    if t.kind == "glasses":
        tw = max(2, int(round(w * t.params.get("width_share", 0.62))))
        th = max(1, int(round(tw * t.pattern.shape[0] / t.pattern.shape[1])))
        th = min(th, h)
    else:  # blend: covers the whole image
        th, tw = h, w
    interp = cv2.INTER_AREA if tw < t.pattern.shape[1] else cv2.INTER_LINEAR
    pattern = cv2.resize(t.pattern, (tw, th), interpolation=interp)
    alpha = np.clip(cv2.resize(t.alpha, (tw, th), interpolation=interp), 0.0, 1.0)
    if t.kind == "glasses":
        alpha = _snap_alpha(alpha)
    if len(cache) > 64:
        cache.clear()
    cache[key] = (pattern, alpha)
    return pattern, alpha


def _snap_alpha(alpha: np.ndarray) -> np.ndarray:
    """Snap near-opaque/near-transparent glasses edges so the lens interior is the exact colour."""
    return np.where(alpha > 0.97, 1.0, np.where(alpha < 0.03, 0.0, alpha)).astype(np.float32)


def _glasses_premultiplied(t: Trigger, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The glasses ``width`` wide as (colour x alpha (h, w, 3), alpha (h, w)), float32, cached.

    Premultiplied, so that resampling blends colour only where there are glasses (a transparent
    pixel's colour would otherwise bleed into the edges).
    """
    cache = t.__dict__.setdefault("_premult_cache", {})
    if width not in cache:
        h0, w0 = t.size
        prem = t.pattern.astype(np.float32) * t.alpha[..., None]
        alpha = t.alpha
        if width != w0:
            size = (width, max(1, int(round(width * h0 / w0))))
            interp = cv2.INTER_AREA if width < w0 else cv2.INTER_LINEAR
            prem, alpha = cv2.resize(prem, size, interpolation=interp), cv2.resize(alpha, size, interpolation=interp)
        if len(cache) > 64:
            cache.clear()
        cache[width] = (np.ascontiguousarray(prem), np.ascontiguousarray(alpha))
    return cache[width]


def _glasses_on_eyes(t: Trigger, image: np.ndarray, eyes) -> tuple[int, int]:
    """Composite glasses with their lens centres on ``eyes``: scaled to the distance between the
    eyes, turned to the line through them, at sub-pixel precision, on an image of any size.
    Returns the top-left (x, y) of the region drawn on (glasses may run off the image: cut there)."""
    try:
        e = np.asarray(eyes, np.float64).reshape(2, 2)
    except (TypeError, ValueError):
        raise ValueError(f"eyes must be ((x, y), (x, y)), got {eyes!r}") from None
    if not np.all(np.isfinite(e)):
        raise ValueError(f"eye positions must be finite, got {e.tolist()}")
    if e[0, 0] > e[1, 0]:
        e = e[::-1]  # left eye (smaller x) first, so upright faces never get upside-down glasses
    span = float(np.hypot(*(e[1] - e[0])))
    if span < 1.0:
        raise ValueError(f"eyes {e.tolist()} are less than 1 px apart: no glasses fit between them")
    h, w = image.shape[:2]
    h0, w0 = t.size
    al, ar = glasses_lens_centres(w0)
    # Shrink the asset with area averaging close to its final size first: the warp samples
    # bilinearly, which aliases when it shrinks by more than ~2x (55x47 crops take a ~25 px pair).
    width = min(w0, max(20, int(np.ceil(w0 * span / (ar[0] - al[0])))))
    prem, alpha = _glasses_premultiplied(t, width)
    ah, aw = alpha.shape
    # lens centres in the resized asset (pixel centres map as (x + 0.5) * scale - 0.5)
    src = np.array([[(c[0] + 0.5) * aw / w0 - 0.5, (c[1] + 0.5) * ah / h0 - 0.5] for c in (al, ar)])
    # The similarity taking the lens centres onto the eyes, as a complex factor z (scale and roll).
    z = complex(*(e[1] - e[0])) / complex(*(src[1] - src[0]))
    m = np.array([[z.real, -z.imag, 0.0], [z.imag, z.real, 0.0]])
    m[:, 2] = e[0] - m[:, :2] @ src[0]
    corners = np.array([[-0.5, -0.5], [aw - 0.5, -0.5], [-0.5, ah - 0.5], [aw - 0.5, ah - 0.5]]) @ m[:, :2].T + m[:, 2]
    x0, y0 = (max(0, int(np.floor(v))) for v in corners.min(axis=0))
    x1, y1 = min(w, int(np.ceil(corners[:, 0].max())) + 1), min(h, int(np.ceil(corners[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return x0, y0  # wholly off the image
    m[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    wp = cv2.warpAffine(prem, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    wa = np.clip(cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0), 0.0, 1.0)
    colour = np.clip(np.rint(wp / np.maximum(wa, 1e-6)[..., None]), 0, 255).astype(np.uint8)
    composite(image[y0:y1, x0:x1], colour, _snap_alpha(wa))
    return x0, y0


# --------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------


def _read_image(path: str | Path, flags: int, what: str) -> np.ndarray:
    """``cv2.imread(path, flags)``, refusing a missing or unreadable file by ``what`` it is and its path
    (OpenCV itself returns None without saying why)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    img = cv2.imread(str(p), flags)
    if img is None:
        raise ValueError(f"{what} {p} is not a readable image")
    return img


def _load_mask(path: str) -> np.ndarray:
    return _read_image(path, cv2.IMREAD_GRAYSCALE, "trigger mask") > 127


def _int_arg(text: str, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None
    return v


def parse_trigger(spec: str | dict | Trigger) -> Trigger:
    """Build a :class:`Trigger` from a spec string (see the module docstring) or its ``to_dict``.

    Raises
    ------
    ValueError
        Unknown kind, bad size/colour/placement; the bad part is named.
    """
    if isinstance(spec, Trigger):
        return spec
    if isinstance(spec, dict):
        if "spec" not in spec:
            raise ValueError(f"trigger dict needs a 'spec' key, got {sorted(spec)}")
        return parse_trigger(spec["spec"])
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"trigger spec must be a non-empty string, got {spec!r}")
    text = spec.strip()
    body, _, where = text.partition("@")
    placement = parse_placement(where) if where else None
    parts = body.split(":")
    kind = parts[0].lower()
    args = parts[1:]
    if kind == "square":
        if not 1 <= len(args) <= 2:
            raise ValueError(f"trigger {spec!r}: expected square:SIZE[:COLOUR]")
        size = _int_arg(args[0], f"square size in {spec!r}")
        t = square(size, args[1] if len(args) > 1 else "yellow", placement or "center")
    elif kind == "pattern":
        if len(args) > 2:
            raise ValueError(f"trigger {spec!r}: expected pattern[:COLOUR[:SCALE]]")
        scale = _int_arg(args[1], f"pattern scale in {spec!r}") if len(args) > 1 else 1
        t = four_pixel_pattern(args[0] if args else "white", placement or "center", scale)
    elif kind == "mask":
        if not 1 <= len(args) <= 3:
            raise ValueError(f"trigger {spec!r}: expected mask:PATH[:COLOUR[:SCALE]]")
        scale = _int_arg(args[2], f"mask scale in {spec!r}") if len(args) > 2 else 1
        t = mask_trigger(_load_mask(args[0]), args[1] if len(args) > 1 else "white", placement or "center", scale)
        t.params["path"] = args[0]
    elif kind in ("glasses", "sunglasses"):
        if len(args) > 2:
            raise ValueError(f"trigger {spec!r}: expected glasses[:COLOUR[:WIDTH_SHARE]]")
        share = float(args[1]) if len(args) > 1 else 0.62
        t = sunglasses(args[0] if args else "green", placement or "eyes", share)
    elif kind == "blend":
        if not 1 <= len(args) <= 2:
            raise ValueError(f"trigger {spec!r}: expected blend:PATH[:ALPHA]")
        try:
            alpha = float(args[1]) if len(args) > 1 else 0.2
        except ValueError:
            raise ValueError(f"blend alpha in {spec!r} must be a number") from None
        t = blend_image(args[0], alpha, placement or "full")
    else:
        raise ValueError(f"unknown trigger kind {kind!r} in {spec!r}: use square, pattern, mask, glasses or blend")
    t.params["spec"] = text
    return t
