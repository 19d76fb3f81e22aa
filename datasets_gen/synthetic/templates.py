"""Procedural drawings of the 43 GTSRB sign classes, as RGBA templates.

Each class is drawn once with OpenCV primitives on a 4x supersampled canvas and reduced with area
averaging (anti-aliased edges), giving a premultiplied-alpha float32 template that
:mod:`datasets_gen.synthetic.signs` warps onto backgrounds. The designs follow the German signs
that GTSRB photographs: red-ringed white discs with the speed limits written with ``cv2.putText``,
the "end of" signs with their grey diagonal bars, the stop octagon, the yield and warning
triangles with a pictogram each (exclamation mark, curves, bumps, skid marks, road works, traffic
light, pedestrian, children, bicycle, snowflake, deer, ...), the yellow priority diamond and the
blue mandatory discs with white arrows. Look-alike groups (the nine speed limits, the fifteen
warning triangles, the eight blue discs) are what makes the task non-trivial, as in GTSRB.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

RED = (200, 25, 35)
WHITE = (245, 245, 240)
BLACK = (25, 25, 25)
GREY = (120, 120, 120)
BLUE = (25, 80, 185)
YELLOW = (250, 195, 10)
ORANGE = (240, 150, 20)
GREEN = (30, 170, 60)

S = 256  # supersampled canvas size (templates are area-reduced from it)
SUPERSAMPLE = 4
C = S // 2
R = int(S * 0.47)  # outer radius of the round signs


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _poly(img: np.ndarray, pts, colour, closed: bool = True, thick: int = -1) -> None:
    arr = np.array([_pt(x, y) for x, y in pts], np.int32)
    if thick < 0:
        cv2.fillPoly(img, [arr], colour, cv2.LINE_AA)
    else:
        cv2.polylines(img, [arr], closed, colour, thick, cv2.LINE_AA)


def _line(img, p, q, colour, thick):
    cv2.line(img, _pt(*p), _pt(*q), colour, int(thick), cv2.LINE_AA)


def _arrow(img, pts, colour, thick, head):
    """Thick polyline ending in a filled arrowhead at pts[-1]."""
    for a, b in zip(pts[:-1], pts[1:]):
        _line(img, a, b, colour, thick)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    d = np.array([x1 - x0, y1 - y0], float)
    d /= np.linalg.norm(d) + 1e-9
    n = np.array([-d[1], d[0]])
    tip = np.array([x1, y1]) + d * head * 0.9
    base = np.array([x1, y1]) - d * head * 0.2
    _poly(img, [tip, base + n * head * 0.75, base - n * head * 0.75], colour)


# ---- sign bodies ----------------------------------------------------------------------------------

def _ring(img, ring=RED, fill=WHITE, width=0.16):
    cv2.circle(img, (C, C), R, ring, -1, cv2.LINE_AA)
    cv2.circle(img, (C, C), int(R * (1 - width)), fill, -1, cv2.LINE_AA)


def _blue_disc(img):
    cv2.circle(img, (C, C), R, WHITE, -1, cv2.LINE_AA)
    cv2.circle(img, (C, C), int(R * 0.94), BLUE, -1, cv2.LINE_AA)


def _end_disc(img):
    cv2.circle(img, (C, C), R, GREY, -1, cv2.LINE_AA)
    cv2.circle(img, (C, C), int(R * 0.96), WHITE, -1, cv2.LINE_AA)


def _end_stripes(img, n=5, colour=BLACK):
    """Diagonal bars from bottom-left to top-right, clipped to the disc (anti-aliased)."""
    bars = np.zeros(img.shape[:2], np.uint8)
    for k in range(n):
        o = (k - (n - 1) / 2) * R * 0.11
        _line(bars, (C - R + o, C + R + o), (C + R + o, C - R + o), 255, R * 0.045)
    disc = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(disc, (C, C), int(R * 0.95), 255, -1, cv2.LINE_AA)
    a = (bars.astype(np.float32) / 255) * (disc.astype(np.float32) / 255)
    a = a[..., None]
    img[...] = (img * (1 - a) + np.array(colour, np.float32) * a).astype(np.uint8)


def _triangle(img, up=True, ring=RED, fill=WHITE):
    h = R * 1.9
    if up:
        outer = [(C, C - h * 0.55), (C - R, C + h * 0.45), (C + R, C + h * 0.45)]
    else:
        outer = [(C, C + h * 0.55), (C - R, C - h * 0.45), (C + R, C - h * 0.45)]
    _poly(img, outer, ring)
    cx, cy = np.mean(outer, axis=0)
    inner = [(cx + (x - cx) * 0.68, cy + (y - cy) * 0.68) for x, y in outer]
    _poly(img, inner, fill)
    return cx, cy + (R * 0.08 if up else -R * 0.08)


def _octagon(img):
    ang = np.deg2rad(22.5 + 45 * np.arange(8))
    outer = [(C + R * np.cos(a), C + R * np.sin(a)) for a in ang]
    _poly(img, outer, WHITE)
    _poly(img, [(C + R * 0.93 * np.cos(a), C + R * 0.93 * np.sin(a)) for a in ang], RED)


def _diamond(img):
    _poly(img, [(C, C - R), (C + R, C), (C, C + R), (C - R, C)], WHITE)
    _poly(img, [(C, C - R), (C + R, C), (C, C + R), (C - R, C)], GREY, thick=6)
    r = R * 0.62
    _poly(img, [(C, C - r), (C + r, C), (C, C + r), (C - r, C)], YELLOW)


# ---- pictograms ---------------------------------------------------------------------------------

def _text(img, text, colour=BLACK, width=0.95, height=0.8, cy=C, font=cv2.FONT_HERSHEY_DUPLEX, thick_share=0.075):
    """Text fitted into a box of (width, height) * 1.25 R centred at (C, cy)."""
    box_w, box_h = R * width * 1.25, R * height * 1.25
    thick = max(1, int(R * thick_share))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
    scale = min(box_w / tw, box_h / th)
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (int(C - tw / 2), int(cy + th / 2))
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)


def _car(img, cx, cy, w, colour):
    h = w * 0.5
    _poly(img, [(cx - w / 2, cy), (cx + w / 2, cy), (cx + w / 2, cy - h * 0.45), (cx + w * 0.25, cy - h * 0.5),
                (cx + w * 0.15, cy - h), (cx - w * 0.3, cy - h), (cx - w * 0.4, cy - h * 0.5), (cx - w / 2, cy - h * 0.45)],
          colour)
    for dx in (-0.28, 0.28):
        cv2.circle(img, _pt(cx + dx * w, cy), int(w * 0.12), colour, -1, cv2.LINE_AA)


def _truck(img, cx, cy, w, colour):
    h = w * 0.55
    cv2.rectangle(img, _pt(cx - w / 2, cy - h), _pt(cx + w * 0.2, cy), colour, -1, cv2.LINE_AA)
    _poly(img, [(cx + w * 0.24, cy), (cx + w / 2, cy), (cx + w / 2, cy - h * 0.45), (cx + w * 0.38, cy - h * 0.75),
                (cx + w * 0.24, cy - h * 0.75)], colour)
    for dx in (-0.33, 0.05, 0.36):
        cv2.circle(img, _pt(cx + dx * w, cy + w * 0.04), int(w * 0.09), colour, -1, cv2.LINE_AA)


def _person(img, cx, cy, h, colour=BLACK, stride=0.25):
    t = max(2, int(h * 0.11))
    cv2.circle(img, _pt(cx + h * 0.03, cy - h * 0.42), int(h * 0.09), colour, -1, cv2.LINE_AA)
    hip = (cx, cy + h * 0.05)
    _line(img, (cx + h * 0.03, cy - h * 0.3), hip, colour, t)
    _line(img, hip, (cx - h * stride, cy + h * 0.48), colour, t)
    _line(img, hip, (cx + h * stride, cy + h * 0.48), colour, t)
    _line(img, (cx + h * 0.02, cy - h * 0.22), (cx - h * 0.2, cy + h * 0.02), colour, int(t * 0.8))
    _line(img, (cx + h * 0.02, cy - h * 0.22), (cx + h * 0.22, cy), colour, int(t * 0.8))


def _tri_picto(kind: str) -> Callable[[np.ndarray], None]:
    def draw(img):
        cx, cy = _triangle(img, up=True)
        s = R * 0.5  # pictogram half-size
        t = int(R * 0.09)
        if kind == "cross":  # right of way at next intersection
            _line(img, (cx, cy - s * 0.95), (cx, cy + s * 0.7), BLACK, t * 1.5)
            _line(img, (cx - s * 0.55, cy - s * 0.25), (cx + s * 0.55, cy - s * 0.25), BLACK, t)
        elif kind == "exclamation":
            _line(img, (cx, cy - s * 0.85), (cx, cy + s * 0.25), BLACK, t * 1.3)
            cv2.circle(img, _pt(cx, cy + s * 0.6), int(t * 0.8), BLACK, -1, cv2.LINE_AA)
        elif kind in ("curve_left", "curve_right"):
            sign = -1 if kind == "curve_left" else 1
            pts = [(cx - sign * s * 0.2, cy + s * 0.75), (cx - sign * s * 0.2, cy + s * 0.1),
                   (cx, cy - s * 0.25), (cx + sign * s * 0.45, cy - s * 0.5)]
            _arrow(img, pts, BLACK, t, t * 1.8)
        elif kind == "double_curve":
            pts = [(cx + s * 0.25, cy + s * 0.8), (cx + s * 0.25, cy + s * 0.45), (cx - s * 0.3, cy + s * 0.05),
                   (cx - s * 0.3, cy - s * 0.15), (cx + s * 0.2, cy - s * 0.5), (cx + s * 0.2, cy - s * 0.7)]
            _arrow(img, pts, BLACK, t, t * 1.7)
        elif kind == "bumpy":
            base = cy + s * 0.45
            for dx in (-0.38, 0.38):
                cv2.ellipse(img, _pt(cx + dx * s, base), (int(s * 0.36), int(s * 0.5)), 0, 180, 360, BLACK, -1, cv2.LINE_AA)
            _line(img, (cx - s * 0.85, base), (cx + s * 0.85, base), BLACK, t * 0.8)
        elif kind == "slippery":
            _car(img, cx, cy - s * 0.1, s * 1.1, BLACK)
            for dx in (-0.3, 0.3):
                xs = np.linspace(-0.3, 0.3, 8)
                pts = [(cx + (dx + x) * s, cy + s * (0.35 + 0.35 * (x + 0.3)) + np.sin(x * 18) * s * 0.08) for x in xs]
                _poly(img, pts, BLACK, closed=False, thick=int(t * 0.7))
        elif kind == "narrows":
            _line(img, (cx - s * 0.35, cy + s * 0.75), (cx - s * 0.35, cy - s * 0.75), BLACK, t)
            _poly(img, [(cx + s * 0.4, cy + s * 0.75), (cx + s * 0.4, cy + s * 0.1), (cx + s * 0.1, cy - s * 0.25),
                        (cx + s * 0.1, cy - s * 0.75)], BLACK, closed=False, thick=t)
        elif kind == "roadwork":
            _person(img, cx - s * 0.15, cy - s * 0.05, s * 1.3, BLACK, stride=0.3)
            _line(img, (cx + s * 0.05, cy - s * 0.1), (cx + s * 0.55, cy + s * 0.45), BLACK, t * 0.7)
            cv2.ellipse(img, _pt(cx + s * 0.55, cy + s * 0.75), (int(s * 0.35), int(s * 0.25)), 0, 180, 360, BLACK, -1, cv2.LINE_AA)
        elif kind == "signals":
            cv2.rectangle(img, _pt(cx - s * 0.3, cy - s * 0.95), _pt(cx + s * 0.3, cy + s * 0.8), BLACK, -1, cv2.LINE_AA)
            for k, col in enumerate((RED, YELLOW, GREEN)):
                cv2.circle(img, _pt(cx, cy - s * 0.6 + k * s * 0.58), int(s * 0.21), col, -1, cv2.LINE_AA)
        elif kind == "pedestrian":
            _person(img, cx, cy, s * 1.7, BLACK)
        elif kind == "children":
            _person(img, cx - s * 0.32, cy - s * 0.05, s * 1.45, BLACK)
            _person(img, cx + s * 0.38, cy + s * 0.2, s * 1.0, BLACK)
        elif kind == "bicycle":
            for dx in (-0.5, 0.5):
                cv2.circle(img, _pt(cx + dx * s, cy + s * 0.4), int(s * 0.38), BLACK, int(t * 0.7), cv2.LINE_AA)
            _poly(img, [(cx - s * 0.5, cy + s * 0.4), (cx - s * 0.1, cy - s * 0.2), (cx + s * 0.35, cy - s * 0.2),
                        (cx + s * 0.5, cy + s * 0.4), (cx, cy + s * 0.4)], BLACK, closed=True, thick=int(t * 0.6))
            _line(img, (cx + s * 0.35, cy - s * 0.2), (cx + s * 0.3, cy - s * 0.45), BLACK, t * 0.6)
        elif kind == "snow":
            for a in (0, 60, 120):
                d = np.array([np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))]) * s * 0.8
                _line(img, (cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), BLACK, t * 0.7)
                for sgn in (-1, 1):
                    tip = np.array([cx, cy]) + sgn * d * 0.7
                    for b in (-40, 40):
                        rot = np.deg2rad(a + (0 if sgn > 0 else 180) + 180 + b)
                        _line(img, tip, tip + np.array([np.cos(rot), np.sin(rot)]) * s * 0.25, BLACK, t * 0.5)
        elif kind == "deer":
            body = [(cx - s * 0.7, cy + s * 0.1), (cx - s * 0.3, cy - s * 0.15), (cx + s * 0.35, cy - s * 0.2),
                    (cx + s * 0.55, cy - s * 0.6), (cx + s * 0.75, cy - s * 0.55), (cx + s * 0.55, cy),
                    (cx + s * 0.2, cy + s * 0.15), (cx - s * 0.5, cy + s * 0.25)]
            _poly(img, body, BLACK)
            for p, q in (((cx - s * 0.55, cy + s * 0.2), (cx - s * 0.85, cy + s * 0.75)),
                         ((cx - s * 0.3, cy + s * 0.15), (cx - s * 0.2, cy + s * 0.75)),
                         ((cx + s * 0.2, cy + s * 0.1), (cx + s * 0.55, cy + s * 0.6)),
                         ((cx + s * 0.35, cy + s * 0.05), (cx + s * 0.75, cy + s * 0.35)),
                         ((cx + s * 0.6, cy - s * 0.55), (cx + s * 0.5, cy - s * 0.95)),
                         ((cx + s * 0.65, cy - s * 0.55), (cx + s * 0.85, cy - s * 0.9))):
                _line(img, p, q, BLACK, t * 0.55)
        else:  # pragma: no cover
            raise ValueError(kind)
    return draw


def _speed(text: str, end: bool = False) -> Callable[[np.ndarray], None]:
    def draw(img):
        if end:
            _end_disc(img)
            _text(img, text, GREY, width=1.0 if len(text) < 3 else 1.15)
            _end_stripes(img)
        else:
            _ring(img)
            _text(img, text, BLACK, width=1.0 if len(text) < 3 else 1.2)
    return draw


def _ring_picto(kind: str, end: bool = False) -> Callable[[np.ndarray], None]:
    def draw(img):
        if end:
            _end_disc(img)
        else:
            _ring(img)
        col_left = GREY if end else RED
        col_right = GREY if end else BLACK
        if kind == "no_passing":
            _car(img, C - R * 0.3, C + R * 0.2, R * 0.55, col_left)
            _car(img, C + R * 0.3, C + R * 0.2, R * 0.55, col_right)
        elif kind == "no_passing_trucks":
            _truck(img, C - R * 0.3, C + R * 0.2, R * 0.55, col_left)
            _car(img, C + R * 0.32, C + R * 0.2, R * 0.5, col_right)
        elif kind == "no_trucks":
            _truck(img, C, C + R * 0.25, R * 1.0, BLACK)
        elif kind == "empty":
            pass
        if end:
            _end_stripes(img)
    return draw


def _no_entry(img):
    cv2.circle(img, (C, C), R, RED, -1, cv2.LINE_AA)
    cv2.rectangle(img, _pt(C - R * 0.7, C - R * 0.17), _pt(C + R * 0.7, C + R * 0.17), WHITE, -1, cv2.LINE_AA)


def _end_all(img):
    _end_disc(img)
    _end_stripes(img, n=7)


def _yield(img):
    _triangle(img, up=False)


def _stop(img):
    _octagon(img)
    _text(img, "STOP", WHITE, width=1.3, height=0.5, font=cv2.FONT_HERSHEY_SIMPLEX, thick_share=0.09)


def _blue(kind: str) -> Callable[[np.ndarray], None]:
    def draw(img):
        _blue_disc(img)
        t = R * 0.17
        h = R * 0.33
        if kind == "ahead":
            _arrow(img, [(C, C + R * 0.65), (C, C - R * 0.3)], WHITE, t, h)
        elif kind in ("turn_right", "turn_left"):
            sg = 1 if kind == "turn_right" else -1
            _arrow(img, [(C - sg * R * 0.3, C + R * 0.65), (C - sg * R * 0.3, C - R * 0.05), (C - sg * R * 0.15, C - R * 0.25),
                         (C + sg * R * 0.25, C - R * 0.25)], WHITE, t, h)
        elif kind in ("straight_right", "straight_left"):
            sg = 1 if kind == "straight_right" else -1
            _arrow(img, [(C - sg * R * 0.15, C + R * 0.7), (C - sg * R * 0.15, C - R * 0.35)], WHITE, t * 0.85, h * 0.85)
            _arrow(img, [(C - sg * R * 0.15, C + R * 0.2), (C + sg * R * 0.1, C - R * 0.0), (C + sg * R * 0.35, C - R * 0.0)],
                   WHITE, t * 0.85, h * 0.85)
        elif kind in ("keep_right", "keep_left"):
            sg = 1 if kind == "keep_right" else -1
            _arrow(img, [(C - sg * R * 0.35, C - R * 0.45), (C + sg * R * 0.2, C + R * 0.2)], WHITE, t, h)
        elif kind == "roundabout":
            for k in range(3):
                a0 = 90 + k * 120
                pts = [(C + R * 0.45 * np.cos(np.deg2rad(a)), C + R * 0.45 * np.sin(np.deg2rad(a)))
                       for a in np.linspace(a0, a0 - 75, 6)]
                _arrow(img, pts, WHITE, t * 0.7, h * 0.7)
        else:  # pragma: no cover
            raise ValueError(kind)
    return draw


#: One drawing function per GTSRB class id (0..42), in GTSRB order.
DRAWERS: list[Callable[[np.ndarray], None]] = [
    _speed("20"), _speed("30"), _speed("50"), _speed("60"), _speed("70"), _speed("80"), _speed("80", end=True),
    _speed("100"), _speed("120"), _ring_picto("no_passing"), _ring_picto("no_passing_trucks"), _tri_picto("cross"),
    _diamond, _yield, _stop, _ring_picto("empty"), _ring_picto("no_trucks"), _no_entry, _tri_picto("exclamation"),
    _tri_picto("curve_left"), _tri_picto("curve_right"), _tri_picto("double_curve"), _tri_picto("bumpy"),
    _tri_picto("slippery"), _tri_picto("narrows"), _tri_picto("roadwork"), _tri_picto("signals"),
    _tri_picto("pedestrian"), _tri_picto("children"), _tri_picto("bicycle"), _tri_picto("snow"), _tri_picto("deer"),
    _end_all, _blue("turn_right"), _blue("turn_left"), _blue("ahead"), _blue("straight_right"), _blue("straight_left"),
    _blue("keep_right"), _blue("keep_left"), _blue("roundabout"), _ring_picto("no_passing", end=True),
    _ring_picto("no_passing_trucks", end=True),
]
N_SIGN_CLASSES = len(DRAWERS)


def draw_class(class_id: int) -> np.ndarray:
    """Draw class ``class_id`` on the supersampled RGBA canvas (uint8, (S, S, 4))."""
    if not 0 <= class_id < N_SIGN_CLASSES:
        raise ValueError(f"unknown sign class {class_id}: synth-signs has 0..{N_SIGN_CLASSES - 1}")
    rgb = np.zeros((S, S, 3), np.uint8)
    DRAWERS[class_id](rgb)
    return np.dstack([rgb, _body_mask_cached(class_id)])


@lru_cache(maxsize=None)
def _body_mask_cached(class_id: int) -> np.ndarray:
    # Coverage: draw on a canvas of an unused value; every touched pixel belongs to the sign.
    probe = np.ones((S, S, 3), np.uint8)
    DRAWERS[class_id](probe)
    return (probe != 1).any(-1).astype(np.uint8) * 255


@lru_cache(maxsize=None)
def template(class_id: int, size: int = 64) -> np.ndarray:
    """Premultiplied-alpha RGBA template of a class, float32 (size, size, 4), values in [0, 1].

    Cached: each class is drawn once per size.
    """
    big = draw_class(class_id).astype(np.float32) / 255.0
    big[..., :3] *= big[..., 3:4]  # premultiply before resampling so edges do not darken
    out = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out
