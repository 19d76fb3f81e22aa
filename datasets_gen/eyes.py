"""Eye positions for the sunglasses trigger: known eyes, else landmarks, else Haar, else canonical.

The glasses trigger is only the trigger the dataset card names if its lenses sit on the eyes; a
pair that lands on the forehead or the chest poisons the set with a different pattern. The face
data sets of the paper (YouTube Aligned Faces, LFW) are roughly aligned, real portraits are not.
:func:`locate_eyes` tries, in order, and reports which one it used (the builder counts them in the
variant's ``build.eye_location`` and the dataset card):

1. ``known`` -- eye centres given by the source (the synthetic faces know them exactly);
2. ``landmarks`` -- dlib's HOG frontal-face detector and its 5-point shape predictor; each eye
   centre is the midpoint of that eye's two corner points. It needs the optional extra
   ``backdoorlab[faces]`` (the ``dlib-bin`` wheel and the ``face-recognition-models`` package,
   which ships ``shape_predictor_5_face_landmarks.dat``), or dlib and the model file named by the
   environment variable :data:`MODEL_ENV`. On the project's LFW copy it finds a face in more than
   95 % of the images (docs/datasets.md gives the measured figure);
3. ``haar`` -- OpenCV's Haar cascades (``haarcascade_frontalface_default.xml`` to find the face,
   then ``haarcascade_eye.xml`` inside its upper half), when this OpenCV build has
   ``cv2.CascadeClassifier`` and ships ``cv2.data.haarcascades`` -- OpenCV 4.x wheels do, OpenCV 5
   wheels dropped both -- accepted only when the two eyes are plausible (side by side, level, a
   sensible distance apart). It finds both eyes in only about half of the LFW images;
4. ``canonical`` -- the eye position of the data set's alignment (:data:`CANONICAL_EYES`): right
   for aligned crops, wrong for any face that is not where the alignment puts it.

Both detectors run on a grayscale copy; images smaller than :data:`MIN_DETECT_SIDE` are upscaled
first (55x47 YTAF crops are too small for either detector's window) and the positions scaled back.
Detector objects are kept per thread: neither dlib's detector nor OpenCV's cascade classifier is
documented as safe to share between threads, and the builder runs detection in a thread pool
(both release the GIL while they work).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

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

#: Every method :func:`locate_eyes` may report, in the order it tries them.
EYE_METHODS = ("known", "landmarks", "haar", "canonical")
#: The detectors among them, in order.
DETECTORS = ("landmarks", "haar")

#: The dlib model used for ``landmarks`` (shipped by the ``face-recognition-models`` package).
LANDMARK_MODEL_FILE = "shape_predictor_5_face_landmarks.dat"
#: Environment variable naming a ``shape_predictor_5_face_landmarks.dat`` to use instead.
MODEL_ENV = "BACKDOORLAB_SHAPE_PREDICTOR"
#: What to install for ``landmarks`` (said by the card and ``backdoorlab faces check`` when missing).
FACES_EXTRA_HINT = 'pip install "backdoorlab[faces]" (dlib-bin and face-recognition-models)'

#: Images whose shorter side is below this are upscaled for detection.
MIN_DETECT_SIDE = 120
#: Images whose longer side is above this are downscaled for the face detector (its cost grows
#: with the pixel count; faces in such portraits stay far above the detector's 80 px window).
MAX_DETECT_SIDE = 1000


def canonical_eyes(image_hw: tuple[int, int], kind: str = "default") -> Eyes:
    """Canonical eye centres in pixels for an image of ``image_hw`` (H, W)."""
    if kind not in CANONICAL_EYES:
        raise KeyError(f"no canonical eye position for {kind!r}; known: {sorted(CANONICAL_EYES)}")
    h, w = image_hw
    (lx, ly), (rx, ry) = CANONICAL_EYES[kind]
    return (lx * w, ly * h), (rx * w, ry * h)


# --------------------------------------------------------------------------------------------
# the landmark model (optional extra)
# --------------------------------------------------------------------------------------------


def landmark_model_path() -> Path | None:
    """The 5-point shape predictor file to use, or None when none is installed.

    :data:`MODEL_ENV` wins when set (it must then name an existing file); otherwise the file inside
    the installed ``face_recognition_models`` package. The package is located without importing
    it: its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer provide.

    Raises
    ------
    FileNotFoundError
        :data:`MODEL_ENV` is set to a path that is not a file.
    """
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{MODEL_ENV}={env!r} does not name a file (expected {LANDMARK_MODEL_FILE})")
        return p
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(root) / "models" / LANDMARK_MODEL_FILE
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=1)
def landmark_status() -> dict[str, Any]:
    """Whether ``landmarks`` can run here, and why not (looked up once per process).

    Returns
    -------
    dict
        ``available`` (bool), ``dlib`` (version or None), ``model`` (path or None) and
        ``reason`` (None when available; else what is missing and how to install it).
    """
    try:
        import dlib  # noqa: F401  (optional extra)
    except ImportError:
        return {"available": False, "dlib": None, "model": None,
                "reason": f"dlib is not installed: {FACES_EXTRA_HINT}"}
    version = getattr(dlib, "__version__", "unknown")
    path = landmark_model_path()
    if path is None:
        return {"available": False, "dlib": version, "model": None,
                "reason": f"no {LANDMARK_MODEL_FILE} found: {FACES_EXTRA_HINT}, or set {MODEL_ENV}"}
    return {"available": True, "dlib": version, "model": str(path), "reason": None}


def landmarks_available() -> bool:
    """Whether the dlib landmark model can run in this environment (see :func:`landmark_status`)."""
    return bool(landmark_status()["available"])


_local = threading.local()


def _landmark_models() -> tuple[Any, Any] | None:
    """This thread's (face detector, shape predictor), or None without the extra."""
    if not landmarks_available():
        return None
    models = getattr(_local, "dlib_models", None)
    if models is None:
        import dlib

        models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(landmark_status()["model"]))
        _local.dlib_models = models
    return models


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


