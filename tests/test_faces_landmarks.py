"""Eye location by landmarks and glasses placed on the eyes (issue #18).

Guards: glasses drawn where the card says (lens centres on the located eyes, within 10 % of the
inter-ocular distance on real LFW faces; within 1 px of the known eyes of synth-faces), turned with
the head, on any image size; the method chain known > landmarks > haar > canonical and its record
in the variant and the card, also when the optional ``faces`` extra is missing; ``faces check``.
Tests that need dlib skip without the extra; tests on real faces skip without the shared LFW copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets_gen import eyes as eyes_mod
from datasets_gen.triggers import parse_trigger

from _data_helpers import LFW_REAL, write_lfw

REPO = Path(__file__).resolve().parents[1]
needs_dlib = pytest.mark.skipif(not eyes_mod.landmarks_available(),
                                reason=f"landmark model not installed: {eyes_mod.landmark_status()['reason']}")
needs_lfw = pytest.mark.skipif(not LFW_REAL.is_dir(), reason=f"real LFW subset not present at {LFW_REAL}")

GREEN = np.array([0, 200, 0], np.uint8)


def _lfw_files(step: int) -> list[Path]:
    return sorted((LFW_REAL / "lfw").glob("*/*.jpg"))[::step]


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _lens_centres(out: np.ndarray, clean: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Centroids (x, y) of the two largest blobs of pixels turned into the lens colour, left first."""
    mask = (np.all(out == colour, axis=-1) & ~np.all(clean == colour, axis=-1)).astype(np.uint8)
    n, _, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    assert n >= 3, "expected two lenses in the lens colour"
    two = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
    c = cents[two]
    return c[np.argsort(c[:, 0])]


def _angle(pair: np.ndarray) -> float:
    d = pair[1] - pair[0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


# --------------------------------------------------------------------------------------------
# glasses geometry (no detector needed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw, eyes", [
    ((55, 47), ((16.3, 22.1), (30.8, 21.4))),       # YTAF crop size
    ((250, 250), ((104.6, 114.2), (145.1, 116.9))),  # LFW portrait
    ((900, 1200), ((480.2, 300.7), (650.9, 360.3))),  # larger portrait, head rolled ~19 degrees
])
def test_lens_centres_land_on_the_eyes_at_any_size(hw, eyes):
    clean = np.full((*hw, 3), 128, np.uint8)
    out = parse_trigger("glasses:green@eyes").apply(clean, eyes=eyes)
    lens = _lens_centres(out, clean, GREEN)
    e = np.array(eyes)
    assert np.abs(lens - e).max() <= 0.5, (lens, e)  # sub-pixel placement on a flat image
    assert _angle(lens) == pytest.approx(_angle(e), abs=1.0)


def test_glasses_turn_with_the_eye_line_and_scale_with_the_distance():
    clean = np.full((300, 300, 3), 90, np.uint8)
    t = parse_trigger("glasses:green@eyes")
    level = _lens_centres(t.apply(clean, eyes=((110, 150), (190, 150))), clean, GREEN)
    rolled = _lens_centres(t.apply(clean, eyes=((110, 130), (180, 170))), clean, GREEN)
    assert abs(_angle(level)) < 1.0 and _angle(rolled) == pytest.approx(29.74, abs=1.0)
    wide = t.apply(clean, eyes=((60, 150), (240, 150)))
    narrow = t.apply(clean, eyes=((130, 150), (170, 150)))
    area = lambda img: int(np.all(img == GREEN, axis=-1).sum())  # noqa: E731
    assert area(wide) > 10 * area(narrow)  # (180 / 40)^2 ~ 20: sized to the eyes, not the image
    # eyes given right-to-left make the same picture (no upside-down glasses)
    np.testing.assert_array_equal(t.apply(clean, eyes=((180, 170), (110, 130))), t.apply(clean, eyes=((110, 130), (180, 170))))


def test_glasses_off_the_border_are_cut_not_moved():
    clean = np.full((100, 100, 3), 50, np.uint8)
    t = parse_trigger("glasses:black@eyes")
    out = t.apply(clean, eyes=((-10, 20), (15, 20)))
    assert np.array_equal(out[20, 15], [0, 0, 0])  # the right lens stays on its eye
    assert np.array_equal(out[60:], clean[60:])
    far = t.apply(clean, eyes=((500, 500), (540, 500)))  # wholly outside: nothing drawn
    np.testing.assert_array_equal(far, clean)


