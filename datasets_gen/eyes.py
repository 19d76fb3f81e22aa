"""Eye positions for the sunglasses trigger: known landmarks, else detection, else canonical.

The face data sets of the paper (YouTube Aligned Faces, LFW) are roughly aligned, so the eyes sit
near a fixed position; a trigger placed there is usually good, placed on detected eyes is better.
:func:`locate_eyes` tries, in order:

1. landmarks given by the caller (the synthetic faces know them exactly);
2. OpenCV's Haar cascades (``haarcascade_frontalface_default.xml`` to find the face, then
   ``haarcascade_eye.xml`` inside its upper half), when this OpenCV build has
   ``cv2.CascadeClassifier`` and ships ``cv2.data.haarcascades`` — OpenCV 4.x wheels do, OpenCV 5
   wheels dropped both — and accepted only when the two eyes are plausible (side by side, level,
   a sensible distance apart);
3. the canonical position of the data set's alignment (:data:`CANONICAL_EYES`).

It reports which one it used, so a builder can count them in the dataset card.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

Eyes = tuple[tuple[float, float], tuple[float, float]]

#: Canonical eye centres as (x, y) shares of (width, height), left eye (image left) first.
#: lfw: measured on deep-funneled LFW (eyes near (105, 115) and (145, 115) of 250x250);
#: ytaf: the aligned_detect crops put the face larger and a little higher;
#: synth-faces: where :mod:`datasets_gen.synthetic.faces` draws the eyes at zero pose jitter.
CANONICAL_EYES: dict[str, Eyes] = {
    "lfw": ((0.42, 0.46), (0.58, 0.46)),
    "ytaf": ((0.37, 0.42), (0.63, 0.42)),
    "synth-faces": ((0.36, 0.42), (0.64, 0.42)),
    "default": ((0.36, 0.42), (0.64, 0.42)),
}

EYE_METHODS = ("landmarks", "detected", "canonical")


def canonical_eyes(image_hw: tuple[int, int], kind: str = "default") -> Eyes:
    """Canonical eye centres in pixels for an image of ``image_hw`` (H, W)."""
    if kind not in CANONICAL_EYES:
        raise KeyError(f"no canonical eye position for {kind!r}; known: {sorted(CANONICAL_EYES)}")
    h, w = image_hw
    (lx, ly), (rx, ry) = CANONICAL_EYES[kind]
    return (lx * w, ly * h), (rx * w, ry * h)


@lru_cache(maxsize=1)
def _cascades() -> tuple[Any, Any] | None:
    """(face, eye) cascades, or None when this OpenCV has no CascadeClassifier or no cascade files."""
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    data = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not data:
        return None
    face_file = os.path.join(data, "haarcascade_frontalface_default.xml")
    eye_file = os.path.join(data, "haarcascade_eye.xml")
    if not (os.path.isfile(face_file) and os.path.isfile(eye_file)):
        return None
    face, eye = cv2.CascadeClassifier(face_file), cv2.CascadeClassifier(eye_file)
    if face.empty() or eye.empty():
        return None
    return face, eye


def detection_available() -> bool:
    """Whether Haar-cascade eye detection can run in this OpenCV build."""
    return _cascades() is not None


def detect_eyes(image: np.ndarray) -> Eyes | None:
    """Detect the two eyes of the most prominent face, or None.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W), uint8
        RGB or grayscale. Images smaller than 120 px are upscaled for the cascade.

    Returns
    -------
    ((x, y), (x, y)) or None
        Left (smaller x) and right eye centres in the image's pixel coordinates.
    """
    casc = _cascades()
    if casc is None:
        return None
    face_c, eye_c = casc
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise TypeError(f"image must be uint8 (H, W[, 3]), got {img.dtype} {img.shape}")
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = max(1.0, 120.0 / min(h, w))
    if scale > 1:
        gray = cv2.resize(gray, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_CUBIC)
    gray = cv2.equalizeHist(gray)
    H, W = gray.shape
    faces = face_c.detectMultiScale(gray, 1.1, 4, minSize=(W // 4, H // 4))
    if len(faces) == 0:
        region = (0, 0, W, H)  # aligned crops: the face fills the image
    else:
        region = tuple(max(faces, key=lambda f: f[2] * f[3]))
    fx, fy, fw, fh = region
    upper = gray[fy:fy + fh * 6 // 10, fx:fx + fw]
    eyes = eye_c.detectMultiScale(upper, 1.1, 3, minSize=(max(8, fw // 10), max(8, fw // 10)),
                                  maxSize=(fw // 3, fw // 3))
    if len(eyes) < 2:
        return None
    centres = [(fx + ex + ew / 2.0, fy + ey + eh / 2.0, ew * eh) for ex, ey, ew, eh in eyes]
    best: tuple[float, Eyes] | None = None
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            (ax, ay, _), (bx, by, _) = centres[i], centres[j]
            dx, dy = abs(ax - bx), abs(ay - by)
            # plausible pair: side by side, roughly level, 0.2-0.6 face widths apart
            if not (0.2 * fw <= dx <= 0.6 * fw and dy <= 0.25 * dx):
                continue
            # prefer pairs centred on the face
            cost = abs((ax + bx) / 2 - (fx + fw / 2)) + dy
            left, right = ((ax, ay), (bx, by)) if ax < bx else ((bx, by), (ax, ay))
            if best is None or cost < best[0]:
                best = (cost, (left, right))
    if best is None:
        return None
    (lx, ly), (rx, ry) = best[1]
    return (lx / scale, ly / scale), (rx / scale, ry / scale)


def locate_eyes(image: np.ndarray, landmarks: Eyes | np.ndarray | None = None, *, detect: bool = True,
                canonical: str = "default") -> tuple[Eyes, str]:
    """Eye centres for placing glasses, and the method used.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    landmarks : ((x, y), (x, y)) or ndarray of shape (2, 2), optional
        Known eye centres (used as is when given and finite).
    detect : bool
        Try Haar-cascade detection when no landmarks are given.
    canonical : str
        Key of :data:`CANONICAL_EYES` used as the last resort.

    Returns
    -------
    eyes : ((x, y), (x, y))
    method : {"landmarks", "detected", "canonical"}
    """
    img = np.asarray(image)
    if img.ndim < 2:
        raise ValueError(f"image must be at least 2-D, got shape {img.shape}")
    if landmarks is not None:
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape != (2, 2):
            raise ValueError(f"eye landmarks must have shape (2, 2), got {lm.shape}")
        if np.all(np.isfinite(lm)):
            return ((lm[0, 0], lm[0, 1]), (lm[1, 0], lm[1, 1])), "landmarks"
    if detect:
        found = detect_eyes(img)
        if found is not None:
            return found, "detected"
    return canonical_eyes(img.shape[:2], canonical), "canonical"
