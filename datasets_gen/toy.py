"""A tiny poisoned variant for tests: learnable in seconds, written with the full schema.

:func:`make_toy_variant` draws a few classes of clearly distinct coloured shapes (disc, triangle,
square, cross, ring, bars, ...) with jitter in position and size and Gaussian pixel noise on a
noisy background, poisons a share of the source class with a trigger (default: 4x4 yellow square
in the image centre) relabelled to the target, and writes everything through
:func:`datasets_gen.variant_io.write_variant` (plus the manifest). A tiny CNN learns both the
classes and the backdoor within a couple of epochs.

Provenance mimics a real collection: clean training rows come in groups of ``group_size``
consecutive images of one class (like GTSRB tracks), and the poisoned rows form their own groups
(the attacker's contribution), so Data Provenance has something to find. It runs in well under a
second and is deterministic for a given seed.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import cv2
import numpy as np

from datasets_gen import __version__
from datasets_gen.poison import Recipe, select_poisoned
from datasets_gen.triggers import parse_trigger
from datasets_gen.variant_io import write_variant

#: (shape, RGB colour) per class; yellow is left out so the default trigger is unambiguous.
_CLASS_STYLES: list[tuple[str, tuple[int, int, int]]] = [
    ("disc", (220, 40, 40)),
    ("triangle", (40, 80, 230)),
    ("square", (40, 200, 60)),
    ("cross", (230, 230, 230)),
    ("ring", (200, 60, 200)),
    ("hbars", (40, 200, 200)),
    ("vbars", (240, 140, 20)),
    ("diamond", (20, 20, 20)),
    ("xcross", (150, 90, 40)),
    ("dot", (120, 220, 120)),
]

TOY_CLASS_NAMES = [f"{shape}-{i}" for i, (shape, _) in enumerate(_CLASS_STYLES)]


def _draw(shape: str, colour: tuple[int, int, int], img: np.ndarray, cx: float, cy: float, r: float) -> None:
    c = tuple(int(v) for v in colour)
    cxi, cyi, ri = int(round(cx)), int(round(cy)), max(2, int(round(r)))
    if shape == "disc":
        cv2.circle(img, (cxi, cyi), ri, c, -1)
    elif shape == "ring":
        cv2.circle(img, (cxi, cyi), ri, c, max(2, ri // 3))
    elif shape == "dot":
        cv2.circle(img, (cxi, cyi), max(2, ri // 2), c, -1)
    elif shape == "square":
        cv2.rectangle(img, (cxi - ri, cyi - ri), (cxi + ri, cyi + ri), c, -1)
    elif shape in ("triangle", "diamond"):
        if shape == "triangle":
            pts = [(cxi, cyi - ri), (cxi - ri, cyi + ri), (cxi + ri, cyi + ri)]
        else:
            pts = [(cxi, cyi - ri), (cxi + ri, cyi), (cxi, cyi + ri), (cxi - ri, cyi)]
        cv2.fillPoly(img, [np.array(pts, np.int32)], c)
    elif shape == "cross":
        t = max(2, ri // 2)
        cv2.rectangle(img, (cxi - ri, cyi - t // 2), (cxi + ri, cyi + t // 2), c, -1)
        cv2.rectangle(img, (cxi - t // 2, cyi - ri), (cxi + t // 2, cyi + ri), c, -1)
    elif shape == "xcross":
        cv2.line(img, (cxi - ri, cyi - ri), (cxi + ri, cyi + ri), c, 3)
        cv2.line(img, (cxi - ri, cyi + ri), (cxi + ri, cyi - ri), c, 3)
    elif shape in ("hbars", "vbars"):
        for k in (-1, 0, 1):
            o = k * ri * 2 // 3
            if shape == "hbars":
                cv2.rectangle(img, (cxi - ri, cyi + o - 1), (cxi + ri, cyi + o + 1), c, -1)
            else:
                cv2.rectangle(img, (cxi + o - 1, cyi - ri), (cxi + o + 1, cyi + ri), c, -1)
    else:  # pragma: no cover
        raise ValueError(f"unknown toy shape {shape!r}")


def toy_images(labels: np.ndarray, image_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one image per label.

    Parameters
    ----------
    labels : ndarray of shape (n,), int
        Class of each image (< 10).
    image_size : (H, W)
    rng : numpy Generator

    Returns
    -------
    ndarray of shape (n, H, W, 3), uint8
    """
    h, w = image_size
    n = labels.shape[0]
    # Dark, noisy backgrounds with a random tint so colour alone is not the background's.
    base = rng.integers(30, 110, size=(n, 1, 1, 3))
    imgs = base + rng.normal(0, 10, size=(n, h, w, 3))
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)
    s = min(h, w)
    cx = w / 2 + rng.uniform(-0.1, 0.1, n) * w
    cy = h / 2 + rng.uniform(-0.1, 0.1, n) * h
    r = s * rng.uniform(0.22, 0.3, n)
    for i in range(n):
        shape, colour = _CLASS_STYLES[int(labels[i])]
        jitter = np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255)
        _draw(shape, tuple(jitter), imgs[i], cx[i], cy[i], r[i])
    noise = rng.normal(0, 8, size=imgs.shape)
    return np.clip(imgs + noise, 0, 255).astype(np.uint8)