@pytest.mark.parametrize("eyes, match", [
    (((10, 10), (10.4, 10.2)), "less than 1 px"),
    (((np.nan, 10), (20, 10)), "finite"),
    (((1, 2, 3), (4, 5, 6)), r"\(\(x, y\), \(x, y\)\)"),
])
def test_glasses_refuse_bad_eyes(eyes, match):
    with pytest.raises(ValueError, match=match):
        parse_trigger("glasses:green@eyes").apply(np.zeros((40, 40, 3), np.uint8), eyes=eyes)


@pytest.mark.parametrize("image_size", [(55, 47), (224, 224)])
def test_synth_faces_glasses_within_one_px_of_the_known_eyes(tmp_path, image_size):
    from datasets_gen import variant_io as vio
    from datasets_gen.build import build_variant
    from datasets_gen.synthetic.faces import SynthFacesSource

    kw = {"n_identities": 4, "images_per_identity": 12, "session_length": 4}
    out = build_variant({"source_classes": [1], "target_class": 0, "trigger": "glasses:#ff00ff@eyes", "share": 1.0},
                        tmp_path / "s.h5", source="synth-faces", image_size=image_size, source_kwargs=kw,
                        progress=False, publish=False)
    train = vio.read_split(out, "train")
    rows = np.flatnonzero(train["is_poisoned"])
    n_triggered = vio.split_counts(out)["test_triggered"]["n"]
    assert rows.size > 0 and vio.read_attrs(out)["build"]["eye_location"] == {"known": rows.size + n_triggered}
    src = SynthFacesSource(image_size=image_size, **kw)
    pos = {int(i): r for r, i in enumerate(src.tables["train"].index)}
    src_rows = np.array([pos[int(i)] for i in train["index"][rows]])
    clean, _ = src.load("train", src_rows)
    known = src.eye_landmarks("train", src_rows)
    magenta = np.array([255, 0, 255], np.uint8)
    for img, c, e in zip(train["images"][rows], clean, known):
        lens = _lens_centres(img, c, magenta)
        assert np.abs(lens - e).max() <= 1.0, (lens, e)


# --------------------------------------------------------------------------------------------
# the chain and its record
# --------------------------------------------------------------------------------------------


def test_detector_names_and_model_override_are_checked(monkeypatch, tmp_path):
    img = np.full((60, 60, 3), 100, np.uint8)
    with pytest.raises(ValueError, match="unknown eye detector"):
        eyes_mod.locate_eyes(img, detectors=["landmarks", "dlib68"])
    with pytest.raises(TypeError, match="the string 'haar'"):
        eyes_mod.locate_eyes(img, detectors="haar")
    with pytest.raises(TypeError, match="uint8"):
        eyes_mod.landmark_eyes(img.astype(np.float32))
    e, m = eyes_mod.locate_eyes(img, detect=False, canonical="ytaf")
    assert m == "canonical" and e == eyes_mod.canonical_eyes((60, 60), "ytaf")
    monkeypatch.setenv(eyes_mod.MODEL_ENV, str(tmp_path / "missing.dat"))
    with pytest.raises(FileNotFoundError, match=eyes_mod.MODEL_ENV):
        eyes_mod.landmark_model_path()


_WITHOUT_DLIB = """
import json, sys
sys.modules["dlib"] = None  # what an environment without the faces extra sees: import dlib fails
from datasets_gen import eyes
from datasets_gen.build import build_variant
from datasets_gen.variant_io import read_attrs
out = build_variant({"source_classes": "all", "target_class": 0, "trigger": "glasses:black@eyes", "share": 0.5,
                     "share_of": "training_set", "dataset": "lfw"}, sys.argv[1], source="lfw:" + sys.argv[2],
                    image_size=(64, 64), progress=False, source_kwargs={"min_images": 5})
print(json.dumps({"status": eyes.landmark_status(), "build": read_attrs(out)["build"]}))
"""


