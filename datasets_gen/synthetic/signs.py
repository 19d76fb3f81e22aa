"""``synth-signs``: a GTSRB-like data set of 43 procedurally rendered traffic-sign classes.

The real GTSRB cannot be downloaded here, so this source stands in for it with the same classes,
class frequencies, image size and structure: the training pool is made of *tracks* of
``track_length`` (30) frames of one "physical sign" seen while approaching it (same background
and pose, growing scale, small jitter, fresh sensor noise per frame), the provenance id is the
track, and 10 % of the training images are held out by whole tracks as the clean set — exactly
like :mod:`datasets_gen.readers.gtsrb`. Test images are independent single frames.

Each image: a class template (:mod:`datasets_gen.synthetic.templates`, drawn once and cached)
warped by a random perspective (scale 0.55-1.0 of the image, rotation, tilt, offset) onto a procedural background
(smooth colour field with finer texture, sometimes a pole), then lit (brightness, contrast,
colour cast, a soft shadow ramp), blurred (Gaussian or motion) and given Gaussian noise. Rendering
is vectorised per track; per-image OpenCV calls are only the warp and the blur, which is what
makes >10k images/s possible on one core.

Every image is a pure function of (seed, split, track, frame): loading any subset of rows in any
order or batch size gives the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from datasets_gen.readers.base import Source, SplitTable, validate_size
from datasets_gen.readers.gtsrb import GTSRB_CLASS_NAMES, clean_tracks
from datasets_gen.synthetic.templates import N_SIGN_CLASSES, template

#: GTSRB's training and test images per class (39,209 and 12,630): synth-signs keeps the imbalance.
GTSRB_TRAIN_COUNTS = [210, 2220, 2250, 1410, 1980, 1860, 420, 1440, 1410, 1470, 2010, 1320, 2100, 2160, 780, 630,
                      420, 1110, 1200, 210, 360, 330, 390, 510, 270, 1500, 600, 240, 540, 270, 450, 780, 240, 689,
                      420, 1200, 390, 210, 2070, 300, 360, 240, 240]
GTSRB_TEST_COUNTS = [60, 720, 750, 450, 660, 630, 150, 450, 450, 480, 660, 420, 690, 720, 270, 210, 150, 360, 390,
                     60, 90, 90, 120, 150, 90, 480, 180, 60, 150, 90, 150, 270, 60, 210, 120, 390, 120, 60, 690, 90,
                     90, 60, 90]

#: Background palettes (RGB): sky, foliage, buildings, dusk, road side, snow/overcast.
_PALETTES = np.array([
    [[120, 160, 215], [170, 200, 235]],
    [[40, 90, 40], [100, 140, 70]],
    [[90, 85, 80], [170, 160, 150]],
    [[40, 40, 60], [110, 90, 100]],
    [[110, 100, 70], [160, 150, 110]],
    [[185, 190, 195], [225, 228, 232]],
], np.float32)

#: Test images are rendered in units of this many independent frames (vectorised parameters).
TEST_UNIT = 32
_TEMPLATE_SIZES = (32, 64, 128, 256)


def class_counts(total: int | None, reference: Sequence[int]) -> np.ndarray:
    """Images per class: ``reference`` when ``total`` is None, else scaled to ``total`` (each >= 1)."""
    ref = np.asarray(reference, np.int64)
    if total is None:
        return ref.copy()
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < len(ref):
        raise ValueError(f"need at least one image per class ({len(ref)}), got {total!r}")
    raw = ref * (total / ref.sum())
    counts = np.maximum(1, np.floor(raw).astype(np.int64))
    # distribute the remainder by largest fractional part (stable)
    short = int(total - counts.sum())
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    if short > 0:
        counts[order[:short]] += 1
    elif short < 0:
        for i in np.argsort(-counts, kind="stable")[: -short]:
            counts[i] -= 1
    return counts


class SignRenderer:
    """Renders sign images of one size from parameter arrays (see :meth:`draw_params`)."""

    def __init__(self, image_size: tuple[int, int]):
        self.h, self.w = validate_size(image_size)
        yy, xx = np.mgrid[0:self.h, 0:self.w].astype(np.float32)
        self.yy, self.xx = yy / self.h - 0.5, xx / self.w - 0.5
        self._template_cache: dict[int, list[np.ndarray]] = {}
        self._motion_cache: dict[int, np.ndarray] = {}
        # fixed seed: the bank is part of the renderer, not of a data set's randomness
        bank_len = max(1 << 20, 8 * self.h * self.w * 3)
        self._bank = np.random.default_rng(0x5EED).standard_normal(bank_len, dtype=np.float32)

    # ---- parameters ----------------------------------------------------------------------
    @staticmethod
    def draw_params(rng: np.random.Generator, n_frames: int, track: bool) -> dict[str, np.ndarray]:
        """Random scene parameters for ``n_frames`` frames.

        ``track=True``: one sign, background palette and light for all frames, the scale growing
        along the track with small per-frame jitter and fresh background detail per frame;
        ``track=False``: every frame independent.
        """
        n = n_frames
        k = 1 if track else n

        def shared(x):
            return np.repeat(x, n, axis=0) if track else x

        pal = rng.integers(0, len(_PALETTES), k)
        mix = rng.uniform(0, 1, (k, 4, 4, 1)).astype(np.float32)
        grid = _PALETTES[pal, 0][:, None, None] * (1 - mix) + _PALETTES[pal, 1][:, None, None] * mix
        # mostly luminance texture with a little chroma: real backgrounds are not rainbow-coloured
        grid = grid + rng.normal(0, 16, (k, 4, 4, 1)).astype(np.float32) + rng.normal(0, 6, (k, 4, 4, 3)).astype(np.float32)
        # Every frame gets its own background detail: the scene behind a sign changes as the
        # camera moves, and identical backgrounds within a track would let a model memorise
        # tracks instead of learning signs.
        grid = shared(grid) + rng.normal(0, 12, (n, 4, 4, 1)).astype(np.float32)
        fine = rng.normal(0, 14, (n, 9, 9, 1)).astype(np.float32) + rng.normal(0, 4, (n, 9, 9, 3)).astype(np.float32)
        p = {
            "grid": grid,
            "fine": fine,
            "pole": shared(rng.uniform(0, 1, k) < 0.45),
            "pole_x": shared(rng.uniform(-0.08, 0.08, k)),
            "pole_w": shared(rng.uniform(0.06, 0.12, k)),
            # sign diameter as a share of the image: GTSRB crops keep a ~10 % margin around the sign
            "scale": shared(rng.uniform(0.72, 0.92, k)),
            "rot": shared(rng.normal(0, 5, k)),
            "tilt": shared(rng.uniform(-0.18, 0.18, k)),
            "cx": shared(rng.uniform(-0.07, 0.07, k)),
            "cy": shared(rng.uniform(-0.07, 0.07, k)),
            "bright": shared(np.clip(np.exp(rng.normal(-0.1, 0.3, k)), 0.35, 1.4)),
            "contrast": shared(rng.uniform(0.65, 1.1, k)),
            "cast": shared(rng.uniform(0.85, 1.15, (k, 3))),
            "shadow": shared(rng.uniform(0, 1, k) < 0.3) * shared(rng.uniform(0.2, 0.55, k)),
            "shadow_dir": shared(rng.uniform(0, 2 * np.pi, k)),
            "blur": shared(rng.uniform(0.0, 1.0, k) ** 2 * 1.1),
            "motion": shared(rng.uniform(0, 1, k) < 0.15),
            "motion_ang": shared(rng.uniform(0, 180, k)),
            "noise": shared(rng.uniform(2.0, 8.0, k)),
        }
        if not track:
            # independent frames cover the same range of sizes as the frames of a track
            p["scale"] = np.clip(p["scale"] * rng.uniform(0.85, 1.05, n), 0.55, 1.0)
        else:
            # approaching the sign: scale grows along the track; the pose jitters a little
            grow = np.linspace(0.85, 1.05, n) if n > 1 else np.ones(1)
            p["scale"] = np.clip(p["scale"] * grow * rng.uniform(0.97, 1.03, n), 0.55, 1.0)
            p["cx"] = p["cx"] + rng.normal(0, 0.012, n)
            p["cy"] = p["cy"] + rng.normal(0, 0.012, n)
            p["rot"] = p["rot"] + rng.normal(0, 0.8, n)
            p["bright"] = p["bright"] * rng.uniform(0.95, 1.05, n)
            p["blur"] = np.clip(p["blur"] + rng.normal(0, 0.15, n), 0, 1.3)
        return p

    # ---- rendering -----------------------------------------------------------------------
    def _homographies(self, tsizes: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """Perspective matrices (n, 3, 3) from template squares to the sign's corners in the image."""
        n = tsizes.size
        s = p["scale"] * min(self.h, self.w) / 2.0
        tilt = p["tilt"]
        # square corners (TL, TR, BR, BL); tilt narrows one side (a sign turned about its pole)
        bx = np.array([-1.0, 1.0, 1.0, -1.0])[None, :] * (1 - np.abs(tilt) * 0.6)[:, None]
        by = np.array([-1.0, -1.0, 1.0, 1.0])[None, :] * np.where(np.array([-1, 1, 1, -1])[None, :] < 0,
                                                                    1 - tilt[:, None], 1 + tilt[:, None])
        a = np.deg2rad(p["rot"])[:, None]
        dx = (bx * np.cos(a) - by * np.sin(a)) * s[:, None] + ((0.5 + p["cx"]) * self.w)[:, None]
        dy = (bx * np.sin(a) + by * np.cos(a)) * s[:, None] + ((0.5 + p["cy"]) * self.h)[:, None]
        dst = np.stack([dx, dy], axis=-1).astype(np.float32)  # (n, 4, 2)
        out = np.empty((n, 3, 3), np.float64)
        for i in range(n):
            t = float(tsizes[i])
            src = np.array([[0, 0], [t, 0], [t, t], [0, t]], np.float32)
            out[i] = cv2.getPerspectiveTransform(src, dst[i])
        return out

    def _templates(self, size: int) -> list[np.ndarray]:
        cached = self._template_cache.get(size)
        if cached is None:
            cached = self._template_cache[size] = [template(c, size) for c in range(N_SIGN_CLASSES)]
        return cached

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Standard-normal sensor noise (n, H, W, 3): windows of a fixed seeded noise bank at random
        offsets (drawing fresh normals cost as much as the rest of the rendering)."""
        k = self.h * self.w * 3
        offsets = rng.integers(0, self._bank.size - k, n)
        return self._bank[offsets[:, None] + np.arange(k)[None, :]].reshape(n, self.h, self.w, 3)

    def render(self, class_ids: np.ndarray, p: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """Render ``len(class_ids)`` images.

        Parameters
        ----------
        class_ids : ndarray of shape (n,)
        p : dict
            From :meth:`draw_params` (n rows each).
        noise : ndarray of shape (n, H, W, 3), float32
            Standard-normal noise, scaled by ``p["noise"]``.

        Returns
        -------
        ndarray of shape (n, H, W, 3), uint8
        """
        n, h, w = len(class_ids), self.h, self.w
        img = np.empty((n, h, w, 3), np.float32)
        for b in range(n):
            img[b] = cv2.resize(p["grid"][b], (w, h), interpolation=cv2.INTER_LINEAR)
            img[b] += cv2.resize(p["fine"][b], (w, h), interpolation=cv2.INTER_LINEAR)
        for i in np.flatnonzero(p["pole"]):
            x0 = int((0.5 + p["pole_x"][i] - p["pole_w"][i] / 2) * w)
            x1 = max(x0 + 1, int((0.5 + p["pole_x"][i] + p["pole_w"][i] / 2) * w))
            img[i, h // 2:, x0:x1] = 0.55 * img[i, h // 2:, x0:x1] + 55
        # smallest template at least as large as the sign on screen (no upsampling blur)
        size_idx = np.minimum(np.searchsorted(np.array(_TEMPLATE_SIZES), max(h, w) * p["scale"]), len(_TEMPLATE_SIZES) - 1)
        tsizes = np.array(_TEMPLATE_SIZES)[size_idx]
        mats = self._homographies(tsizes, p)
        sign = np.empty((n, h, w, 4), np.float32)
        for i in range(n):
            tpl = self._templates(int(tsizes[i]))[int(class_ids[i])]
            cv2.warpPerspective(tpl, mats[i], (w, h), dst=sign[i], flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        img *= 1.0 - sign[..., 3:4]
        img += sign[..., :3] * 255.0
        # lighting: colour cast and brightness, contrast about the mean, soft shadow ramp
        img *= (p["bright"][:, None] * p["cast"])[:, None, None, :]
        mean = img.mean(axis=(1, 2, 3), keepdims=True)
        img -= mean
        img *= p["contrast"][:, None, None, None]
        img += mean
        shaded = np.flatnonzero(p["shadow"] > 0)
        if shaded.size:
            d = p["shadow_dir"][shaded]
            ramp = np.cos(d)[:, None, None] * self.xx + np.sin(d)[:, None, None] * self.yy
            img[shaded] *= (1 - p["shadow"][shaded, None, None] * (ramp > 0))[..., None]
        for i in range(n):
            if p["motion"][i]:
                img[i] = cv2.filter2D(img[i], -1, self._motion_kernel(float(p["motion_ang"][i])))
            elif p["blur"][i] > 0.3:
                img[i] = cv2.GaussianBlur(img[i], (0, 0), float(p["blur"][i]) * min(h, w) / 32.0)
        noise *= p["noise"][:, None, None, None]
        img += noise
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)

    def _motion_kernel(self, angle: float) -> np.ndarray:
        key = int(round(angle / 5.0)) % 36  # 5-degree steps are indistinguishable at this size
        kern = self._motion_cache.get(key)
        if kern is None:
            k = max(3, int(round(min(self.h, self.w) / 10)) | 1)
            kern = np.zeros((k, k), np.float32)
            kern[k // 2, :] = 1.0 / k
            rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), key * 5.0, 1.0)
            kern = cv2.warpAffine(kern, rot, (k, k))
            kern /= max(float(kern.sum()), 1e-6)
            self._motion_cache[key] = kern
        return kern


class SynthSignsSource(Source):
    """The ``synth-signs`` source (see the module docstring).

    Parameters
    ----------
    image_size : (H, W)
        Default 32x32 (the paper's GTSRB CNN input).
    n_train : int, optional
        Training-pool images (train + clean), spread over classes like GTSRB; default 39,209.
    n_test : int, optional
        Test images, default 12,630.
    track_length : int
        Frames per track (GTSRB: 30).
    clean_share : float
        Share of the training pool held out by whole tracks as the clean set.
    seed : int
        Seed of the images and of the clean hold-out.
    strict : bool
        Accepted for interface symmetry (rendering cannot fail).
    """

    name = "synth-signs"
    provenance_group_size = 30
    description = ("synth-signs: 43 procedurally rendered GTSRB-like traffic-sign classes (speed limits, stop, "
                   "yield, warning triangles with pictograms, blue mandatory signs, ...) with GTSRB's class "
                   "frequencies, in tracks of frames of one sign, on procedural backgrounds with perspective, "
                   "lighting, blur and noise. Generated by datasets_gen; no real photographs.")

    def __init__(self, *, image_size: tuple[int, int] = (32, 32), n_train: int | None = None,
                 n_test: int | None = None, track_length: int = 30, clean_share: float = 0.1, seed: int = 0,
                 strict: bool = False):
        if isinstance(track_length, bool) or not isinstance(track_length, (int, np.integer)) or not 1 <= track_length <= 200:
            raise ValueError(f"track_length must be an integer in [1, 200], got {track_length!r}")
        if not 0 <= clean_share < 1:
            raise ValueError(f"clean_share must be in [0, 1), got {clean_share}")
        self.seed = int(seed)
        self.track_length = int(track_length)
        self.renderer = SignRenderer(image_size)
        train_counts = class_counts(n_train, GTSRB_TRAIN_COUNTS)
        test_counts = class_counts(n_test, GTSRB_TEST_COUNTS)
        labels, track, frame = [], [], []
        next_track = 0
        for c, n in enumerate(train_counts):
            for start in range(0, int(n), self.track_length):
                length = min(self.track_length, int(n) - start)
                labels.extend([c] * length)
                track.extend([next_track] * length)
                frame.extend(range(length))
                next_track += 1
        labels_a = np.array(labels, np.int64)
        track_a = np.array(track, np.int64)
        prov = (labels_a * 100000 + track_a).astype(np.int32)
        pool = SplitTable(list(range(labels_a.size)), labels_a, prov, np.arange(labels_a.size),
                          {"unit": track_a, "frame": np.array(frame, np.int64)})
        held = clean_tracks(prov, labels_a, clean_share, seed) if clean_share > 0 else np.zeros(labels_a.size, bool)
        test_labels = np.repeat(np.arange(N_SIGN_CLASSES), test_counts)
        test_rows = np.arange(test_labels.size)
        test = SplitTable(list(range(test_labels.size)), test_labels, np.full(test_labels.size, -1, np.int32), test_rows,
                          {"unit": test_rows // TEST_UNIT, "frame": test_rows % TEST_UNIT})
        # classes of every frame of every unit, kept whole so a row subset (limit_per_class)
        # renders exactly the same pixels as the full set
        self._unit_classes = {
            "pool": [labels_a[track_a == u] for u in range(next_track)],
            "test": [test_labels[u * TEST_UNIT:(u + 1) * TEST_UNIT] for u in range(-(-test_labels.size // TEST_UNIT))],
        }
        tables = {"train": pool.take(np.flatnonzero(~held)), "clean": pool.take(np.flatnonzero(held)), "test": test}
        config = {"n_train_pool": int(labels_a.size), "n_test": int(test_labels.size), "track_length": self.track_length,
                  "clean_share": clean_share, "seed": self.seed, "renderer": "datasets_gen.synthetic.signs"}
        super().__init__(GTSRB_CLASS_NAMES, (self.renderer.h, self.renderer.w), tables, strict, config)

    def render_unit(self, split: str, unit: int) -> np.ndarray:
        """All frames of one track (train pool) or one unit of TEST_UNIT test images, (n, H, W, 3) uint8."""
        is_pool = split in ("train", "clean")
        classes = self._unit_classes["pool" if is_pool else "test"][int(unit)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1 if is_pool else 2, int(unit)]))
        p = self.renderer.draw_params(rng, classes.size, track=is_pool)
        return self.renderer.render(classes, p, self.renderer.noise(rng, classes.size))

    def load(self, split: str, rows: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        t = self.tables[split]
        h, w = self.image_size
        out = np.empty((rows.size, h, w, 3), np.uint8)
        units = t.extra["unit"][rows]
        frames = t.extra["frame"][rows]
        for u in np.unique(units):
            sel = np.flatnonzero(units == u)
            out[sel] = self.render_unit(split, int(u))[frames[sel]]
        return out, np.ones(rows.size, bool)

    def _load_one(self, split: str, row: int) -> np.ndarray | None:  # pragma: no cover - load is overridden
        return self.load(split, [row])[0][0]


def render_examples(class_ids: Sequence[int], image_size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    """Independent random renders of the given classes, (n, H, W, 3) uint8 (previews, tests)."""
    r = SignRenderer(image_size)
    rng = np.random.default_rng(seed)
    ids = np.asarray(class_ids, np.int64)
    bad = ids[(ids < 0) | (ids >= N_SIGN_CLASSES)]
    if bad.size:
        raise ValueError(f"unknown sign class(es) {bad.tolist()}: synth-signs has 0..{N_SIGN_CLASSES - 1}")
    p = r.draw_params(rng, ids.size, track=False)
    return r.render(ids, p, r.noise(rng, ids.size))
