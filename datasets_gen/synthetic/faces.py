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
from statistics import NormalDist
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


#: Renderer versions. ``"v1"`` (the default): the images every synth-faces variant was built with so
#: far — small outputs drawn on a 4x canvas, Gaussian sensor noise. ``"v2"``: the same faces, poses,
#: light and eyes, drawn on a 2x canvas (a quarter of the pixels to draw, warp and reduce) with the
#: noise read from a 256-level Gaussian table by random bytes (about a third of the cost of a
#: float32 normal draw); ~3x faster to render (1.6-1.8x a whole gzip-compressed build; measured in
#: results/ytaf-scale/README.md), every pixel different from v1 (edges a little less smooth, noise
#: quantised to 256 levels), equally a pure function of (seed, identity, session, frame).
RENDERERS = ("v1", "v2")


def _check_renderer(renderer: str) -> None:
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")


def _supersample(h: int, w: int, renderer: str = "v1") -> int:
    """Supersampling factor: small outputs are drawn larger and area-reduced (smooth edges)."""
    if renderer == "v2":
        return 2 if max(h, w) < 160 else 1
    return 4 if max(h, w) < 80 else (2 if max(h, w) < 160 else 1)


def _noise_table() -> np.ndarray:
    """256 float32 levels: the standard normal's quantiles at (k + 0.5) / 256, scaled to unit
    variance (v2's noise reads them by a random byte: a discretised Gaussian)."""
    nd = NormalDist()
    q = np.array([nd.inv_cdf((k + 0.5) / 256) for k in range(256)])
    return (q / np.sqrt(np.mean(q * q))).astype(np.float32)


_NOISE_TABLE = _noise_table()


def frame_noise(seed: int, session: int, frame: int, shape: tuple[int, ...], renderer: str = "v1") -> np.ndarray:
    """Sensor noise of one frame (float32, unit variance), from the frame's own random stream."""
    _check_renderer(renderer)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9, session, frame]))
    if renderer == "v2":
        return np.take(_NOISE_TABLE, rng.integers(0, 256, shape, dtype=np.uint8))
    return rng.standard_normal(shape, dtype=np.float32)


class _SessionFrame:
    """What every frame of one session shares, computed once per session rather than per image:
    the supersampled background, the light/brightness factor and the identity's colours."""

    def __init__(self, size_hw: tuple[int, int], ident: dict, sess: dict, renderer: str = "v1"):
        h, w = size_hw
        self.h, self.w = h, w
        self.ss = ss = _supersample(h, w, renderer)
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


