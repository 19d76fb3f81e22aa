"""Reader for the German Traffic Sign Recognition Benchmark in its official layout.

Layout (the ``GTSRB/`` level is optional)::

    [GTSRB/]Final_Training/Images/000NN/TTTTT_FFFFF.ppm   + GT-000NN.csv per class
    [GTSRB/]Final_Test/Images/NNNNN.ppm                    + GT-final_test.csv (with ClassId)

CSVs are ``;``-separated with the columns ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``.
The ROI describes the sign in the ORIGINAL image; when the images on disk were re-saved at another
size (the project's real subset is 32x32) the ROI is scaled by actual/CSV size before cropping.

Splits (the paper's): the official training set and test set, with 10 % of the training images
held out as the defender's clean set. Training images come in *tracks* of ~30 frames of one
physical sign (``TTTTT`` in the file name), nearly identical; splitting frame by frame would leak
near-duplicates into the clean set, so whole tracks are held out: tracks are drawn in a seeded
round-robin over classes until 10 % of the images are reached (every class loses at most one
track more than any other). Provenance = the track (``class * 100000 + track``); the test set has
no tracks (provenance ``-1``). ``index`` = row in the (class, file name)-sorted training listing,
or row of ``GT-final_test.csv``.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from datasets_gen.readers.base import Source, SplitTable, read_image_rgb, resize_to, validate_size

GTSRB_CLASS_NAMES: list[str] = [
    "speed limit 20", "speed limit 30", "speed limit 50", "speed limit 60", "speed limit 70",
    "speed limit 80", "end of speed limit 80", "speed limit 100", "speed limit 120", "no passing",
    "no passing for trucks", "right of way at next intersection", "priority road", "yield", "stop",
    "no vehicles", "no trucks", "no entry", "general caution", "dangerous curve left",
    "dangerous curve right", "double curve", "bumpy road", "slippery road", "road narrows on the right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "beware of ice/snow", "wild animals crossing", "end of all speed and passing limits", "turn right ahead",
    "turn left ahead", "ahead only", "go straight or right", "go straight or left", "keep right",
    "keep left", "roundabout mandatory", "end of no passing", "end of no passing for trucks",
]
N_CLASSES = len(GTSRB_CLASS_NAMES)  # 43
REQUIRED_COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
_TRACK_RE = re.compile(r"^(\d+)_(\d+)\.\w+$")


def find_root(path: str | os.PathLike) -> Path:
    """The folder holding ``Final_Training`` (``path`` itself or ``path/GTSRB``)."""
    p = Path(path)
    for cand in (p, p / "GTSRB"):
        if (cand / "Final_Training" / "Images").is_dir():
            return cand
    raise FileNotFoundError(f"no GTSRB layout under {p}: expected {p}/Final_Training/Images/000NN/GT-000NN.csv")


def read_gt_csv(path: Path, *, expect_class: int | None = None) -> list[dict[str, Any]]:
    """Parse one GTSRB ground-truth CSV.

    Returns
    -------
    list of dict
        ``filename``, ``width``, ``height`` (or None), ``roi`` (x1, y1, x2, y2), ``class_id`` per row.

    Raises
    ------
    FileNotFoundError
        The CSV is missing.
    ValueError
        Missing columns, a malformed row (file and line named), a class id outside 0..42 or, with
        ``expect_class``, a row of another class.
    """
    if not path.is_file():
        raise FileNotFoundError(f"GTSRB annotation file {path} not found")
    rows: list[dict[str, Any]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=";")
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                hint = " (GT-final_test.test.csv is the unlabelled one; use GT-final_test.csv)" if "ClassId" in missing else ""
                raise ValueError(f"{path}: missing column(s) {missing}; header is {header}{hint}")
            for line_no, r in enumerate(reader, start=2):
                try:
                    cls = int(r["ClassId"])
                    roi = tuple(int(r[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
                    width = int(r["Width"]) if r.get("Width") not in (None, "") else None
                    height = int(r["Height"]) if r.get("Height") not in (None, "") else None
                    name = r["Filename"]
                    if not name:
                        raise ValueError("empty Filename")
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{path}, line {line_no}: malformed row {r!r} ({exc})") from None
                if not 0 <= cls < N_CLASSES:
                    raise ValueError(f"{path}, line {line_no}: unknown class {cls} (GTSRB has 0..{N_CLASSES - 1})")
                if expect_class is not None and cls != expect_class:
                    raise ValueError(f"{path}, line {line_no}: class {cls} in the folder of class {expect_class}")
                rows.append({"filename": name, "width": width, "height": height, "roi": roi, "class_id": cls})
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV ({exc})") from None
    return rows


def crop_roi(image: np.ndarray, roi: np.ndarray, csv_size: np.ndarray) -> np.ndarray:
    """Crop the ROI, scaled from the CSV's image size to the actual one.

    Parameters
    ----------
    image : ndarray of shape (h, w, 3)
    roi : ndarray (x1, y1, x2, y2), inclusive, in the CSV's coordinates
    csv_size : ndarray (width, height) of the CSV, or (0, 0) when unknown (no scaling)
    """
    h, w = image.shape[:2]
    cw, ch = int(csv_size[0]), int(csv_size[1])
    sx = w / cw if cw > 0 else 1.0
    sy = h / ch if ch > 0 else 1.0
    x1 = int(np.floor(roi[0] * sx)); y1 = int(np.floor(roi[1] * sy))
    x2 = int(np.ceil((roi[2] + 1) * sx)); y2 = int(np.ceil((roi[3] + 1) * sy))
    x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
    x2, y2 = max(x1 + 1, min(x2, w)), max(y1 + 1, min(y2, h))
    return image[y1:y2, x1:x2]


def clean_tracks(track_ids: np.ndarray, labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose track is held out as clean (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6757]))
    target = int(round(share * labels.size))
    per_class: list[list[int]] = []
    sizes: dict[int, int] = {}
    for c in rng.permutation(np.unique(labels)):
        tracks = np.unique(track_ids[labels == c])
        per_class.append(list(rng.permutation(tracks)))
    uniq, counts = np.unique(track_ids, return_counts=True)
    sizes = dict(zip(uniq.tolist(), counts.tolist()))
    held: set[int] = set()
    total = 0
    level = 0
    while total < target and any(level < len(t) - 1 for t in per_class):
        for tracks in per_class:
            # never take a class's last track: every class keeps training images
            if level < len(tracks) - 1 and total < target:
                held.add(int(tracks[level]))
                total += sizes[int(tracks[level])]
        level += 1
    return np.isin(track_ids, list(held))


class GTSRBSource(Source):
    """GTSRB from its official folder layout (see the module docstring).

    Parameters
    ----------
    root : path-like
        Folder with ``Final_Training`` and ``Final_Test`` (or their parent ``GTSRB``).
    image_size : (H, W)
        Model input, default 32x32 (the paper's GTSRB CNN).
    crop_roi : bool
        Crop the annotated sign before resizing (ROI scaled to the actual image size).
    clean_share : float
        Share of the training images held out (by track) as the clean set.
    seed : int
        Seed of the clean hold-out.
    strict : bool
        Raise on unreadable images instead of skipping and counting them.
    """

    name = "gtsrb"
    provenance_group_size = 30
    description = ("German Traffic Sign Recognition Benchmark (Stallkamp et al., 2012): photographs of 43 "
                   "classes of German traffic signs, in tracks of ~30 frames of one physical sign.")

    def __init__(self, root: str | os.PathLike, *, image_size: tuple[int, int] = (32, 32), crop_roi: bool = True,
                 clean_share: float = 0.1, seed: int = 0, strict: bool = False):
        if not 0 <= clean_share < 1:
            raise ValueError(f"clean_share must be in [0, 1), got {clean_share}")
        self.root = find_root(root)
        self.crop = bool(crop_roi)
        keys, labels, tracks, rois, sizes = [], [], [], [], []
        class_dirs = sorted(d for d in (self.root / "Final_Training" / "Images").iterdir() if d.is_dir())
        if not class_dirs:
            raise FileNotFoundError(f"{self.root}/Final_Training/Images has no class folders")
        n_files_without_track = 0
        for d in class_dirs:
            if not re.fullmatch(r"\d{5}", d.name):
                raise ValueError(f"unexpected folder {d} in Final_Training/Images: class folders are named 000NN")
            cls = int(d.name)
            if cls >= N_CLASSES:
                raise ValueError(f"unknown class folder {d.name}: GTSRB has classes 00000..{N_CLASSES - 1:05d}")
            for r in sorted(read_gt_csv(d / f"GT-{d.name}.csv", expect_class=cls), key=lambda r: r["filename"]):
                keys.append(d / r["filename"])
                labels.append(cls)
                m = _TRACK_RE.match(r["filename"])
                if m:
                    tracks.append(cls * 100000 + int(m.group(1)))
                else:  # not the official naming: every file its own group
                    n_files_without_track += 1
                    tracks.append(cls * 100000 + 50000 + len(keys))
                rois.append(r["roi"])
                sizes.append((r["width"] or 0, r["height"] or 0))
        labels_a = np.array(labels, np.int64)
        tracks_a = np.array(tracks, np.int32)
        held = clean_tracks(tracks_a, labels_a, clean_share, seed) if clean_share > 0 else np.zeros(len(keys), bool)
        pool = SplitTable(keys, labels_a, tracks_a, np.arange(len(keys)),
                          {"roi": np.array(rois, np.int32).reshape(-1, 4), "csv_size": np.array(sizes, np.int32).reshape(-1, 2)})
        test = self._read_test()
        tables = {"train": pool.take(np.flatnonzero(~held)), "clean": pool.take(np.flatnonzero(held)), "test": test}
        config = {"root": str(self.root), "crop_roi": self.crop, "clean_share": clean_share, "split_seed": seed,
                  "clean_split": "whole tracks, round-robin over classes", "files_without_track_id": n_files_without_track}
        super().__init__(GTSRB_CLASS_NAMES, validate_size(image_size), tables, strict, config)

    def _read_test(self) -> SplitTable:
        test_dir = self.root / "Final_Test"
        images = test_dir / "Images"
        if not images.is_dir():
            raise FileNotFoundError(f"GTSRB test images {images} not found")
        csv_path = next((p for p in (test_dir / "GT-final_test.csv", images / "GT-final_test.csv", self.root / "GT-final_test.csv")
                         if p.is_file()), test_dir / "GT-final_test.csv")
        rows = read_gt_csv(csv_path)
        keys = [images / r["filename"] for r in rows]
        return SplitTable(keys, np.array([r["class_id"] for r in rows], np.int64), np.full(len(rows), -1, np.int32),
                          np.arange(len(rows)),
                          {"roi": np.array([r["roi"] for r in rows], np.int32).reshape(-1, 4),
                           "csv_size": np.array([(r["width"] or 0, r["height"] or 0) for r in rows], np.int32).reshape(-1, 2)})

    def _original(self, split: str, row: int) -> np.ndarray | None:
        t = self.tables[split]
        img = read_image_rgb(t.keys[row])
        if img is None:
            return None
        if self.crop:
            img = crop_roi(img, t.extra["roi"][row], t.extra["csv_size"][row])
        return img

    def _load_one(self, split: str, row: int) -> np.ndarray | None:
        img = self._original(split, row)
        return None if img is None else resize_to(img, self.image_size)
