"""Reader for the YouTube Faces aligned images (YouTube Aligned Faces, "YTAF") in the official layout.

Layout::

    aligned_images_DB/<Person_Name>/<video number>/aligned_detect_<video>.<frame>.jpg

The paper keeps the people with at least 100 images and splits each person's images 75:20:5
(train:test:clean), stratified by person, with a seed. The data set holds ~620k frames: the reader
keeps only paths (the folder walk uses ``os.scandir``) and pixels are decoded per batch.

Provenance = the video (one id per (person, video) pair): the frames of a video are near
duplicates from one upload, the natural "source" for Data Provenance. The split is by image, as
in the paper (most people have only 2–6 videos, too few for a 75:20:5 split by video), so test
and clean frames share videos with training frames — the paper's setting, noted in the card.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets_gen.readers.base import ImageFileSource, split_pool, validate_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_root(path: str | os.PathLike) -> Path:
    """The ``aligned_images_DB`` folder (``path`` itself or ``path/aligned_images_DB``)."""
    p = Path(path)
    if p.name == "aligned_images_DB" and p.is_dir():
        return p
    if (p / "aligned_images_DB").is_dir():
        return p / "aligned_images_DB"
    raise FileNotFoundError(f"no YouTube Aligned Faces layout under {p}: expected {p}/aligned_images_DB/<person>/<video>/*.jpg")


class YTAFSource(ImageFileSource):
    """YouTube Aligned Faces (see the module docstring).

    Parameters
    ----------
    root : path-like
        ``aligned_images_DB`` or its parent.
    image_size : (H, W)
        Model input, default 55x47 (DeepID).
    min_images : int
        Keep people with at least this many images (paper: 100).
    shares : (train, test, clean)
        Default 0.75, 0.20, 0.05.
    seed : int
    strict : bool
    """

    name = "ytaf"
    canonical_eyes = "ytaf"
    provenance_group_size = 100
    description = ("YouTube Faces (Wolf et al., 2011), aligned frames: faces of celebrities in YouTube videos, "
                   "aligned and cropped; one folder per person and video.")

    def __init__(self, root: str | os.PathLike, *, image_size: tuple[int, int] = (55, 47), min_images: int = 100,
                 shares: tuple[float, float, float] = (0.75, 0.20, 0.05), seed: int = 0, strict: bool = False):
        if int(min_images) < 1:
            raise ValueError(f"min_images must be >= 1, got {min_images}")
        self.root = find_root(root)
        people: list[tuple[str, list[tuple[int, str]]]] = []  # (name, [(video_id, path)])
        video_names: list[str] = []
        for person in sorted(e.name for e in os.scandir(self.root) if e.is_dir()):
            files: list[tuple[int, str]] = []
            for video in sorted(e.name for e in os.scandir(self.root / person) if e.is_dir()):
                vid = len(video_names)
                video_names.append(f"{person}/{video}")
                vdir = self.root / person / video
                files.extend((vid, str(vdir / f)) for f in sorted(os.listdir(vdir))
                             if f.lower().endswith(IMAGE_SUFFIXES))
            if len(files) >= min_images:
                people.append((person, files))
        if len(people) < 2:
            raise ValueError(f"{self.root}: {len(people)} people with >= {min_images} images; need at least 2 classes")
        keys, labels, prov = [], [], []
        for c, (_, files) in enumerate(people):
            for vid, path in files:
                keys.append(path)
                labels.append(c)
                prov.append(vid)
        tables = split_pool(keys, labels, prov, shares, seed)
        config = {"root": str(self.root), "min_images": int(min_images), "shares": list(shares), "split_seed": seed,
                  "n_videos": len(video_names), "provenance": "video"}
        super().__init__([p for p, _ in people], validate_size(image_size), tables, strict, config)