class _FaceTemplate:
    """The drawing of one identity on one canvas size, with everything that does not depend on the
    frame worked out once (per identity and session instead of per image): the rows, axes, radii,
    thicknesses and colours of every primitive and the frame-independent part of every column.
    :meth:`draw` adds the frame's yaw and smile and calls OpenCV; it draws exactly the primitives,
    in the same order and at the same integer coordinates, as the per-image ``_draw`` it replaced
    (every coordinate is the same float expression, only hoisted; ``tests/test_faces_render.py``
    checks every pixel against that renderer)."""

    def __init__(self, ident: dict, sf: "_SessionFrame", H: int, W: int):
        def X(x):
            return int(round(x * W))

        def Y(y):
            return int(round(y * H))

        def A(ax, ay):
            return max(1, int(round(ax * W))), max(1, int(round(ay * H)))

        self.W = W
        fw, fh = ident["face_w"], ident["face_h"]
        cx, cy = 0.5, 0.52
        self.cx = cx
        self.style = style = ident["hair_style"]
        self.skin, self.hair, self.dark_hair = sf.skin, sf.hair, sf.dark_hair
        self.long_hair = ((X(cx), Y(cy + 0.02)), A(fw * 1.25, fh * 1.15)) if style == 1 else None
        # ears: x = (cx + sgn * fw * 0.98) + yaw * 0.3
        self.ears = [(cx + sgn * fw * 0.98, Y(EYE_Y + 0.05)) for sgn in (-1, 1)]
        self.ear_axes = A(0.035 * ident["ears"], 0.07 * ident["ears"])
        self.face = ((X(cx), Y(cy)), A(fw, fh))
        self.beard = (Y(cy + fh * 0.35), A(fw * 0.85, fh * 0.55)) if ident["beard"] else None
        self.cap = ((X(cx), Y(cy - fh * 0.25)), A(fw * 1.05, fh * 0.8)) if style in (0, 1, 3) else None
        self.fringe = (Y(cy - fh * 0.55), A(fw * 0.9, fh * 0.3)) if style == 3 else None
        ex = EYE_DX * ident["eye_dx"]
        es = ident["eye_size"]
        by = EYE_Y - 0.065
        tilt = ident["brow_tilt"]
        # per eye: (cx + sgn * ex, brow row at -0.055, brow row at +0.055)
        self.eyes = [(cx + sgn * ex, Y(by + sgn * tilt), Y(by - sgn * tilt)) for sgn in (-1, 1)]
        self.brow_t = max(1, int(round(0.012 * ident["brow_thick"] * H)))
        self.eye_y = Y(EYE_Y)
        self.eye_axes = A(0.05 * es, 0.024 * es)
        self.iris_r = max(1, int(0.02 * es * H))
        self.pupil_r = max(1, int(0.009 * es * H))
        self.iris, self.shade, self.lip = sf.iris, sf.shade, sf.lip
        self.nose_t = max(1, int(0.008 * H))
        self.nose_y0, self.nose_y1 = Y(EYE_Y + 0.03), Y(EYE_Y + 0.03 + ident["nose_len"])
        self.nostril = ([sgn * ident["nose_w"] * 0.6 for sgn in (-1, 1)], Y(EYE_Y + 0.04 + ident["nose_len"]),
                        max(1, int(0.01 * H)))
        self.mouth_y = Y(ident["mouth_y"])
        self.mouth_ax = max(1, int(round(ident["mouth_w"] / 2 * W)))
        self.mouth_top = A(ident["mouth_w"] / 2, 0.01)
        self.H = H

    def draw(self, img: np.ndarray, yaw: float, smile: float) -> None:
        """Draw the face of a frame with ``yaw`` (already x 0.06) and ``smile`` on ``img`` in place."""
        W, AA, ell, circ, line = self.W, cv2.LINE_AA, cv2.ellipse, cv2.circle, cv2.line
        skin, hair, dark_hair = self.skin, self.hair, self.dark_hair
        if self.long_hair is not None:  # long hair behind the face
            ell(img, *self.long_hair, 0, 0, 360, hair, -1, AA)
        y3 = yaw * 0.3
        for x0, y in self.ears:
            ell(img, (int(round((x0 + y3) * W)), y), self.ear_axes, 0, 0, 360, skin, -1, AA)
        ell(img, *self.face, 0, 0, 360, skin, -1, AA)
        xc = int(round((self.cx + yaw) * W))
        if self.beard is not None:
            ell(img, (xc, self.beard[0]), self.beard[1], 0, 0, 180, dark_hair, -1, AA)
        if self.cap is not None:  # hair cap on top
            ell(img, *self.cap, 0, 180, 360, hair, -1, AA)
            if self.fringe is not None:
                ell(img, (xc, self.fringe[0]), self.fringe[1], 0, 0, 180, hair, -1, AA)
        ey = self.eye_y
        for x0, bya, byb in self.eyes:
            x = x0 + yaw
            line(img, (int(round((x - 0.055) * W)), bya), (int(round((x + 0.055) * W)), byb), dark_hair, self.brow_t, AA)
            ell(img, (int(round(x * W)), ey), self.eye_axes, 0, 0, 360, (245, 245, 245), -1, AA)
            xi = int(round((x + y3) * W))
            circ(img, (xi, ey), self.iris_r, self.iris, -1, AA)
            circ(img, (xi, ey), self.pupil_r, (15, 15, 15), -1, AA)
        nx = self.cx + yaw * 1.2
        line(img, (int(round(nx * W)), self.nose_y0), (int(round((nx + 0.01) * W)), self.nose_y1), self.shade,
             self.nose_t, AA)
        offs, ny, nr = self.nostril
        for o in offs:
            circ(img, (int(round((nx + o) * W)), ny), nr, self.shade, -1, AA)
        # mouth: lips as an ellipse whose lower half grows with the smile
        ell(img, (xc, self.mouth_y), (self.mouth_ax, max(1, int(round((0.012 + 0.02 * max(smile, 0)) * self.H)))),
            0, 0, 180, self.lip, -1, AA)
        ell(img, (xc, self.mouth_y), self.mouth_top, 0, 180, 360, self.lip, -1, AA)


