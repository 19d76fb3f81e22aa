"""Fixture writers for the data-set tests: tiny folders in the real GTSRB / YTAF / LFW layouts.

Nothing is downloaded: every image is drawn here, with content that lets a test check what the
reader did (e.g. the GTSRB ROI is red on a blue surround, so a correct crop is all red).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GTSRB_REAL = SHARED_DATA / "gtsrb-32"
LFW_REAL = SHARED_DATA / "lfw-gray-20"

GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def _roi_image(size_hw: tuple[int, int], roi_xyxy: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """BGR image: blue surround, red ROI (inclusive box), a little noise so JPEG/PPM differ per file."""
    h, w = size_hw
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (200, 30, 30)  # BGR blue
    x1, y1, x2, y2 = roi_xyxy
    img[y1:y2 + 1, x1:x2 + 1] = (30, 30, 220)  # BGR red
    img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    return img


def write_gtsrb(root: Path, classes=(0, 1, 14), tracks=3, frames=4, disk_size=(32, 32),
                csv_size=(64, 64), n_test_per_class=5) -> Path:
    """Write ``root/Final_Training`` and ``root/Final_Test`` in the official layout.

    Images on disk are ``disk_size`` while the CSV says ``csv_size`` (as in the project's re-saved
    subset); the ROI in the CSV is the central half of the CSV-size image.
    """
    cw, ch = csv_size
    roi = (cw // 4, ch // 4, 3 * cw // 4 - 1, 3 * ch // 4 - 1)
    dh, dw = disk_size
    sx, sy = dw / cw, dh / ch
    disk_roi = (int(roi[0] * sx), int(roi[1] * sy), int((roi[2] + 1) * sx) - 1, int((roi[3] + 1) * sy) - 1)
    for c in classes:
        d = root / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True, exist_ok=True)
        lines = [GTSRB_HEADER]
        for t in range(tracks):
            for f in range(frames):
                name = f"{t:05d}_{f:05d}.ppm"
                cv2.imwrite(str(d / name), _roi_image(disk_size, disk_roi, c * 1000 + t * 10 + f))
                lines.append(f"{name};{cw};{ch};{roi[0]};{roi[1]};{roi[2]};{roi[3]};{c}")
        (d / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    test = root / "Final_Test" / "Images"
    test.mkdir(parents=True, exist_ok=True)
    lines = [GTSRB_HEADER]
    i = 0
    for c in classes:
        for _ in range(n_test_per_class):
            name = f"{i:05d}.ppm"
            cv2.imwrite(str(test / name), _roi_image(disk_size, disk_roi, 99999 - i))
            lines.append(f"{name};{cw};{ch};{roi[0]};{roi[1]};{roi[2]};{roi[3]};{c}")
            i += 1
    (root / "Final_Test" / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return root


def _face(seed: int, size: int = 64, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(40, 200, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 3, tuple(int(v) for v in rng.integers(80, 255, 3)), -1)
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if gray else img


def write_ytaf(root: Path, people: dict[str, list[int]]) -> Path:
    """``root/aligned_images_DB/<person>/<video>/aligned_detect_<video>.<frame>.jpg``.

    ``people`` maps a name to the number of frames of each of its videos.
    """
    db = root / "aligned_images_DB"
    seed = 0
    for person, videos in people.items():
        for v, n in enumerate(videos):
            d = db / person / str(v)
            d.mkdir(parents=True, exist_ok=True)
            for f in range(n):
                cv2.imwrite(str(d / f"aligned_detect_{v}.{f}.jpg"), _face(seed))
                seed += 1
    return root


def write_lfw(root: Path, people: dict[str, int], gray: bool = True, size: int = 64) -> Path:
    """``root/lfw/<Name>/<Name>_NNNN.jpg`` (grayscale by default, like the project's subset)."""
    seed = 0
    for person, n in people.items():
        d = root / "lfw" / person
        d.mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            cv2.imwrite(str(d / f"{person}_{i:04d}.jpg"), _face(seed, size, gray))
            seed += 1
    return root


def corrupt(path: Path) -> None:
    """Overwrite an image file with bytes no decoder accepts."""
    path.write_bytes(b"not an image at all")
