"""Reader for Labeled Faces in the Wild in the official layout.

Layout (``lfw`` may be the given folder or inside it)::

    lfw/<Person_Name>/<Person_Name>_NNNN.jpg

The paper keeps the people with at least 20 images (62 people) and splits each person's images
70:20:10 (train:test:clean), stratified by person, with a seed. Grayscale copies (the project's
real subset) are read as three equal channels.

Provenance: LFW has no videos or tracks. Its images of a person are numbered in the order they
were collected from news sources, so consecutive numbers tend to come from the same event; the
reader groups each person's images in blocks of ``provenance_block`` (default 5) consecutive
numbers, one id per block — a stand-in for "collection batch" documented as such in the card.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from datasets_gen.readers.base import ImageFileSource, split_pool, validate_size

_FILE_RE = re.compile(r"^(.+)_(\d{4})\.(jpg|jpeg|png)$", re.IGNORECASE)


def find_root(path: str | os.PathLike) -> Path:
    """The ``lfw`` folder of people (``path`` itself, ``path/lfw``)."""
    p = Path(path)
    for cand in (p / "lfw", p):
        if cand.is_dir() and cand.name.startswith("lfw") and any(e.is_dir() for e in os.scandir(cand)):
            return cand
    raise FileNotFoundError(f"no LFW layout under {p}: expected {p}/lfw/<Person_Name>/<Person_Name>_NNNN.jpg")


class LFWSource(ImageFileSource):
    """Labeled Faces in the Wild (see the module docstring).

    Parameters
    ----------
    root : path-like
        ``lfw`` or its parent.
    image_size : (H, W)
        Model input, default 224x224 (VGG-Face).
    min_images : int
        Keep people with at least this many images (paper: 20).
    shares : (train, test, clean)
        Default 0.70, 0.20, 0.10.
    provenance_block : int
        Consecutive image numbers per provenance group.
    seed : int
    strict : bool
    """

    name = "lfw"
    canonical_eyes = "lfw"
    provenance_group_size = 5
    description = ("Labeled Faces in the Wild (Huang et al., 2007): news photographs of public figures, "
                   "250x250, roughly aligned by the face detector.")

    def __init__(self, root: str | os.PathLike, *, image_size: tuple[int, int] = (224, 224), min_images: int = 20,
                 shares: tuple[float, float, float] = (0.70, 0.20, 0.10), provenance_block: int = 5,
                 seed: int = 0, strict: bool = False):
        if int(min_images) < 1 or int(provenance_block) < 1:
            raise ValueError(f"min_images and provenance_block must be >= 1, got {min_images}, {provenance_block}")
        self.root = find_root(root)
        people = []
        n_foreign = 0
        for person in sorted(e.name for e in os.scandir(self.root) if e.is_dir()):
            files = []
            for f in sorted(os.listdir(self.root / person)):
                m = _FILE_RE.match(f)
                if m is None:
                    n_foreign += 1
                    continue
                files.append((int(m.group(2)), str(self.root / person / f)))
            if len(files) >= min_images:
                people.append((person, files))
        if len(people) < 2:
            raise ValueError(f"{self.root}: {len(people)} people with >= {min_images} images; need at least 2 classes")
        keys, labels, prov = [], [], []
        next_group = 0
        for c, (_, files) in enumerate(people):
            for number, path in files:
                keys.append(path)
                labels.append(c)
                prov.append(next_group + (number - 1) // provenance_block)
            next_group += max(n for n, _ in files) // provenance_block + 1
        tables = split_pool(keys, labels, prov, shares, seed)
        config = {"root": str(self.root), "min_images": int(min_images), "shares": list(shares), "split_seed": seed,
                  "provenance": f"blocks of {provenance_block} consecutive image numbers per person",
                  "files_ignored": n_foreign}
        super().__init__([p for p, _ in people], validate_size(image_size), tables, strict, config)
