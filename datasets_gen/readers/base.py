"""What every source of images gives the builder: split tables (metadata only) and a batch loader.

A reader scans a data set's folder once and keeps only metadata — path, class, provenance id,
stable row index (and GTSRB's ROI) — in a :class:`SplitTable` per split (``train``, ``test``,
``clean``). Pixels are decoded per batch by :meth:`Source.load`, resized to the model input, so a
YouTube-Faces-scale source (hundreds of thousands of images) is never held in memory at once.
Synthetic sources implement the same interface and render instead of decode.

Unreadable images are skipped and counted (:attr:`Source.skipped`), or raise ``ValueError``
naming the file when the source is ``strict``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

#: The splits a source provides (``test_triggered`` is made by the builder from ``test``).
SOURCE_SPLITS = ("train", "test", "clean")


@dataclass
class SplitTable:
    """Metadata of one split, row-aligned.

    Attributes
    ----------
    keys : list
        What :meth:`Source.load` needs per row: a file path (readers) or an int (synthetic).
    labels : ndarray of shape (n,), int64
    provenance : ndarray of shape (n,), int32
        Source id (GTSRB track, YTAF video, ...).
    index : ndarray of shape (n,), int64
        Stable row id in the source (same for every variant of the source).
    extra : dict of ndarray
        Per-row extras, e.g. ``roi`` (n, 4) and ``csv_size`` (n, 2) for GTSRB, ``eyes`` (n, 2, 2).
    """

    keys: list[Any]
    labels: np.ndarray
    provenance: np.ndarray
    index: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.labels = np.asarray(self.labels, np.int64)
        self.provenance = np.asarray(self.provenance, np.int32)
        self.index = np.asarray(self.index, np.int64)
        for name in ("labels", "provenance", "index"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"SplitTable.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        for name, arr in self.extra.items():
            if len(arr) != n:
                raise ValueError(f"SplitTable.extra[{name!r}] has {len(arr)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray | Sequence[int]) -> "SplitTable":
        """The table restricted to ``rows`` (in that order)."""
        r = np.asarray(rows, np.int64)
        return SplitTable([self.keys[i] for i in r], self.labels[r], self.provenance[r], self.index[r],
                          {k: v[r] for k, v in self.extra.items()})


def read_image_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file to RGB uint8 (H, W, 3); grayscale becomes 3 equal channels.

    Returns None when the file cannot be decoded (missing, empty, corrupt, unknown format).
    """
    # IMREAD_COLOR always yields 3 channels (gray replicated), dropping alpha.
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_to(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize to (H, W): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = size_hw
    if image.shape[0] == h and image.shape[1] == w:
        return image
    shrinking = image.shape[0] >= h and image.shape[1] >= w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def validate_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {(h, w)}")
    return h, w


def stratified_split(labels: np.ndarray, shares: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split row ids into parts with the given shares, per class (stratified), seeded.

    Per class the counts are rounded so they add up to the class size; every part is sorted.

    Returns
    -------
    list of ndarray of int64
        One array of row ids per share.
    """
    shares = np.asarray(shares, np.float64)
    if shares.ndim != 1 or np.any(shares < 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"split shares must be >= 0 and sum to 1, got {shares.tolist()}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5911]))
    parts: list[list[np.ndarray]] = [[] for _ in shares]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(rows.size)]
        # largest-remainder rounding so the parts sum to the class size
        raw = shares * rows.size
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts), kind="stable")[: rows.size - counts.sum()]:
            counts[i] += 1
        start = 0
        for p, k in enumerate(counts):
            parts[p].append(rows[start:start + k])
            start += k
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


class Source:
    """Base class of every image source (real readers and synthetic generators).

    Subclasses set :attr:`name`, :attr:`class_names`, :attr:`image_size`, :attr:`tables` and
    implement :meth:`_load_one` (and optionally :meth:`load` for vectorised rendering).

    Attributes
    ----------
    name : str
        ``gtsrb``, ``ytaf``, ``lfw``, ``synth-signs``, ``synth-faces``.
    class_names : list of str
    image_size : (int, int)
        (H, W) every loaded image has.
    tables : dict of str -> SplitTable
        ``train``, ``test``, ``clean``.
    strict : bool
        Raise on an unreadable image instead of skipping it.
    canonical_eyes : str or None
        Key of :data:`datasets_gen.eyes.CANONICAL_EYES` for face sources.
    provenance_group_size : int
        Typical rows per provenance group (used to group the attacker's poisoned rows alike).
    description : str
        One paragraph for the dataset card.
    """

    name: str = "source"
    canonical_eyes: str | None = None
    provenance_group_size: int = 30
    description: str = ""
    n_threads: int = 2

    def __init__(self, class_names: list[str], image_size: tuple[int, int], tables: dict[str, SplitTable],
                 strict: bool = False, config: dict[str, Any] | None = None):
        self.class_names = list(class_names)
        self.image_size = validate_size(image_size)
        missing = [s for s in SOURCE_SPLITS if s not in tables]
        if missing:
            raise ValueError(f"source {self.name!r} lacks split table(s) {missing}")
        self.tables = tables
        self.strict = bool(strict)
        self.skipped: dict[str, int] = {}
        self.skipped_examples: list[str] = []
        self.config = dict(config or {})
        k = len(self.class_names)
        for split, t in tables.items():
            if len(t) and (t.labels.min() < 0 or t.labels.max() >= k):
                raise ValueError(f"source {self.name!r} split {split!r} has labels outside [0, {k})")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # ---- loading -------------------------------------------------------------------------
    def _load_one(self, split: str, row: int) -> np.ndarray | None:
        """Decode and resize one row; None if unreadable."""
        raise NotImplementedError

    def load(self, split: str, rows: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Load rows of a split as model-size images.

        Parameters
        ----------
        split : str
            ``train``, ``test`` or ``clean``.
        rows : sequence of int
            Row ids of ``self.tables[split]``.

        Returns
        -------
        images : ndarray of shape (n, H, W, 3), uint8
            Rows that could not be read are left black.
        ok : ndarray of shape (n,), bool
            False for skipped (unreadable) rows.

        Raises
        ------
        ValueError
            An unreadable image while :attr:`strict` (the file is named).
        """
        rows = np.asarray(rows, np.int64)
        h, w = self.image_size
        images = np.zeros((rows.size, h, w, 3), np.uint8)
        ok = np.zeros(rows.size, bool)

        def one(i: int) -> None:
            img = self._load_one(split, int(rows[i]))
            if img is not None:
                images[i] = img
                ok[i] = True

        if self.n_threads > 1 and rows.size > 8:
            # cv2.imread/resize release the GIL: two threads decode in parallel.
            with ThreadPoolExecutor(self.n_threads) as ex:
                list(ex.map(one, range(rows.size)))
        else:
            for i in range(rows.size):
                one(i)
        for i in np.flatnonzero(~ok):
            key = self.tables[split].keys[int(rows[i])]
            if self.strict:
                raise ValueError(f"unreadable image {key} (source {self.name!r}, split {split!r}); "
                                 "run without --strict to skip and count such images")
            self.skipped[split] = self.skipped.get(split, 0) + 1
            if len(self.skipped_examples) < 10:
                self.skipped_examples.append(str(key))
        return images, ok

    def load_original(self, split: str, row: int) -> np.ndarray | None:
        """The row's image before resizing (for eye detection); default: the loaded image."""
        imgs, ok = self.load(split, [row])
        return imgs[0] if ok[0] else None

    def eye_landmarks(self, split: str, rows: np.ndarray) -> np.ndarray | None:
        """Known eye centres (n, 2, 2) in model-size pixels, NaN where unknown; None if none known."""
        eyes = self.tables[split].extra.get("eyes")
        if eyes is None:
            return None
        return eyes[np.asarray(rows, np.int64)]

    # ---- restriction ---------------------------------------------------------------------
    def limit_per_class(self, limit: int | None, seed: int) -> None:
        """Keep at most ``limit`` rows per class in every split.

        Whole provenance groups are kept (tracks, videos, sessions: seeded choice of groups, the
        last one cut to fit), so a limited variant keeps the group structure Data Provenance
        uses, and synthetic tracks are not rendered for a single frame. Classes whose rows share
        one group (e.g. the GTSRB test set) keep their first ``limit`` rows in source order.
        """
        if limit is None:
            return
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit_per_class must be a positive integer or None, got {limit!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1177]))
        for split, t in list(self.tables.items()):
            keep = []
            for c in np.unique(t.labels):
                rows = np.flatnonzero(t.labels == c)
                if rows.size > limit:
                    groups = np.unique(t.provenance[rows])
                    if groups.size > 1:
                        order = rng.permutation(groups)
                        rank = np.empty(groups.size, np.int64)
                        rank[np.searchsorted(groups, order)] = np.arange(groups.size)
                        # rows sorted by the rank of their group, stable within a group
                        rows = rows[np.argsort(rank[np.searchsorted(groups, t.provenance[rows])], kind="stable")]
                    rows = np.sort(rows[:limit])
                keep.append(rows)
            self.tables[split] = t.take(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64))

    def summary(self) -> dict[str, Any]:
        """Counts for cards and logs."""
        return {
            "source": self.name,
            "n_classes": self.n_classes,
            "image_size": list(self.image_size),
            "rows": {s: len(t) for s, t in self.tables.items()},
            "provenance_groups": {s: int(np.unique(t.provenance).size) for s, t in self.tables.items()},
            "skipped_unreadable": dict(self.skipped),
            "config": self.config,
        }


def split_pool(keys: list[str], labels: Sequence[int], provenance: Sequence[int], shares: Sequence[float],
               seed: int) -> dict[str, SplitTable]:
    """One pool of rows split into the ``train``/``test``/``clean`` tables by ``shares``, stratified
    by label and seeded (the face readers' split: the paper splits each person's images)."""
    pool = SplitTable(keys, np.array(labels), np.array(provenance), np.arange(len(keys)))
    train, test, clean = stratified_split(pool.labels, shares, seed)
    return {"train": pool.take(train), "test": pool.take(test), "clean": pool.take(clean)}


class ImageFileSource(Source):
    """A source whose table keys are image file paths (LFW, YTAF): a row is its file, resized."""

    def load_original(self, split: str, row: int) -> np.ndarray | None:
        return read_image_rgb(self.tables[split].keys[row])

    def _load_one(self, split: str, row: int) -> np.ndarray | None:
        img = read_image_rgb(self.tables[split].keys[row])
        return None if img is None else resize_to(img, self.image_size)
