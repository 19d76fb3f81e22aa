"""Readers of the real layouts (GTSRB, YouTube Aligned Faces, LFW) on generated fixtures and on the
real subsets in ../shared/data (skipped with the reason when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from _data_helpers import GTSRB_REAL, LFW_REAL, corrupt, write_gtsrb, write_lfw, write_ytaf
from datasets_gen.readers.base import stratified_split
from datasets_gen.readers.gtsrb import GTSRBSource, read_gt_csv
from datasets_gen.readers.lfw import LFWSource
from datasets_gen.readers.ytaf import YTAFSource
from datasets_gen.sources import open_source


# ---- GTSRB ------------------------------------------------------------------------------------

@pytest.fixture
def gtsrb_dir(tmp_path):
    return write_gtsrb(tmp_path / "GTSRB", classes=(0, 1, 14), tracks=4, frames=5)


def test_gtsrb_counts_labels_and_track_split(gtsrb_dir):
    src = GTSRBSource(gtsrb_dir, clean_share=0.1, seed=0)
    train, clean, test = (src.tables[s] for s in ("train", "clean", "test"))
    assert src.n_classes == 43 and src.class_names[14] == "stop"
    assert len(train) + len(clean) == 3 * 4 * 5 and len(test) == 15
    assert len(clean) == 10  # 10 % of 60 = 6 -> two whole tracks of 5
    assert not set(train.provenance) & set(clean.provenance)  # no track on both sides
    assert set(np.unique(train.labels)) == {0, 1, 14}
    assert np.all(test.provenance == -1)
    # index is stable: same listing for another seed, only the held-out tracks move
    other = GTSRBSource(gtsrb_dir, clean_share=0.1, seed=1)
    all_idx = np.sort(np.concatenate([other.tables["train"].index, other.tables["clean"].index]))
    np.testing.assert_array_equal(all_idx, np.arange(60))


def test_gtsrb_roi_scaled_to_actual_size(gtsrb_dir):
    # disk images are 32x32, CSV says 64x64 with the ROI in the central half: crop must be all red
    src = GTSRBSource(gtsrb_dir, image_size=(16, 16))
    imgs, ok = src.load("train", np.arange(len(src.tables["train"])))
    assert ok.all() and imgs.shape[1:] == (16, 16, 3)
    red = imgs[..., 0].astype(int) - imgs[..., 2]
    assert red.min() > 100, "crop included the blue surround: ROI not scaled to the image size"
    nocrop = GTSRBSource(gtsrb_dir, image_size=(16, 16), crop_roi=False)
    imgs2, _ = nocrop.load("test", [0])
    assert imgs2[0, 0, 0, 2] > 150  # corner is blue without the crop


def test_gtsrb_missing_and_corrupt_csv(gtsrb_dir):
    csv = gtsrb_dir / "Final_Training/Images/00001/GT-00001.csv"
    text = csv.read_text()
    csv.unlink()
    with pytest.raises(FileNotFoundError, match="GT-00001.csv"):
        GTSRBSource(gtsrb_dir)
    csv.write_text(text.replace(";1\n", ";x\n", 1))
    with pytest.raises(ValueError, match=r"GT-00001.csv, line 2: malformed"):
        GTSRBSource(gtsrb_dir)
    csv.write_text(text.replace("Roi.X1", "RoiX1"))
    with pytest.raises(ValueError, match=r"missing column"):
        GTSRBSource(gtsrb_dir)
    csv.write_text(text.replace(";1\n", ";50\n", 1))
    with pytest.raises(ValueError, match="unknown class 50"):
        GTSRBSource(gtsrb_dir)
    csv.write_text(text.replace(";1\n", ";2\n", 1))
    with pytest.raises(ValueError, match="class 2 in the folder of class 1"):
        GTSRBSource(gtsrb_dir)
    csv.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError):
        GTSRBSource(gtsrb_dir)


def test_gtsrb_unknown_class_folder_and_missing_layout(gtsrb_dir, tmp_path):
    (gtsrb_dir / "Final_Training/Images/00077").mkdir()
    with pytest.raises(ValueError, match="unknown class folder 00077"):
        GTSRBSource(gtsrb_dir)
    with pytest.raises(FileNotFoundError, match="no GTSRB layout"):
        GTSRBSource(tmp_path / "nowhere")


def test_gtsrb_test_csv_without_classid(gtsrb_dir):
    p = gtsrb_dir / "Final_Test/GT-final_test.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(";".join(line.split(";")[:-1]) for line in lines) + "\n")
    with pytest.raises(ValueError, match="ClassId"):
        read_gt_csv(p)


def test_gtsrb_unreadable_image_skip_or_strict(gtsrb_dir):
    corrupt(gtsrb_dir / "Final_Test/Images/00003.ppm")
    src = GTSRBSource(gtsrb_dir)
    imgs, ok = src.load("test", np.arange(15))
    assert ok.sum() == 14 and not ok[3] and src.skipped == {"test": 1}
    assert "00003.ppm" in src.skipped_examples[0]
    strict = GTSRBSource(gtsrb_dir, strict=True)
    with pytest.raises(ValueError, match="unreadable image .*00003.ppm"):
        strict.load("test", np.arange(15))


# ---- YTAF ----------------------------------------------------------------------------------------

@pytest.fixture
def ytaf_dir(tmp_path):
    return write_ytaf(tmp_path / "ytf", {"Alice_A": [30, 30, 40], "Bob_B": [60, 40], "Carl_C": [20, 20],
                                         "Dora_D": [50, 50]})


def test_ytaf_filter_split_and_video_provenance(ytaf_dir):
    src = YTAFSource(ytaf_dir, image_size=(55, 47), min_images=100, seed=3)
    assert src.class_names == ["Alice_A", "Bob_B", "Dora_D"]  # Carl has 40 < 100
    sizes = {s: np.bincount(t.labels, minlength=3) for s, t in src.tables.items()}
    np.testing.assert_array_equal(sizes["train"], [75, 75, 75])
    np.testing.assert_array_equal(sizes["test"], [20, 20, 20])
    np.testing.assert_array_equal(sizes["clean"], [5, 5, 5])
    assert np.unique(src.tables["train"].provenance).size == 7  # one id per video
    imgs, ok = src.load("test", np.arange(10))
    assert ok.all() and imgs.shape == (10, 55, 47, 3)


def test_ytaf_scan_does_not_decode(ytaf_dir):
    # streaming: opening the source reads no pixels, so even corrupt files are found only on load
    victim = next((ytaf_dir / "aligned_images_DB/Alice_A/0").iterdir())
    corrupt(victim)
    src = YTAFSource(ytaf_dir, min_images=100)
    for split, t in src.tables.items():
        if str(victim) in t.keys:
            row = t.keys.index(str(victim))
            _, ok = src.load(split, [row])
            assert not ok[0] and src.skipped[split] == 1


def test_ytaf_too_few_people(ytaf_dir):
    with pytest.raises(ValueError, match="need at least 2 classes"):
        YTAFSource(ytaf_dir, min_images=110)


# ---- LFW -----------------------------------------------------------------------------------------

def test_lfw_gray_to_rgb_filter_and_split(tmp_path):
    root = write_lfw(tmp_path, {"Ann_One": 20, "Ben_Two": 30, "Cy_Three": 5}, gray=True)
    src = open_source(f"lfw:{root}", image_size=(32, 32), seed=0)
    assert src.class_names == ["Ann_One", "Ben_Two"]
    sizes = {s: np.bincount(t.labels, minlength=2) for s, t in src.tables.items()}
    np.testing.assert_array_equal(sizes["train"], [14, 21])
    np.testing.assert_array_equal(sizes["test"], [4, 6])
    np.testing.assert_array_equal(sizes["clean"], [2, 3])
    imgs, ok = src.load("train", np.arange(6))
    assert ok.all() and imgs.shape == (6, 32, 32, 3)
    assert np.array_equal(imgs[..., 0], imgs[..., 1]) and np.array_equal(imgs[..., 1], imgs[..., 2])
    # provenance: blocks of 5 consecutive numbers per person, disjoint between people
    t = src.tables["train"]
    assert not set(t.provenance[t.labels == 0]) & set(t.provenance[t.labels == 1])


def test_stratified_split_exact_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 7, 33])
    a = stratified_split(labels, (0.7, 0.2, 0.1), seed=1)
    b = stratified_split(labels, (0.7, 0.2, 0.1), seed=1)
    c = stratified_split(labels, (0.7, 0.2, 0.1), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert sorted(np.concatenate(a).tolist()) == list(range(50))
    np.testing.assert_array_equal(np.bincount(labels[a[0]]), [7, 5, 23])
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.2), 0)


def test_open_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        open_source("mnist")
    with pytest.raises(ValueError, match="needs a path"):
        open_source("gtsrb")
    with pytest.raises(FileNotFoundError):
        open_source(f"lfw:{tmp_path / 'none'}")


# ---- the real subsets ------------------------------------------------------------------------------

@pytest.mark.skipif(not GTSRB_REAL.is_dir(), reason=f"real GTSRB subset not present at {GTSRB_REAL}")
def test_real_gtsrb_subset():
    src = GTSRBSource(GTSRB_REAL, seed=0)
    n_train, n_clean, n_test = (len(src.tables[s]) for s in ("train", "clean", "test"))
    assert n_train + n_clean == 6450 and n_test == 1500
    assert 0.09 <= n_clean / 6450 <= 0.12
    assert not set(src.tables["train"].provenance) & set(src.tables["clean"].provenance)
    assert np.unique(src.tables["train"].labels).size == 43
    rows = np.arange(0, n_train, 97)
    imgs, ok = src.load("train", rows)
    assert ok.all() and imgs.shape == (rows.size, 32, 32, 3) and imgs.std() > 10


@pytest.mark.skipif(not LFW_REAL.is_dir(), reason=f"real LFW subset not present at {LFW_REAL}")
def test_real_lfw_subset():
    src = LFWSource(LFW_REAL, image_size=(64, 64), seed=0)
    assert src.n_classes == 62 and sum(len(t) for t in src.tables.values()) == 3023
    imgs, ok = src.load("test", np.arange(0, 40))
    assert ok.all() and np.array_equal(imgs[..., 0], imgs[..., 2])  # grayscale replicated
    assert imgs.std() > 10


@pytest.mark.skipif(not LFW_REAL.is_dir(), reason=f"real LFW subset not present at {LFW_REAL}")
def test_real_lfw_eye_detection_lands_near_the_eyes():
    from datasets_gen import eyes
    if not eyes.haar_available():
        pytest.skip("this OpenCV build has no CascadeClassifier/haarcascade_eye.xml")
    src = LFWSource(LFW_REAL, image_size=(64, 64), seed=0)
    found = []
    for row in range(0, 300, 15):
        img = src.load_original("train", row)
        e = eyes.haar_eyes(img)
        if e is not None:
            found.append(np.array(e) / 250.0)
    assert len(found) >= 5
    med = np.median(np.stack(found), axis=0)  # LFW's deep-funneled eyes sit near (0.42|0.58, 0.46)
    np.testing.assert_allclose(med, np.array(eyes.CANONICAL_EYES["lfw"]), atol=0.06)