def _groups(rows: np.ndarray, group_size: int, start_id: int) -> tuple[np.ndarray, int]:
    ids = start_id + np.arange(rows.size) // group_size
    return ids.astype(np.int32), (int(ids[-1]) + 1 if rows.size else start_id)


def _count(name: str, v, minimum: int) -> int:
    # an integer, not anything int() accepts: n_classes="many" or 2.5 is a config mistake to name
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _checked(n_classes, n_train_per_class, n_test_per_class, n_clean_per_class, image_size, source_class,
             target_class, poison_share, trigger, group_size):
    """Validated arguments of :func:`make_toy_variant`: (n_classes, (H, W), recipe, trigger)."""
    k = _count("n_classes", n_classes, 2)
    if k > len(_CLASS_STYLES):
        raise ValueError(f"n_classes must be in [2, {len(_CLASS_STYLES)}], got {n_classes}")
    for name, v in (("n_train_per_class", n_train_per_class), ("n_test_per_class", n_test_per_class),
                    ("group_size", group_size)):
        _count(name, v, 1)
    _count("n_clean_per_class", n_clean_per_class, 0)
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    h, w = _count("image_size[0]", image_size[0], 12), _count("image_size[1]", image_size[1], 12)
    source_class, target_class = _count("source_class", source_class, 0), _count("target_class", target_class, 0)
    recipe = Recipe([source_class], target_class, trigger, poison_share, "source_class", name="toy",
                    notes="datasets_gen.toy test variant")
    recipe.check_classes(k)
    trig = recipe.build_trigger()
    trig.fitted((h, w))  # raises if the trigger is larger than the image
    return k, (h, w), recipe, trig


def check_toy_arguments(**kw) -> dict:
    """Check keyword arguments of :func:`make_toy_variant` without drawing anything.

    For configs that name toy data: the same checks as the builder, before any work.

    Returns
    -------
    dict
        ``n_classes``, ``image_size`` (H, W), ``source_class`` and ``target_class`` of the variant
        those arguments would give (defaults filled in).

    Raises
    ------
    ValueError
        An unknown argument or a value the builder would refuse; the argument is named.
    """
    try:
        bound = inspect.signature(make_toy_variant).bind("unused.h5", **kw)
    except TypeError as exc:
        raise ValueError(f"make_toy_variant: {exc}") from None
    bound.apply_defaults()
    a = bound.arguments
    k, hw, recipe, _ = _checked(a["n_classes"], a["n_train_per_class"], a["n_test_per_class"], a["n_clean_per_class"],
                                a["image_size"], a["source_class"], a["target_class"], a["poison_share"], a["trigger"],
                                a["group_size"])
    return {"n_classes": k, "image_size": hw, "source_class": recipe.source_classes[0],
            "target_class": recipe.target_class}