def render_frames(size_hw: tuple[int, int], ident: dict, sess: dict, frames: Sequence[int],
                  noise: np.ndarray, renderer: str = "v1") -> np.ndarray:
    """RGB uint8 faces (n, H, W, 3) for ``frames`` of one session; ``noise`` is (n, H, W, 3) float32.

    Per frame only the drawing (from the identity's :class:`_FaceTemplate`), the pose warp and
    the reduction run; the background, the light, the colours and the face's geometry are
    computed once per session, and the light, noise and clipping run on the whole batch. With
    ``renderer="v1"`` every pixel equals the one-frame-at-a-time computation (same operations in
    the same dtypes, only hoisted or batched); ``"v2"`` draws on a 2x canvas (see :data:`RENDERERS`).
    """
    _check_renderer(renderer)
    h, w = size_hw
    sf = _SessionFrame(size_hw, ident, sess, renderer)
    H, W = sf.canvas.shape[:2]
    face = _FaceTemplate(ident, sf, H, W)
    small = np.empty((len(frames), h, w, 3), np.uint8)
    yaws, smiles = sess["yaw"] * 0.06, sess["smile"]
    for k, f in enumerate(frames):
        img = sf.canvas.copy()
        face.draw(img, float(yaws[f]), float(smiles[f]))
        m = _pose_matrix(W, H, sess["rot"][f], sess["scale"][f], sess["dx"][f], sess["dy"][f])
        img = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        small[k] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if sf.ss > 1 else img
    out = small.astype(np.float32)
    # v1 multiplies by float64 factors (the session's 0-d parameters promote), as it always did;
    # v2 keeps the arithmetic in float32 (half the memory traffic).
    out *= sf.light if renderer == "v1" else sf.light.astype(np.float32)
    if sf.blur:
        for k in range(out.shape[0]):
            out[k] = cv2.GaussianBlur(out[k], (0, 0), sf.blur)
    if renderer == "v1":
        out += noise * sess["noise"]
    else:
        noise = noise * np.float32(sess["noise"])
        out += noise
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def render_face(size_hw: tuple[int, int], ident: dict, sess: dict, f: int, noise: np.ndarray,
                renderer: str = "v1") -> np.ndarray:
    """One RGB uint8 face image of ``size_hw`` (frame ``f`` of a session)."""
    return render_frames(size_hw, ident, sess, [f], noise[None], renderer)[0]


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
    renderer : {"v1", "v2"}
        ``"v1"`` (default): the images synth-faces has always made. ``"v2"``: ~3x faster to
        render, different pixels (see :data:`RENDERERS`); recorded in the source's config (and so
        in the variant) only when not v1, so v1 variants keep their bytes.
    """

    name = "synth-faces"
    canonical_eyes = "synth-faces"
    description = ("synth-faces: procedurally rendered identities (face shape, skin tone, hair, eyes, brows, nose, "
                   "mouth, ears, beard) in sessions with pose, expression, lighting and noise jitter; eye positions "
                   "known exactly. Generated by datasets_gen; no real photographs.")

    def __init__(self, *, image_size: tuple[int, int] = (55, 47), n_identities: int = 100,
                 images_per_identity: int = 100, session_length: int = 25,
                 shares: tuple[float, float, float] = (0.75, 0.20, 0.05), seed: int = 0, strict: bool = False,
                 renderer: str = "v1"):
        _check_renderer(renderer)
        self.renderer = renderer
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
        if renderer != "v1":
            config["renderer"] = renderer
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
            out[k] = frame_noise(self.seed, s, int(f), (h, w, 3), self.renderer)
        return out

    def load(self, split: str, rows: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        h, w = self.image_size
        out = np.empty((rows.size, h, w, 3), np.uint8)

        def one(job) -> None:
            s, sel, frames, c = job
            sess, _ = self._session(s)
            out[sel] = render_frames((h, w), self._identity(c), sess, frames, self._frame_noise(s, frames),
                                     self.renderer)

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