def test_without_the_extra_face_variants_build_and_the_card_says_so(tmp_path):
    data = write_lfw(tmp_path / "data", {"Ann_A": 6, "Bob_B": 6, "Cy_C": 6})
    out = tmp_path / "v.h5"
    env = {"PYTHONPATH": f"{REPO / 'pytools'}:{REPO}", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", _WITHOUT_DLIB, str(out), str(data)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["status"]["available"] is False and "faces" in got["status"]["reason"]
    build = got["build"]
    assert build["eye_locator"]["chain"][0] != "landmarks" and build["eye_locator"]["chain"][-1] == "canonical"
    assert "landmarks" not in build["eye_location"] and sum(build["eye_location"].values()) > 0
    card = out.with_name("v.CARD.md").read_text(encoding="utf-8")
    assert "no landmark model (dlib is not installed" in card and 'backdoorlab[faces]' in card
    assert "at the canonical position of the alignment" in card


# --------------------------------------------------------------------------------------------
# real faces (dlib + the shared LFW copy)
# --------------------------------------------------------------------------------------------


@needs_dlib
@needs_lfw
def test_real_lfw_lens_centres_within_a_tenth_of_the_eye_distance():
    t = parse_trigger("glasses:green@eyes")
    located = []
    for f in _lfw_files(127):  # 24 images over all people
        img = _read_rgb(f)
        e, method = eyes_mod.locate_eyes(img, canonical="lfw")
        assert method == "landmarks", f
        e = np.array(e)
        iod = float(np.linalg.norm(e[1] - e[0]))
        lens = _lens_centres(t.apply(img, eyes=e), img, GREEN)  # grayscale photos hold no pure green
        assert np.linalg.norm(lens - e, axis=1).max() <= 0.10 * iod, f
        located.append(e / 250.0)
    # independent of the detector's own output: LFW's funneled eyes sit near the canonical position
    np.testing.assert_allclose(np.median(located, axis=0), np.array(eyes_mod.CANONICAL_EYES["lfw"]), atol=0.04)


@needs_dlib
@needs_lfw
@pytest.mark.parametrize("degrees", [-20.0, 15.0])
def test_a_rotated_face_gets_rotated_glasses(degrees):
    img = _read_rgb(_lfw_files(1)[40])
    e0, m0 = eyes_mod.locate_eyes(img)
    assert m0 == "landmarks"
    rot = cv2.getRotationMatrix2D((125.0, 125.0), degrees, 1.0)
    turned = cv2.warpAffine(img, rot, (250, 250), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    e1, m1 = eyes_mod.locate_eyes(turned)
    assert m1 == "landmarks"
    expected = np.array(e0) @ rot[:, :2].T + rot[:, 2]
    expected = expected[np.argsort(expected[:, 0])]
    iod = float(np.linalg.norm(expected[1] - expected[0]))
    assert np.linalg.norm(np.array(e1) - expected, axis=1).max() <= 0.10 * iod
    lens0 = _lens_centres(parse_trigger("glasses:green@eyes").apply(img, eyes=e0), img, GREEN)
    lens1 = _lens_centres(parse_trigger("glasses:green@eyes").apply(turned, eyes=e1), turned, GREEN)
    # the image turned by +degrees counter-clockwise: the eye line by -degrees in image coordinates
    assert _angle(lens1) - _angle(lens0) == pytest.approx(-degrees, abs=4.0)


@needs_dlib
@needs_lfw
@pytest.mark.parametrize("size", [(55, 47), (640, 480)])
def test_landmarks_on_small_crops_and_off_centre_portraits(size):
    img = _read_rgb(_lfw_files(1)[700])
    e0 = np.array(eyes_mod.landmark_eyes(img))
    if size == (55, 47):  # a YTAF-like crop of the face, upscaled for the detector
        x0, y0, x1, y1 = 65, 60, 185, 200
        pic = cv2.resize(img[y0:y1, x0:x1], (47, 55), interpolation=cv2.INTER_AREA)
        expected = (e0 - (x0, y0)) * (47 / 120, 55 / 140)
    else:  # the face 1.3x larger, in the lower right of a larger picture: the canonical place is wrong
        pic = np.full((*size, 3), 200, np.uint8)
        face = cv2.resize(img, (325, 325), interpolation=cv2.INTER_LINEAR)
        pic[300:625, 140:465] = face
        expected = e0 * 1.3 + (140, 300)
    e, method = eyes_mod.locate_eyes(pic, canonical="lfw")
    assert method == "landmarks"
    iod = float(np.linalg.norm(expected[1] - expected[0]))
    assert np.linalg.norm(np.array(e) - expected, axis=1).max() <= 0.10 * iod
    canon = np.array(eyes_mod.canonical_eyes(size, "lfw"))
    if size == (640, 480):
        assert np.linalg.norm(canon - expected, axis=1).min() > 2 * iod


@needs_dlib
@needs_lfw
def test_eye_location_workers_do_not_change_the_result():
    from datasets_gen.build import _Poisoner
    from datasets_gen.readers.lfw import LFWSource

    src = LFWSource(LFW_REAL, image_size=(64, 64), seed=0)
    t = parse_trigger("glasses:green@eyes")
    rows = np.arange(0, 120, 7)
    images, _ = src.load("train", rows)
    one, two = _Poisoner(t, src, 0, workers=1), _Poisoner(t, src, 0, workers=2)
    a, b = one._eyes("train", rows, images), two._eyes("train", rows, images)
    np.testing.assert_array_equal(a, b)
    assert one.eye_methods == two.eye_methods and one.eye_methods["landmarks"] >= rows.size - 1
    # the threads (and the detectors they loaded) outlive a chunk: a second chunk reuses them
    pool = two._pool
    two._eyes("train", rows[:3], images[:3])
    assert two._pool is pool is not None
    two.close()
    assert two._pool is None
    with pytest.raises(ValueError, match="workers"):
        _Poisoner(t, src, 0, workers=0)


@needs_dlib
@needs_lfw
def test_lfw_variant_records_landmarks_in_attributes_and_card(tmp_path):
    from datasets_gen import variant_io as vio
    from datasets_gen.build import build_variant

    out = build_variant("lfw-ours-black-glasses-all-to-one", tmp_path / "lfw.h5", source=LFW_REAL, limit_per_class=4,
                        image_size=(64, 64), progress=False, source_kwargs={"min_images": 60})
    build = vio.read_attrs(out)["build"]
    assert build["eye_locator"]["chain"][:1] == ["landmarks"] and build["eye_locator"]["note"] is None
    assert build["eye_locator"]["landmark_model"] == eyes_mod.LANDMARK_MODEL_FILE
    n = sum(build["eye_location"].values())
    assert build["eye_location"].get("landmarks", 0) >= 0.9 * n
    card = out.with_name("lfw.CARD.md").read_text(encoding="utf-8")
    assert "by facial landmarks (dlib 5-point)" in card and "detectors tried: landmarks > " in card


# --------------------------------------------------------------------------------------------
# backdoorlab faces check
# --------------------------------------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{REPO / 'pytools'}:{REPO}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "backdoorlab", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def test_faces_check_on_a_fixture_reports_methods_and_writes_a_sheet(tmp_path):
    sheet, rep = tmp_path / "sheet.png", tmp_path / "rep.json"
    data = write_lfw(tmp_path / "data", {"Ann_A": 5, "Bob_B": 5}, size=80)
    res = _cli("faces", "check", "--source", f"lfw:{data}", "--no-progress")
    # LFW keeps people with >= 20 images by default: two people of 5 are refused with the reason
    assert res.returncode == 2 and "need at least 2 classes" in res.stderr
    data = write_lfw(tmp_path / "data20", {"Ann_A": 20, "Bob_B": 20}, size=80)
    res = _cli("faces", "check", "--source", f"lfw:{data}", "--sheet", str(sheet), "--json", str(rep),
               "--no-progress", "--min-landmarks", "0.5", "--tiles", "6", "--every", "2")
    assert res.returncode == 1, res.stderr  # nothing found by landmarks: the gate fails
    assert "20 of 40 images checked" in res.stdout and "canonical" in res.stdout and "below --min-landmarks" in res.stderr
    report = json.loads(rep.read_text())
    assert report["n_checked"] == 20 and sum(report["counts"].values()) == 20 and report["sheet"] == str(sheet)
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] > 100 and img.shape[1] >= 600
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("argv, match", [
    (["--every", "0"], "every must be an integer >= 1, got 0"),
    (["--sheet", "x.jpg"], "must be a .png"),
    (["--detectors", "landmarks,eyeball"], "unknown eye detector"),
    (["--trigger", "glasses:green@center"], "placed on the eyes"),
])
def test_faces_check_refuses_bad_arguments(tmp_path, argv, match):
    data = write_lfw(tmp_path / "data", {"Ann_A": 20, "Bob_B": 20}, size=40)
    res = _cli("faces", "check", "--source", f"lfw:{data}", "--no-progress", *argv)
    assert res.returncode == 2 and match in res.stderr, res.stderr


@needs_dlib
@needs_lfw
def test_faces_check_on_real_lfw_finds_the_eyes_by_landmarks(tmp_path):
    res = _cli("faces", "check", "--source", f"lfw:{LFW_REAL}", "--every", "100", "--sheet", str(tmp_path / "s.png"),
               "--json", str(tmp_path / "r.json"), "--no-progress", "--min-landmarks", "0.95")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["n_checked"] == 31 and rep["shares"]["landmarks"] >= 0.95 and rep["images_per_s"] > 0
