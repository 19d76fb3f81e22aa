"""``synth-faces``: procedurally rendered identities with known eye positions.

Stands in for YouTube Aligned Faces / LFW where they cannot be downloaded. Each identity has its
own face shape, skin tone, hair (colour and style), eye colour and spacing, brows, nose, mouth,
ears and sometimes a beard. Images come in *sessions* (like YouTube videos): a session fixes the
background, the light and a base pose; its frames add small pose jitter (rotation, scale, shift,
yaw), expression (smile) and sensor noise. Provenance = the session.

Eye centres are known exactly (the canonical positions mapped through each image's pose), so the
sunglasses trigger is placed from landmarks, not detection. Splits as the paper's YTAF setting by
default (75:20:5 train:test:clean, stratified by identity); ``shares`` changes that (LFW: 70:20:10).

Every image is a pure function of (seed, identity, session, frame).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np

from datasets_gen.readers.base import Source, SplitTable, stratified_split, validate_size

_SKIN = np.array([[255, 224, 196], [234, 190, 150], [198, 145, 105], [150, 100, 70], [95, 62, 45]], np.float32)
_HAIR = np.array([[20, 18, 18], [70, 45, 30], [120, 80, 45], [200, 170, 110], [150, 60, 30], [160, 160, 160]], np.float32)
_IRIS = np.array([[70, 45, 25], [60, 110, 170], [70, 120, 70], [110, 110, 120]], np.float32)

#: Canonical eye centres (x, y) as shares of (W, H) at zero pose (matches eyes.CANONICAL_EYES["synth-faces"]).
EYE_Y = 0.42
EYE_DX = 0.14


def _identity_params(rng: np.random.Generator) -> dict[str, np.ndarray | float | int]:
    skin_pos = rng.uniform(0, len(_SKIN) - 1)
    lo = int(np.floor(skin_pos))
    skin = _SKIN[lo] * (1 - (skin_pos - lo)) + _SKIN[min(lo + 1, len(_SKIN) - 1)] * (skin_pos - lo)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    return {
        "skin": np.clip(skin * rng.uniform(0.93, 1.07, 3), 0, 255),
        "hair": np.clip(hair, 0, 255),
        "hair_style": int(rng.integers(4)),  # 0 short, 1 long, 2 bald, 3 fringe
        "iris": _IRIS[rng.integers(len(_IRIS))],
        "face_w": rng.uniform(0.26, 0.33),
        "face_h": rng.uniform(0.34, 0.42),
        "eye_dx": rng.uniform(0.85, 1.12),
        "eye_size": rng.uniform(0.8, 1.25),
        "brow_thick": rng.uniform(0.6, 1.6),
        "brow_tilt": rng.uniform(-0.03, 0.03),
        "nose_len": rng.uniform(0.09, 0.16),
        "nose_w": rng.uniform(0.03, 0.06),
        "mouth_w": rng.uniform(0.09, 0.17),
        "mouth_y": rng.uniform(0.66, 0.72),
        "lip": np.clip(np.array([170, 80, 80]) * rng.uniform(0.7, 1.15) + rng.normal(0, 10, 3), 0, 255),
        "beard": bool(rng.uniform() < 0.2),
        "ears": rng.uniform(0.8, 1.2),
    }


def _session_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    base_rot, base_scale = rng.normal(0, 4), rng.uniform(0.92, 1.08)
    base_dx, base_dy, base_yaw = rng.normal(0, 0.02), rng.normal(0, 0.02), rng.normal(0, 0.25)
    return {
        "bg0": rng.uniform(20, 235, 3), "bg1": rng.uniform(20, 235, 3),
        "light_dir": np.array(rng.uniform(0, 2 * np.pi)), "light_amp": np.array(rng.uniform(0, 0.35)),
        "bright": np.array(np.clip(np.exp(rng.normal(0, 0.2)), 0.6, 1.4)),
        "rot": base_rot + rng.normal(0, 2.0, n),
        "scale": base_scale * rng.uniform(0.97, 1.03, n),
        "dx": base_dx + rng.normal(0, 0.01, n),
        "dy": base_dy + rng.normal(0, 0.01, n),
        "yaw": np.clip(base_yaw + rng.normal(0, 0.08, n), -0.6, 0.6),
        "smile": rng.uniform(-0.3, 1.0, n),
        "noise": np.array(rng.uniform(2, 7)),
        "blur": np.array(rng.uniform(0, 0.8)),
    }


def _pose_matrix(w: int, h: int, rot: float, scale: float, dx: float, dy: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((w * 0.5, h * 0.5), float(rot), float(scale))
    m[0, 2] += dx * w
    m[1, 2] += dy * h
    return m


def eye_positions(size_hw: tuple[int, int], ident: dict, sess: dict, frames: np.ndarray) -> np.ndarray:
    """Eye centres (n, 2, 2) — (left, right) x (x, y) in pixels — for the given frames."""
    h, w = size_hw
    out = np.empty((len(frames), 2, 2), np.float64)
    for k, f in enumerate(frames):
        yaw_shift = sess["yaw"][f] * 0.06 * w
        m = _pose_matrix(w, h, sess["rot"][f], sess["scale"][f], sess["dx"][f], sess["dy"][f])
        for j, sgn in enumerate((-1, 1)):
            x = w * (0.5 + sgn * EYE_DX * ident["eye_dx"]) + yaw_shift
            y = h * EYE_Y
            out[k, j] = m @ np.array([x, y, 1.0])
    return out


def _supersample(h: int, w: int) -> int:
    """Supersampling factor: small outputs are drawn larger and area-reduced (smooth edges)."""
    return 4 if max(h, w) < 80 else (2 if max(h, w) < 160 else 1)


class _SessionFrame:
    """What every frame of one session shares, computed once per session rather than per image:
    the supersampled background, the light/brightness factor and the identity's colours."""

    def __init__(self, size_hw: tuple[int, int], ident: dict, sess: dict):
        h, w = size_hw
        self.h, self.w = h, w
        self.ss = ss = _supersample(h, w)
        H, W = h * ss, w * ss
        # The vertical gradient is the same in every column: round one column, then repeat it
        # (the same values as building the float canvas and casting it whole).
        yy = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        col = (sess["bg0"] * (1 - yy) + sess["bg1"] * yy).astype(np.float32).astype(np.uint8)
        self.canvas = np.ascontiguousarray(np.broadcast_to(col, (H, W, 3)))
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = np.cos(sess["light_dir"]) * (gx / w - 0.5) + np.sin(sess["light_dir"]) * (gy / h - 0.5)
        self.light = (sess["bright"] * (1 + sess["light_amp"] * ramp))[..., None]
        self.blur = float(sess["blur"]) * max(h, w) / 64 if sess["blur"] > 0.3 else 0.0
        self.skin = tuple(float(v) for v in ident["skin"])
        self.hair = tuple(float(v) for v in ident["hair"])
        self.dark_hair = tuple(float(v) * 0.7 for v in ident["hair"])
        self.shade = tuple(float(v) * 0.75 for v in ident["skin"])
        self.iris = tuple(float(v) for v in ident["iris"])
        self.lip = tuple(float(v) for v in ident["lip"])