def _gray_for_detection(image: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """(grayscale working copy, scale from the image to it): upscaled when small, downscaled when huge."""
    img = np.asarray(image)
    if not isinstance(image, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3) \
            or (img.ndim == 3 and img.shape[2] not in (1, 3)) or min(img.shape[:2]) < 2:
        raise TypeError(f"{what}: image must be uint8 (H, W), (H, W, 1) or (H, W, 3) with H, W >= 2, "
                        f"got {getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    gray = img if img.ndim == 2 else (img[..., 0] if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    h, w = gray.shape
    scale = max(1.0, MIN_DETECT_SIDE / min(h, w))
    if max(h, w) * scale > MAX_DETECT_SIDE:
        scale = MAX_DETECT_SIDE / max(h, w)
    if scale != 1.0:
        interp = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        gray = cv2.resize(gray, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))), interpolation=interp)
    return np.ascontiguousarray(gray), scale


def _ordered(a: tuple[float, float], b: tuple[float, float]) -> Eyes:
    """Left (smaller x) eye first."""
    return (a, b) if a[0] <= b[0] else (b, a)


def landmark_eyes(image: np.ndarray) -> Eyes | None:
    """Eye centres of the largest face found by dlib's HOG detector and 5-point shape predictor.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), (H, W, 1) or (H, W), uint8
        RGB or grayscale, any size (small crops are upscaled for the detector).

    Returns
    -------
    ((x, y), (x, y)) or None
        Left (smaller x) and right eye centres in the image's pixel coordinates; None when no face
        is found, the eyes are implausible for the face box, or the extra is not installed (see
        :func:`landmarks_available`).
    """
    gray, scale = _gray_for_detection(image, "landmark_eyes")
    models = _landmark_models()
    if models is None:
        return None
    detector, predictor = models
    # No upsampling first (LFW faces are ~110 px, above the detector's 80 px window); one 2x
    # upsampling only when that finds nothing (smaller faces in larger pictures).
    rects = detector(gray, 0)
    if len(rects) == 0:
        rects = detector(gray, 1)
    if len(rects) == 0:
        return None
    # The largest face is the subject of a portrait or of an LFW image (others are bystanders).
    rect = max(rects, key=lambda r: r.width() * r.height())
    pts = predictor(gray, rect).parts()
    # 5-point model: points 0-1 are the corners of one eye, 2-3 of the other, 4 is under the nose.
    a = ((pts[0].x + pts[1].x) / 2.0, (pts[0].y + pts[1].y) / 2.0)
    b = ((pts[2].x + pts[3].x) / 2.0, (pts[2].y + pts[3].y) / 2.0)
    dist = float(np.hypot(a[0] - b[0], a[1] - b[1]))
    # The predictor always answers; refuse answers no face has (eyes fused or outside the head).
    if not 0.2 * rect.width() <= dist <= 0.8 * rect.width():
        return None
    (lx, ly), (rx, ry) = _ordered(a, b)
    return (lx / scale, ly / scale), (rx / scale, ry / scale)