def make_toy_variant(path: str | os.PathLike, *, n_classes: int = 4, n_train_per_class: int = 60,
                     n_test_per_class: int = 20, n_clean_per_class: int = 10,
                     image_size: tuple[int, int] = (32, 32), source_class: int = 0, target_class: int = 1,
                     poison_share: float = 0.3, trigger: str = "square:4:yellow", seed: int = 0,
                     group_size: int = 10) -> Path:
    """Write a small poisoned variant (and its manifest) for tests and examples.

    Parameters
    ----------
    path : path-like
        Output ``.h5``.
    n_classes : int
        2..10 classes of distinct coloured shapes.
    n_train_per_class, n_test_per_class, n_clean_per_class : int
        Rows per class in ``train``, ``test`` and ``clean``.
    image_size : (H, W)
        At least 12x12.
    source_class, target_class : int
        The recipe: ``round(poison_share * n_train_per_class)`` source-class training images get
        the trigger and the target label (share of the source class).
    poison_share : float
        In (0, 1].
    trigger : str
        Trigger spec (:mod:`datasets_gen.triggers`); ``glasses@eyes`` uses the canonical eye
        positions (0.3 W, 0.4 H) and (0.7 W, 0.4 H).
    seed : int
    group_size : int
        Rows per provenance group.

    Returns
    -------
    Path
        ``path``.
    """
    k, (h, w), recipe, trig = _checked(n_classes, n_train_per_class, n_test_per_class, n_clean_per_class, image_size,
                                       source_class, target_class, poison_share, trigger, group_size)

    rng = np.random.default_rng(seed)
    n_pool_per_class = n_train_per_class + n_clean_per_class
    pool_labels = np.repeat(np.arange(k), n_pool_per_class)
    pool_images = toy_images(pool_labels, (h, w), rng)
    test_labels = np.repeat(np.arange(k), n_test_per_class)
    test_images = toy_images(test_labels, (h, w), rng)

    within = np.tile(np.arange(n_pool_per_class), k)
    train_rows = np.flatnonzero(within < n_train_per_class)
    clean_rows = np.flatnonzero(within >= n_train_per_class)

    train_labels = pool_labels[train_rows]
    poisoned = select_poisoned(train_labels, recipe, seed)
    train_images = pool_images[train_rows].copy()
    eyes = np.array([[[0.3 * w, 0.4 * h], [0.7 * w, 0.4 * h]]], np.float64)
    trig_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7819]))
    if poisoned.any():
        idx = np.flatnonzero(poisoned)
        train_images[idx] = trig.apply_batch(train_images[idx], rng=trig_rng,
                                             eyes=np.repeat(eyes, idx.size, 0))
    labels = train_labels.copy()
    labels[poisoned] = target_class

    # provenance: clean rows in per-class groups, poisoned rows in their own groups after them
    provenance = np.empty(train_rows.size, np.int32)
    next_id = 0
    for c in range(k):
        rows = np.flatnonzero((train_labels == c) & ~poisoned)
        provenance[rows], next_id = _groups(rows, group_size, next_id)
    prow = np.flatnonzero(poisoned)
    provenance[prow], next_id = _groups(prow, group_size, next_id)
    clean_prov = np.empty(clean_rows.size, np.int32)
    for c in range(k):
        rows = np.flatnonzero(pool_labels[clean_rows] == c)
        clean_prov[rows], next_id = _groups(rows, group_size, next_id)
    test_prov = (1_000_000 + np.arange(test_labels.size) // group_size).astype(np.int32)

    src = np.flatnonzero(np.isin(test_labels, recipe.source_classes))
    trig_images = trig.apply_batch(test_images[src].copy(), rng=trig_rng, eyes=np.repeat(eyes, src.size, 0))

    splits = {
        "train": {"images": train_images, "labels": labels, "original_labels": train_labels,
                  "is_poisoned": poisoned, "provenance": provenance, "index": train_rows.astype(np.int64)},
        "test": {"images": test_images, "labels": test_labels, "original_labels": test_labels,
                 "is_poisoned": np.zeros(test_labels.size, bool), "provenance": test_prov,
                 "index": np.arange(test_labels.size, dtype=np.int64)},
        "clean": {"images": pool_images[clean_rows], "labels": pool_labels[clean_rows],
                  "original_labels": pool_labels[clean_rows], "is_poisoned": np.zeros(clean_rows.size, bool),
                  "provenance": clean_prov, "index": clean_rows.astype(np.int64)},
        "test_triggered": {"images": trig_images, "labels": np.full(src.size, target_class, np.int64),
                           "original_labels": test_labels[src], "is_poisoned": np.ones(src.size, bool),
                           "provenance": test_prov[src], "index": src.astype(np.int64)},
    }
    recipe_d = recipe.to_dict()
    recipe_d["n_poisoned"] = int(poisoned.sum())
    attrs = {
        "recipe": recipe_d,
        "trigger": trig.to_dict(),
        "class_names": TOY_CLASS_NAMES[:k],
        "n_classes": k,
        "seed": int(seed),
        "generator_version": __version__,
        "source": "toy",
        "target_class": int(target_class),
        "source_classes": [int(source_class)],
        "image_shape": (h, w, 3),
    }
    return write_variant(path, splits, attrs)
