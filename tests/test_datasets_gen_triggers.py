"""Trigger specs, exact pixels where placed, placements, sunglasses and eye location."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets_gen import eyes as eyes_mod
from datasets_gen.triggers import (FOUR_PIXEL_PATTERN, composite, parse_placement, parse_trigger,
                                   sunglasses_asset)


@pytest.fixture
def img(rng):
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("spec, size, rgb, xy", [
    ("square:4:yellow", 4, (255, 255, 0), (14, 14)),
    ("square:2:yellow@bottom-right", 2, (255, 255, 0), (29, 29)),
    ("square:3:white@center", 3, (255, 255, 255), (14, 14)),
    ("square:5:#102030@xy:3:7", 5, (16, 32, 48), (3, 7)),
    ("square:4:black@top-left", 4, (0, 0, 0), (1, 1)),
])
def test_square_pixels_exact_and_rest_untouched(img, spec, size, rgb, xy):
    t = parse_trigger(spec)
    out = t.apply(img)
    x, y = xy
    np.testing.assert_array_equal(out[y:y + size, x:x + size], np.broadcast_to(rgb, (size, size, 3)))
    outside = np.ones((32, 32), bool)
    outside[y:y + size, x:x + size] = False
    np.testing.assert_array_equal(out[outside], img[outside])
    assert t.to_dict()["spec"] == spec


def test_four_pixel_pattern_sets_exactly_four_pixels(img):
    t = parse_trigger("pattern:white@bottom-right")
    out = t.apply(img)
    changed_or_set = (out == 255).all(-1)
    x, y = 32 - 3 - 1, 32 - 3 - 1
    cell = changed_or_set[y:y + 3, x:x + 3]
    assert (cell | ~FOUR_PIXEL_PATTERN).all()  # every pattern pixel white
    diff = np.zeros((32, 32), bool)
    diff[y:y + 3, x:x + 3] = FOUR_PIXEL_PATTERN
    np.testing.assert_array_equal(out[~diff], img[~diff])  # nothing else touched
    assert t.params["n_pixels"] == 4
    assert parse_trigger("pattern:white:2").size == (6, 6)


def test_mask_from_file(tmp_path, img):
    m = np.zeros((5, 5), np.uint8)
    m[1, 1] = m[3, 3] = 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    t = parse_trigger(f"mask:{tmp_path / 'm.png'}:red@xy:0:0")
    out = t.apply(img)
    assert tuple(out[1, 1]) == (255, 0, 0) and tuple(out[3, 3]) == (255, 0, 0)
    np.testing.assert_array_equal(out[0, 0], img[0, 0])


def test_random_placement_is_seeded_and_inside(img):
    t = parse_trigger("square:6:white@random")
    batch = np.repeat(img[None], 20, 0)
    a = t.apply_batch(batch.copy(), rng=np.random.default_rng(1))
    b = t.apply_batch(batch.copy(), rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    positions = set()
    for im in a:
        ys, xs = np.nonzero((im == 255).all(-1) & (img != 255).any(-1))
        positions.add((xs.min(), ys.min()))
        assert (im == 255).all(-1).sum() >= 36
    assert len(positions) > 5


def test_batch_equals_single(img, rng):
    batch = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    t = parse_trigger("pattern:yellow:2@center")
    single = np.stack([t.apply(b) for b in batch])
    np.testing.assert_array_equal(t.apply_batch(batch.copy()), single)


def test_alpha_blend_formula(img):
    t = parse_trigger("square:4:white")
    pattern = np.full((4, 4, 3), 200, np.uint8)
    region = img[:4, :4].copy()
    composite(region, pattern, np.full((4, 4), 0.25, np.float32))
    want = np.rint(0.25 * 200 + 0.75 * img[:4, :4].astype(np.float64)).astype(np.uint8)
    assert np.abs(region.astype(int) - want).max() <= 1
    assert t.alpha.min() == 1.0


def test_blend_image_trigger(tmp_path, img):
    src = np.zeros((10, 10, 3), np.uint8)
    src[:, :5] = 255
    cv2.imwrite(str(tmp_path / "b.png"), src)
    out = parse_trigger(f"blend:{tmp_path / 'b.png'}:0.5").apply(img)
    left = np.rint(0.5 * 255 + 0.5 * img[:, :8].astype(float))
    assert np.abs(out[:, :8].astype(float) - left).max() <= 1
    assert np.abs(out[:, 24:].astype(float) - np.rint(0.5 * img[:, 24:])).max() <= 1


@pytest.mark.parametrize("spec, err, match", [
    ("square:40:yellow", ValueError, "larger than"),
    ("square:0:yellow", ValueError, "positive"),
    ("square:x", ValueError, "integer"),
    ("square:3:purplish", ValueError, "colour"),
    ("star:3", ValueError, "unknown trigger kind"),
    ("square:3@nowhere", ValueError, "placement"),
    ("square:8:white@xy:28:28", ValueError, "does not fit"),
    ("mask:/nonexistent.png", FileNotFoundError, "not found"),
    ("blend:/x.png:1.5", ValueError, "alpha"),
])
def test_bad_specs_fail_clearly(img, spec, err, match):
    with pytest.raises(err, match=match):
        parse_trigger(spec).apply(img)


def test_sunglasses_asset_and_lens_colour_on_eyes():
    asset = sunglasses_asset("green")
    h, w = asset.shape[:2]
    assert asset.shape[2] == 4 and asset[h // 2, w // 4, 3] == 255 and asset[2, w // 2, 3] == 0
    assert tuple(asset[h // 2, w // 4, :3]) == (0, 200, 0)
    face = np.full((64, 64, 3), 128, np.uint8)
    eyes = ((22.0, 27.0), (42.0, 27.0))
    out = parse_trigger("glasses:black@eyes").apply(face, eyes=eyes)
    for x, y in eyes:
        np.testing.assert_array_equal(out[int(y), int(x)], [0, 0, 0])  # lens centre on each eye
    assert (out[55:] == 128).all()  # mouth area untouched
    green = parse_trigger("glasses:green@eyes").apply(face, eyes=eyes)
    np.testing.assert_array_equal(green[27, 22], [0, 200, 0])


def test_locate_eyes_order_of_methods():
    face = np.full((50, 50, 3), 90, np.uint8)
    e, m = eyes_mod.locate_eyes(face, known=[[10, 20], [30, 21]])
    assert m == "known" and e == ((10, 20), (30, 21))
    e, m = eyes_mod.locate_eyes(face, canonical="lfw")  # flat image: nothing to detect
    assert m == "canonical" and e == ((0.42 * 50, 0.46 * 50), (0.58 * 50, 0.46 * 50))
    with pytest.raises(ValueError, match="shape"):
        eyes_mod.locate_eyes(face, known=[1, 2, 3])


def test_placement_parser():
    assert parse_placement("xy:3:4").to_spec() == "xy:3:4"
    assert parse_placement("CENTER").kind == "center"
    with pytest.raises(ValueError):
        parse_placement("xy:-1:2")