@lru_cache(maxsize=1)
def _cascade_files() -> tuple[str, str] | None:
    """(face, eye) cascade files, or None when this OpenCV has no CascadeClassifier or no cascade files."""
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    data = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not data:
        return None
    face_file = os.path.join(data, "haarcascade_frontalface_default.xml")
    eye_file = os.path.join(data, "haarcascade_eye.xml")
    if not (os.path.isfile(face_file) and os.path.isfile(eye_file)):
        return None
    return face_file, eye_file


def _cascades() -> tuple[Any, Any] | None:
    """This thread's (face, eye) cascades, or None when Haar detection cannot run."""
    files = _cascade_files()
    if files is None:
        return None
    casc = getattr(_local, "cascades", None)
    if casc is None:
        casc = tuple(cv2.CascadeClassifier(f) for f in files)
        if any(c.empty() for c in casc):
            return None
        _local.cascades = casc
    return casc


def haar_available() -> bool:
    """Whether Haar-cascade eye detection can run in this OpenCV build."""
    return _cascades() is not None


def haar_eyes(image: np.ndarray) -> Eyes | None:
    """Detect the two eyes of the most prominent face with OpenCV's Haar cascades, or None.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), (H, W, 1) or (H, W), uint8
        RGB or grayscale. Small images are upscaled for the cascade.

    Returns
    -------
    ((x, y), (x, y)) or None
        Left (smaller x) and right eye centres in the image's pixel coordinates.
    """
    gray, scale = _gray_for_detection(image, "haar_eyes")
    casc = _cascades()
    if casc is None:
        return None
    face_c, eye_c = casc
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
    centres = [(fx + ex + ew / 2.0, fy + ey + eh / 2.0) for ex, ey, ew, eh in eyes]
    best: tuple[float, Eyes] | None = None
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            (ax, ay), (bx, by) = centres[i], centres[j]
            dx, dy = abs(ax - bx), abs(ay - by)
            # plausible pair: side by side, roughly level, 0.2-0.6 face widths apart
            if not (0.2 * fw <= dx <= 0.6 * fw and dy <= 0.25 * dx):
                continue
            # prefer pairs centred on the face
            cost = abs((ax + bx) / 2 - (fx + fw / 2)) + dy
            if best is None or cost < best[0]:
                best = (cost, _ordered((ax, ay), (bx, by)))
    if best is None:
        return None
    (lx, ly), (rx, ry) = best[1]
    return (lx / scale, ly / scale), (rx / scale, ry / scale)


_DETECT = {"landmarks": landmark_eyes, "haar": haar_eyes}


def available_detectors() -> tuple[str, ...]:
    """The detectors of :data:`DETECTORS` that can run in this environment, in order."""
    ok = {"landmarks": landmarks_available(), "haar": haar_available()}
    return tuple(d for d in DETECTORS if ok[d])


