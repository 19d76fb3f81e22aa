"""synth-faces renders every pixel as the one-frame-at-a-time renderer did (issue #14, faster faces).

The batched renderer (:func:`datasets_gen.synthetic.faces.render_frames`) hoists the per-session
work and batches the light, noise and clipping; it must not change a single pixel. The reference
below is the per-image renderer the source used before, kept here verbatim as the oracle.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets_gen.synthetic.faces import EYE_Y, EYE_DX, SynthFacesSource, _pose_matrix, frame_noise, render_frames


def _reference_render_face(size_hw, ident, sess, f, noise):
    """The per-image renderer before the batched one (the oracle)."""
    h, w = size_hw
    ss = 4 if max(h, w) < 80 else (2 if max(h, w) < 160 else 1)  # supersample small outputs
    H, W = h * ss, w * ss
    yy = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    canvas = (sess["bg0"] * (1 - yy) + sess["bg1"] * yy).astype(np.float32) * np.ones((1, W, 1), np.float32)
    img = np.ascontiguousarray(canvas.astype(np.uint8))

    def P(x, y):
        return int(round(x * W)), int(round(y * H))

    def A(ax, ay):
        return max(1, int(round(ax * W))), max(1, int(round(ay * H)))

    skin = tuple(float(v) for v in ident["skin"])
    hair = tuple(float(v) for v in ident["hair"])
    dark_hair = tuple(float(v) * 0.7 for v in ident["hair"])
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
        cv2.circle(img, P(x + yaw * 0.3, EYE_Y), max(1, int(0.02 * es * H)), tuple(float(v) for v in ident["iris"]), -1, cv2.LINE_AA)
        cv2.circle(img, P(x + yaw * 0.3, EYE_Y), max(1, int(0.009 * es * H)), (15, 15, 15), -1, cv2.LINE_AA)
    # nose
    nx = cx + yaw * 1.2
    nt = max(1, int(0.008 * H))
    shade = tuple(float(v) * 0.75 for v in ident["skin"])
    cv2.line(img, P(nx, EYE_Y + 0.03), P(nx + 0.01, EYE_Y + 0.03 + ident["nose_len"]), shade, nt, cv2.LINE_AA)
    for sgn in (-1, 1):
        cv2.circle(img, P(nx + sgn * ident["nose_w"] * 0.6, EYE_Y + 0.04 + ident["nose_len"]), max(1, int(0.01 * H)), shade, -1, cv2.LINE_AA)
    # mouth: lips as an ellipse whose lower half grows with the smile
    my = ident["mouth_y"]
    smile = sess["smile"][f]
    lip = tuple(float(v) for v in ident["lip"])
    cv2.ellipse(img, P(cx + yaw, my), A(ident["mouth_w"] / 2, 0.012 + 0.02 * max(smile, 0)), 0, 0, 180, lip, -1, cv2.LINE_AA)
    cv2.ellipse(img, P(cx + yaw, my), A(ident["mouth_w"] / 2, 0.01), 0, 180, 360, lip, -1, cv2.LINE_AA)

    m = _pose_matrix(W, H, sess["rot"][f], sess["scale"][f], sess["dx"][f], sess["dy"][f])
    img = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if ss > 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    out = img.astype(np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(sess["light_dir"]) * (gx / w - 0.5) + np.sin(sess["light_dir"]) * (gy / h - 0.5)
    out *= (sess["bright"] * (1 + sess["light_amp"] * ramp))[..., None]
    if sess["blur"] > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), float(sess["blur"]) * max(h, w) / 64)
    out += noise * sess["noise"]
    return np.clip(out, 0, 255).astype(np.uint8)


def _reference_load(src: SynthFacesSource, split: str, rows: np.ndarray) -> np.ndarray:
    h, w = src.image_size
    t = src.tables[split]
    out = np.empty((rows.size, h, w, 3), np.uint8)
    for i, r in enumerate(rows):
        s, f, c = int(t.extra["session"][r]), int(t.extra["frame"][r]), int(t.labels[r])
        sess, _ = src._session(s)
        noise = np.random.default_rng(np.random.SeedSequence([src.seed, 9, s, f])).standard_normal(
            (h, w, 3), dtype=np.float32)
        out[i] = _reference_render_face((h, w), src._identity(c), sess, f, noise)
    return out


@pytest.mark.parametrize("size", [(55, 47), (120, 100), (224, 224)])  # supersampling 4, 2 and 1
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_render_equals_per_image_reference(size, threads):
    src = SynthFacesSource(image_size=size, n_identities=3, images_per_identity=30, session_length=7, seed=5)
    src.n_threads = threads
    for split in ("train", "test", "clean"):
        # rows out of order and from several sessions: each lands in its own output slot
        rows = np.random.default_rng(1).permutation(len(src.tables[split]))[:40]
        got, ok = src.load(split, rows)
        assert ok.all()
        want = _reference_load(src, split, rows)
        np.testing.assert_array_equal(got, want, err_msg=f"{size} {split} threads={threads}")


def test_a_frame_renders_the_same_whichever_rows_are_asked_for():
    src = SynthFacesSource(n_identities=2, images_per_identity=20, session_length=5, seed=2)
    rows = np.arange(len(src.tables["train"]))
    whole, _ = src.load("train", rows)
    one, _ = src.load("train", rows[7:8])
    np.testing.assert_array_equal(one[0], whole[7])


def test_rows_outside_the_split_are_refused_by_name():
    src = SynthFacesSource(n_identities=2, images_per_identity=20, session_length=5, seed=2)
    n = len(src.tables["test"])
    with pytest.raises(IndexError, match=rf"split 'test' must be in \[0, {n}\)"):
        src.load("test", [0, n])
    with pytest.raises(IndexError, match="split 'test'"):
        src.load("test", [-1])
    images, ok = src.load("test", [])
    assert images.shape == (0, 55, 47, 3) and ok.shape == (0,)


def test_v2_renderer_draws_the_same_faces_reproducibly():
    """renderer="v2" (2x canvas, table noise): other pixels than v1, but the same faces, poses and
    light (blurred images agree), the same eyes, and equally a pure function of (seed, row)."""
    kw = dict(n_identities=4, images_per_identity=20, session_length=5, seed=2)
    v1, v2 = SynthFacesSource(**kw), SynthFacesSource(**kw, renderer="v2")
    rows = np.arange(len(v1.tables["train"]))
    a, _ = v1.load("train", rows)
    b, _ = v2.load("train", rows)
    assert a.shape == b.shape and not np.array_equal(a, b)
    again, _ = SynthFacesSource(**kw, renderer="v2").load("train", rows[::-1])
    np.testing.assert_array_equal(again[::-1], b)
    one, _ = v2.load("train", rows[7:8])
    np.testing.assert_array_equal(one[0], b[7])
    np.testing.assert_array_equal(v1.eye_landmarks("train", rows), v2.eye_landmarks("train", rows))
    blur = lambda x: np.stack([cv2.GaussianBlur(im.astype(np.float32), (0, 0), 1.5) for im in x])  # noqa: E731
    ba, bb = blur(a), blur(b)
    assert np.abs(ba.mean(axis=(1, 2, 3)) - bb.mean(axis=(1, 2, 3))).max() < 2.0
    for x, y in zip(ba, bb):
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.99
    # the noise is unit-variance noise of the session's strength in both
    assert abs(float((a.astype(float) - ba).std()) - float((b.astype(float) - bb).std())) < 1.0
    assert "renderer" not in v1.config and v2.config["renderer"] == "v2"


def test_unknown_renderer_is_refused_by_name():
    with pytest.raises(ValueError, match="renderer must be one of .*'v3'"):
        SynthFacesSource(n_identities=2, images_per_identity=8, renderer="v3")
    with pytest.raises(ValueError, match="renderer must be one of .*'V2'"):
        frame_noise(0, 1, 2, (4, 4, 3), renderer="V2")
    src = SynthFacesSource(n_identities=2, images_per_identity=8, session_length=4)
    sess, _ = src._session(0)
    with pytest.raises(ValueError, match="renderer must be one of .*None"):
        render_frames((55, 47), src._identity(0), sess, [0], np.zeros((1, 55, 47, 3), np.float32), renderer=None)