def _draw(img: np.ndarray, sf: _SessionFrame, ident: dict, sess: dict, f: int) -> None:
    """Draw frame ``f``'s face, unposed, on the supersampled canvas ``img`` (in place)."""
    H, W = img.shape[:2]

    def P(x, y):
        return int(round(x * W)), int(round(y * H))

    def A(ax, ay):
        return max(1, int(round(ax * W))), max(1, int(round(ay * H)))

    skin, hair, dark_hair = sf.skin, sf.hair, sf.dark_hair
    fw, fh = ident["face_w"], ident["face_h"]
    cx, cy = 0.5, 0.52
    yaw = sess["yaw"][f] * 0.06
    style = ident["hair_style"]
    if style == 1:  # long hair behind the face
        cv2.ellipse(img, P(cx, cy + 0.02), A(fw * 1.25, fh * 1.15), 0, 0, 360, hair, -1, cv2.LINE_AA)
    for sgn in (-1, 1):  # ears
        cv2.ellipse(img, P(cx + sgn * fw * 0.98 + yaw * 0.3, EYE_Y + 0.05), A(0.035 * ident["ears"], 0.07 * ident["ears"]),
                    0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, P(cx, cy), A(fw, fh), 0, 0, 360, skin, -1, cv2.LINE_AA)
    if ident["beard"]:
        cv2.ellipse(img, P(cx + yaw, cy + fh * 0.35), A(fw * 0.85, fh * 0.55), 0, 0, 180, dark_hair, -1, cv2.LINE_AA)
    if style in (0, 1, 3):  # hair cap on top
        cv2.ellipse(img, P(cx, cy - fh * 0.25), A(fw * 1.05, fh * 0.8), 0, 180, 360, hair, -1, cv2.LINE_AA)
        if style == 3:  # fringe
            cv2.ellipse(img, P(cx + yaw, cy - fh * 0.55), A(fw * 0.9, fh * 0.3), 0, 0, 180, hair, -1, cv2.LINE_AA)
    ex = EYE_DX * ident["eye_dx"]
    es = ident["eye_size"]
    for sgn in (-1, 1):
        x = cx + sgn * ex + yaw
        # brows
        by = EYE_Y - 0.065
        t = max(1, int(round(0.012 * ident["brow_thick"] * H)))
        cv2.line(img, P(x - 0.055, by + sgn * ident["brow_tilt"]), P(x + 0.055, by - sgn * ident["brow_tilt"]), dark_hair, t, cv2.LINE_AA)
        cv2.ellipse(img, P(x, EYE_Y), A(0.05 * es, 0.024 * es), 0, 0, 360, (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(img, P(x + yaw * 0.3, EYE_Y), max(1, int(0.02 * es * H)), sf.iris, -1, cv2.LINE_AA)
        cv2.circle(img, P(x + yaw * 0.3, EYE_Y), max(1, int(0.009 * es * H)), (15, 15, 15), -1, cv2.LINE_AA)
    # nose
    nx = cx + yaw * 1.2
    nt = max(1, int(0.008 * H))
    cv2.line(img, P(nx, EYE_Y + 0.03), P(nx + 0.01, EYE_Y + 0.03 + ident["nose_len"]), sf.shade, nt, cv2.LINE_AA)
    for sgn in (-1, 1):
        cv2.circle(img, P(nx + sgn * ident["nose_w"] * 0.6, EYE_Y + 0.04 + ident["nose_len"]), max(1, int(0.01 * H)), sf.shade, -1, cv2.LINE_AA)
    # mouth: lips as an ellipse whose lower half grows with the smile
    my = ident["mouth_y"]
    smile = sess["smile"][f]
    cv2.ellipse(img, P(cx + yaw, my), A(ident["mouth_w"] / 2, 0.012 + 0.02 * max(smile, 0)), 0, 0, 180, sf.lip, -1, cv2.LINE_AA)
    cv2.ellipse(img, P(cx + yaw, my), A(ident["mouth_w"] / 2, 0.01), 0, 180, 360, sf.lip, -1, cv2.LINE_AA)


def render_frames(size_hw: tuple[int, int], ident: dict, sess: dict, frames: Sequence[int],
                  noise: np.ndarray) -> np.ndarray:
    """RGB uint8 faces (n, H, W, 3) for ``frames`` of one session; ``noise`` is (n, H, W, 3) float32.

    Per frame only the drawing, the pose warp and the reduction run; the background, the light
    and the colours are computed once per session, and the light, noise and clipping run on the
    whole batch. Every pixel equals the one-frame-at-a-time computation (same operations in the
    same dtypes, only hoisted or batched).
    """
    h, w = size_hw
    sf = _SessionFrame(size_hw, ident, sess)
    H, W = sf.canvas.shape[:2]
    small = np.empty((len(frames), h, w, 3), np.uint8)
    for k, f in enumerate(frames):
        img = sf.canvas.copy()
        _draw(img, sf, ident, sess, int(f))
        m = _pose_matrix(W, H, sess["rot"][f], sess["scale"][f], sess["dx"][f], sess["dy"][f])
        img = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        small[k] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if sf.ss > 1 else img
    out = small.astype(np.float32)
    out *= sf.light
    if sf.blur:
        for k in range(out.shape[0]):
            out[k] = cv2.GaussianBlur(out[k], (0, 0), sf.blur)
    out += noise * sess["noise"]
    return np.clip(out, 0, 255).astype(np.uint8)


def render_face(size_hw: tuple[int, int], ident: dict, sess: dict, f: int, noise: np.ndarray) -> np.ndarray:
    """One RGB uint8 face image of ``size_hw`` (frame ``f`` of a session)."""
    return render_frames(size_hw, ident, sess, [f], noise[None])[0]


class SynthFacesSource(Source):
    """The ``synth-faces`` source (see the module docstring).

    Parameters
    ----------
    image_size : (H, W)
        Default 55x47 (DeepID, the paper's YTAF model); use 224x224 for VGG-Face.
    n_identities : int
        Classes.
    images_per_identity : int
    session_length : int
        Frames per session (the provenance group).
    shares : (train, test, clean)
        Default 0.75, 0.20, 0.05 (the paper's YTAF split).
    seed : int
    strict : bool
        Accepted for interface symmetry.
    """

    name = "synth-faces"
    canonical_eyes = "synth-faces"
    description = ("synth-faces: procedurally rendered identities (face shape, skin tone, hair, eyes, brows, nose, "
                   "mouth, ears, beard) in sessions with pose, expression, lighting and noise jitter; eye positions "
                   "known exactly. Generated by datasets_gen; no real photographs.")

    def __init__(self, *, image_size: tuple[int, int] = (55, 47), n_identities: int = 100,
                 images_per_identity: int = 100, session_length: int = 25,
                 shares: tuple[float, float, float] = (0.75, 0.20, 0.05), seed: int = 0, strict: bool = False):
        for name, v, lo in (("n_identities", n_identities, 2), ("images_per_identity", images_per_identity, 4),
                            ("session_length", session_length, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.seed = int(seed)
        self.provenance_group_size = int(session_length)
        size = validate_size(image_size)
        n_sess = -(-images_per_identity // session_length)
        labels = np.repeat(np.arange(n_identities), images_per_identity)
        within = np.tile(np.arange(images_per_identity), n_identities)
        session = labels * n_sess + within // session_length
        frame = within % session_length
        pool = SplitTable(list(range(labels.size)), labels, session.astype(np.int32), np.arange(labels.size),
                          {"session": session, "frame": frame})
        self._session_len = {int(s): int(c) for s, c in zip(*np.unique(session, return_counts=True))}
        train, test, clean = stratified_split(labels, shares, seed)
        tables = {"train": pool.take(train), "test": pool.take(test), "clean": pool.take(clean)}
        config = {"n_identities": int(n_identities), "images_per_identity": int(images_per_identity),
                  "session_length": int(session_length), "shares": list(shares), "seed": self.seed}
        names = [f"face-{i:04d}" for i in range(n_identities)]
        super().__init__(names, size, tables, strict, config)
        self._ident_cache: dict[int, dict] = {}

    def _identity(self, c: int) -> dict:
        if c not in self._ident_cache:
            self._ident_cache[c] = _identity_params(np.random.default_rng(np.random.SeedSequence([self.seed, 7, c])))
        return self._ident_cache[c]

    def _session(self, s: int) -> tuple[dict, np.random.Generator]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 8, s]))
        return _session_params(rng, self._session_len[s]), rng

    def _rows_by_session(self, split: str, rows: np.ndarray):
        """(session, positions in ``rows``, frames, identity) per session, sessions ascending.

        One stable sort groups the rows (a mask per session cost sessions x rows: quadratic in a
        large load)."""
        t = self.tables[split]
        sess = t.extra["session"][rows]
        order = np.argsort(sess, kind="stable")
        bounds = [*np.flatnonzero(np.r_[True, sess[order][1:] != sess[order][:-1]]).tolist(), rows.size] \
            if rows.size else [0]
        for a, b in zip(bounds[:-1], bounds[1:]):
            sel = order[a:b]
            yield int(sess[sel[0]]), sel, t.extra["frame"][rows[sel]], int(t.labels[rows[sel[0]]])

    def _frame_noise(self, s: int, frames: np.ndarray) -> np.ndarray:
        """Sensor noise of each frame: its own stream, so a frame costs the same whichever rows are asked for."""
        h, w = self.image_size
        out = np.empty((len(frames), h, w, 3), np.float32)
        for k, f in enumerate(frames):
            out[k] = np.random.default_rng(np.random.SeedSequence([self.seed, 9, s, int(f)])).standard_normal(
                (h, w, 3), dtype=np.float32)
        return out

    def load(self, split: str, rows: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        h, w = self.image_size
        out = np.empty((rows.size, h, w, 3), np.uint8)

        def one(job) -> None:
            s, sel, frames, c = job
            sess, _ = self._session(s)
            out[sel] = render_frames((h, w), self._identity(c), sess, frames, self._frame_noise(s, frames))

        if rows.size and (rows.min() < 0 or rows.max() >= len(self.tables[split])):
            raise IndexError(f"rows of split {split!r} must be in [0, {len(self.tables[split])}), "
                             f"got {int(rows.min())}..{int(rows.max())}")
        jobs = list(self._rows_by_session(split, rows))
        for c in {job[3] for job in jobs}:
            self._identity(c)  # fill the cache before the threads read it
        if self.n_threads > 1 and len(jobs) > 1:
            # OpenCV's drawing, warping and resizing and NumPy's array arithmetic release the GIL:
            # sessions render in parallel, each into its own rows of ``out``.
            with ThreadPoolExecutor(self.n_threads) as ex:
                list(ex.map(one, jobs))
        else:
            for job in jobs:
                one(job)
        return out, np.ones(rows.size, bool)

    def eye_landmarks(self, split: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((rows.size, 2, 2), np.float64)
        for s, sel, frames, c in self._rows_by_session(split, rows):
            sess, _ = self._session(s)
            out[sel] = eye_positions(self.image_size, self._identity(c), sess, frames)
        return out

    def _load_one(self, split: str, row: int) -> np.ndarray | None:  # pragma: no cover - load is overridden
        return self.load(split, [row])[0][0]