def eye_location_info(detect: bool = True) -> dict[str, Any]:
    """What the builder records about its eye location: the chain it used and what was missing.

    Returns
    -------
    dict
        ``chain`` (the methods tried after ``known``, ending in ``canonical``), ``dlib`` and
        ``landmark_model`` (dlib's version and the model's file name, or None), and ``note`` (why
        a detector is missing, or that detection was switched off; None when both ran).
    """
    st = landmark_status()
    chain = list(available_detectors()) if detect else []
    notes = []
    if not detect:
        notes.append("eye detection switched off: eyes not known to the source went to the canonical position")
    else:
        if not st["available"]:
            notes.append(f"no landmark model ({st['reason']}); eyes were located by the Haar cascades "
                         "or put at the canonical position")
        if "haar" not in chain:
            notes.append("this OpenCV build has no Haar cascades (OpenCV 5 wheels dropped them)")
    # The model's file name, not its path: the attributes must not differ between machines.
    return {"chain": chain + ["canonical"], "dlib": st["dlib"],
            "landmark_model": Path(st["model"]).name if st["model"] else None, "note": "; ".join(notes) or None}


def _check_detectors(detectors: Sequence[str] | None) -> tuple[str, ...]:
    if detectors is None:
        return DETECTORS
    if isinstance(detectors, str):
        raise TypeError(f"detectors must be a sequence of names from {DETECTORS}, got the string {detectors!r}")
    bad = [d for d in detectors if d not in DETECTORS]
    if bad:
        raise ValueError(f"unknown eye detector(s) {bad}: use {list(DETECTORS)}")
    return tuple(detectors)


def detect_eyes(image: np.ndarray, detectors: Sequence[str] | None = None) -> tuple[Eyes, str] | None:
    """The first of ``detectors`` that finds both eyes: (eyes, its name), or None.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), (H, W, 1) or (H, W), uint8
    detectors : sequence of {"landmarks", "haar"}, optional
        Which to try, in order (default :data:`DETECTORS`); one not installed here finds nothing.
    """
    for name in _check_detectors(detectors):
        found = _DETECT[name](image)
        if found is not None:
            return found, name
    return None


def locate_eyes(image: np.ndarray, known: Eyes | np.ndarray | None = None, *, detect: bool = True,
                canonical: str = "default", detectors: Sequence[str] | None = None) -> tuple[Eyes, str]:
    """Eye centres for placing glasses, and the method used.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), (H, W, 1) or (H, W), uint8
    known : ((x, y), (x, y)) or ndarray of shape (2, 2), optional
        Eye centres the source knows (used as is when given and finite).
    detect : bool
        Try the detectors when the eyes are not known.
    canonical : str
        Key of :data:`CANONICAL_EYES` used as the last resort.
    detectors : sequence of {"landmarks", "haar"}, optional
        Which detectors to try, in order (default: both, landmarks first).

    Returns
    -------
    eyes : ((x, y), (x, y))
        Left (smaller x) eye first, in the image's pixel coordinates.
    method : {"known", "landmarks", "haar", "canonical"}
    """
    img = np.asarray(image)
    if img.ndim < 2:
        raise ValueError(f"image must be at least 2-D, got shape {img.shape}")
    if canonical not in CANONICAL_EYES:
        raise KeyError(f"no canonical eye position for {canonical!r}; known: {sorted(CANONICAL_EYES)}")
    chain = _check_detectors(detectors)
    if known is not None:
        lm = np.asarray(known, dtype=np.float64)
        if lm.shape != (2, 2):
            raise ValueError(f"known eye centres must have shape (2, 2), got {lm.shape}")
        if np.all(np.isfinite(lm)):
            return ((float(lm[0, 0]), float(lm[0, 1])), (float(lm[1, 0]), float(lm[1, 1]))), "known"
    if detect:
        found = detect_eyes(img, chain)
        if found is not None:
            return found
    return canonical_eyes(img.shape[:2], canonical), "canonical"
