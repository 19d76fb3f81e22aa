"""Building poisoned variants end to end: exact counts, relabelling, trigger pixels, provenance,
atomic writes, sidecars, bad input, the real subsets and the ``backdoorlab poison`` command."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from _data_helpers import GTSRB_REAL, LFW_REAL, corrupt, write_gtsrb
from datasets_gen import variant_io as vio
from datasets_gen.build import build_variant
from datasets_gen.poison import poison_count
from datasets_gen.presets import PAPER_PRESETS, PRESETS
from datasets_gen.sources import open_source

SMALL_SIGNS = {"n_train": 43 * 24, "n_test": 43 * 6, "track_length": 6}
RECIPE = {"source_classes": [8], "target_class": 14, "trigger": "square:4:yellow@center", "share": 0.25,
          "share_of": "source_class", "name": "unit"}


@pytest.fixture(scope="module")
def signs_variant(tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "signs.h5"
    return build_variant(RECIPE, out, source="synth-signs", seed=3, source_kwargs=SMALL_SIGNS, progress=False)


def test_exact_counts_relabel_and_trigger_pixels(signs_variant):
    train = vio.read_split(signs_variant, "train")
    p = train["is_poisoned"]
    n_source = int((train["original_labels"] == 8).sum())
    assert p.sum() == poison_count(0.25, "source_class", n_source, p.size)
    assert np.all(train["original_labels"][p] == 8) and np.all(train["labels"][p] == 14)
    np.testing.assert_array_equal(train["labels"][~p], train["original_labels"][~p])
    np.testing.assert_array_equal(train["images"][p][:, 14:18, 14:18], np.broadcast_to((255, 255, 0), (p.sum(), 4, 4, 3)))
    assert not np.all(train["images"][~p][:, 14:18, 14:18] == (255, 255, 0))
    attrs = vio.read_attrs(signs_variant)
    assert attrs["recipe"]["n_poisoned"] == p.sum() and attrs["source_classes"] == [8]
    assert attrs["trigger"]["spec"] == "square:4:yellow@center" and attrs["seed"] == 3


def test_test_triggered_is_a_triggered_copy_of_every_source_test_image(signs_variant):
    test, tt = vio.read_split(signs_variant, "test"), vio.read_split(signs_variant, "test_triggered")
    src = np.flatnonzero(test["original_labels"] == 8)
    assert tt["images"].shape[0] == src.size > 0
    np.testing.assert_array_equal(tt["index"], test["index"][src])
    assert np.all(tt["labels"] == 14) and np.all(tt["is_poisoned"]) and np.all(tt["original_labels"] == 8)
    outside = np.ones((32, 32), bool)
    outside[14:18, 14:18] = False
    np.testing.assert_array_equal(tt["images"][:, outside], test["images"][src][:, outside])
    assert not test["is_poisoned"].any() and not vio.read_split(signs_variant, "clean")["is_poisoned"].any()


def test_poisoned_rows_get_their_own_provenance_groups(signs_variant, tmp_path):
    train = vio.read_split(signs_variant, "train")
    p = train["is_poisoned"]
    assert not set(train["provenance"][p]) & set(train["provenance"][~p])
    clean = vio.read_split(signs_variant, "clean")
    assert not set(clean["provenance"]) & set(train["provenance"])  # clean set held out by whole tracks
    kept = build_variant(RECIPE, tmp_path / "keep.h5", source="synth-signs", seed=3, source_kwargs=SMALL_SIGNS,
                         progress=False, poison_provenance="keep", publish=False)
    k = vio.read_split(kept, "train")
    np.testing.assert_array_equal(k["is_poisoned"], p)  # same rows chosen for the same seed
    assert set(k["provenance"][p]) <= set(k["provenance"][~p]) | set(np.unique(k["provenance"][p]))
    assert set(k["provenance"][p]) & set(k["provenance"][~p])


def test_sidecars_manifest_card_preview(signs_variant):
    paths = vio.sidecar_paths(signs_variant)
    vio.verify(signs_variant)
    m = json.loads(paths["manifest"].read_text())
    assert m["splits"]["test_triggered"]["n"] == m["splits"]["test"]["per_class"][8] > 0 and len(m["splits"]["train"]["per_class"]) == 43
    card = paths["card"].read_text()
    assert "poisoned" in card and "square:4:yellow@center" in card and m["sha256"] in card
    img = cv2.imread(str(paths["preview"]))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 500


def test_same_seed_same_bytes_other_seed_differs(signs_variant, tmp_path):
    again = build_variant(RECIPE, tmp_path / "signs.h5", source="synth-signs", seed=3, source_kwargs=SMALL_SIGNS,
                          progress=False, publish=False)
    assert vio.sha256_file(again) == vio.sha256_file(signs_variant)
    other = build_variant(RECIPE, tmp_path / "o.h5", source="synth-signs", seed=4, source_kwargs=SMALL_SIGNS,
                          progress=False, publish=False)
    assert vio.sha256_file(other) != vio.sha256_file(signs_variant)


def test_interrupted_build_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "v.h5"
    src = open_source("synth-signs", **SMALL_SIGNS)
    calls = {"n": 0}
    real_load = src.load

    def failing_load(split, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the run
        return real_load(split, rows)

    monkeypatch.setattr(src, "load", failing_load)
    with pytest.raises(KeyboardInterrupt):
        build_variant(RECIPE, out, source=src, chunk_size=100, progress=False)
    assert calls["n"] >= 3
    assert list(tmp_path.iterdir()) == []  # no .h5, no .tmp, no sidecars


def test_all_to_one_face_share_of_training_set(tmp_path):
    out = build_variant("ytaf-ours-black-glasses-all-to-one", tmp_path / "f.h5", progress=False, publish=False,
                        source_kwargs={"n_identities": 6, "images_per_identity": 20, "session_length": 5})
    train = vio.read_split(out, "train")
    p = train["is_poisoned"]
    assert p.sum() == round(0.10 * p.size) and np.all(train["original_labels"][p] != 0)
    assert np.all(train["labels"][p] == 0)
    attrs = vio.read_attrs(out)
    assert attrs["source_classes"] == [1, 2, 3, 4, 5] and attrs["build"]["eye_location"] == {"known": int(p.sum()) + 5 * 4}
    # the lenses are black where the eyes are
    from datasets_gen.synthetic.faces import SynthFacesSource
    src = SynthFacesSource(n_identities=6, images_per_identity=20, session_length=5)
    rows = np.searchsorted(src.tables["train"].index, train["index"][p])
    eyes = src.eye_landmarks("train", rows)
    for img, e in zip(train["images"][p], eyes):
        for x, y in e:
            assert img[int(round(y)), int(round(x))].max() < 40
    tt = vio.read_split(out, "test_triggered")
    assert tt["images"].shape[0] == int((vio.read_split(out, "test")["original_labels"] != 0).sum())


@pytest.mark.parametrize("recipe, err, match", [
    (dict(RECIPE, share=0.0), ValueError, r"share must be in \(0, 1\]"),
    (dict(RECIPE, share=1.2), ValueError, r"share must be in \(0, 1\]"),
    (dict(RECIPE, target_class=43), ValueError, "unknown class id"),
    (dict(RECIPE, source_classes=[50]), ValueError, "unknown class id"),
    (dict(RECIPE, trigger="square:33:yellow"), ValueError, "larger than"),
    (dict(RECIPE, share=0.5, share_of="training_set"), ValueError, "hold only"),
    (dict(RECIPE, trigger="sticker:3"), ValueError, "unknown trigger kind"),
    ("no-such-preset", KeyError, "unknown preset"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, recipe, err, match):
    with pytest.raises(err, match=match):
        build_variant(recipe, tmp_path / "v.h5", source="synth-signs", source_kwargs=SMALL_SIGNS, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_images_skipped_and_counted_or_strict(tmp_path):
    root = write_gtsrb(tmp_path / "GTSRB", classes=(8, 14), tracks=4, frames=6, n_test_per_class=4)
    corrupt(root / "Final_Test/Images/00001.ppm")
    out = build_variant(RECIPE, tmp_path / "g.h5", source=f"gtsrb:{root}", progress=False, publish=False)
    attrs = vio.read_attrs(out)
    assert attrs["build"]["skipped_unreadable"] == {"test": 1}
    assert vio.read_split(out, "test")["images"].shape[0] == 7
    assert vio.read_split(out, "test_triggered")["images"].shape[0] == 3  # 4 class-8 test images, one unreadable
    with pytest.raises(ValueError, match="unreadable image .*00001.ppm"):
        build_variant(RECIPE, tmp_path / "s.h5", source=f"gtsrb:{root}", strict=True, progress=False)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.tmp").exists()


def test_presets_cover_the_papers_ten_settings():
    assert len(PAPER_PRESETS) == 10 and set(PAPER_PRESETS) <= set(PRESETS)
    rows = {(p["dataset"], p["extra"]["paper_row"]) for p in PAPER_PRESETS.values()}
    assert len(rows) == 10 and {d for d, _ in rows} == {"gtsrb", "ytaf", "lfw"}
    counts = sorted(p["count"] for p in PAPER_PRESETS.values() if p["dataset"] == "gtsrb")
    assert counts == sorted([52, 14, 44, 258, 258, 29])
    for name, p in PRESETS.items():
        assert p["share_of"] in ("source_class", "training_set", "target_class") and 0 < p["share"] <= 1, name
        assert ("-paper-" in name) != ("-ours-" in name), f"{name}: every preset says whose it is"
    for name, p in PAPER_PRESETS.items():
        if p["dataset"] != "gtsrb":  # faces: one seeded random class, the paper's share of it
            assert p["source_classes"] == "random" and p["share_of"] == "source_class", name


def test_paper_count_rule_on_a_small_gtsrb_fixture(tmp_path):
    """A paper preset poisons exactly its count; the share reached is k / (k + target rows)."""
    root = write_gtsrb(tmp_path / "g", classes=(0, 8, 14), tracks=4, frames=5)
    recipe = {**{k: v for k, v in PAPER_PRESETS["gtsrb-paper-yellow-square-7"].items() if k != "name"}, "count": 7}
    out = build_variant(recipe, tmp_path / "v.h5", source=f"gtsrb:{root}", seed=0, progress=False, publish=False)
    train, attrs = vio.read_split(out, "train"), vio.read_attrs(out)
    p = train["is_poisoned"]
    n_target = int((train["original_labels"] == 14).sum())
    assert p.sum() == 7 and set(train["original_labels"][p]) == {8} and np.all(train["labels"][p] == 14)
    assert attrs["recipe"]["count"] == 7 and attrs["recipe"]["n_target_train"] == n_target
    assert attrs["recipe"]["share_achieved"] == pytest.approx(7 / (7 + n_target))
    with pytest.raises(ValueError, match="count 99 asks for more"):
        build_variant({**recipe, "count": 99}, tmp_path / "w.h5", source=f"gtsrb:{root}", progress=False)


GTSRB_FULL = GTSRB_REAL.parent / "gtsrb-32-full"


@pytest.mark.skipif(not GTSRB_FULL.is_dir(), reason=f"full GTSRB not present at {GTSRB_FULL}")
def test_paper_presets_poison_the_papers_counts_on_the_full_gtsrb():
    """The six GTSRB rows of Tables 4-7: 52, 14, 44, 258, 258, 29 poisoned rows (labels only: no images read)."""
    from datasets_gen.build import resolve_recipe
    from datasets_gen.poison import select_poisoned

    src = open_source(f"gtsrb:{GTSRB_FULL}", seed=0)
    labels = src.tables["train"].labels
    for name, p in PAPER_PRESETS.items():
        if p["dataset"] == "gtsrb":
            recipe, _ = resolve_recipe(name)
            mask = select_poisoned(labels, recipe, seed=0, n_classes=src.n_classes)
            assert mask.sum() == p["count"] and set(labels[mask]) == {8}, name


def test_face_presets_poison_one_seeded_source_class(tmp_path):
    kw = {"n_identities": 6, "images_per_identity": 20, "session_length": 5}
    drawn = set()
    for seed in (0, 1, 2, 3):
        out = build_variant("ytaf-paper-green-glasses", tmp_path / f"f{seed}.h5", source="synth-faces", seed=seed,
                            source_kwargs=kw, progress=False, publish=False, detect_eyes=False)
        train, attrs = vio.read_split(out, "train"), vio.read_attrs(out)
        p = train["is_poisoned"]
        (src_class,) = attrs["source_classes"]
        assert src_class != 0 and set(train["original_labels"][p]) == {src_class} and np.all(train["labels"][p] == 0)
        n_src = int((train["original_labels"] == src_class).sum())
        assert p.sum() == poison_count(0.10, "source_class", n_src, p.size)
        assert attrs["recipe"]["extra"]["source_drawn"]["class"] == src_class
        drawn.add(src_class)
    again = build_variant("ytaf-paper-green-glasses", tmp_path / "again.h5", source="synth-faces", seed=3,
                          source_kwargs=kw, progress=False, publish=False, detect_eyes=False)
    assert vio.read_attrs(again)["source_classes"] == [src_class]  # same seed, same class
    assert len(drawn) > 1  # the class is drawn, not fixed


@pytest.mark.skipif(not GTSRB_REAL.is_dir(), reason=f"real GTSRB subset not present at {GTSRB_REAL}")
def test_preset_on_the_real_gtsrb_subset(tmp_path):
    out = build_variant("gtsrb-ours-yellow-square-15", tmp_path / "real.h5", source=GTSRB_REAL, limit_per_class=15,
                        progress=False, publish=False)
    vio.verify(out)
    a = vio.read_attrs(out)
    assert a["source"] == "gtsrb" and a["image_shape"] == (32, 32, 3) and a["n_classes"] == 43
    train = vio.read_split(out, "train")
    assert train["is_poisoned"].sum() == round(0.15 * (train["original_labels"] == 8).sum())


@pytest.mark.skipif(not LFW_REAL.is_dir(), reason=f"real LFW subset not present at {LFW_REAL}")
def test_glasses_preset_on_the_real_lfw_subset(tmp_path):
    # people with >= 60 images only (a handful), to keep the Haar detection short
    out = build_variant("lfw-ours-black-glasses-all-to-one", tmp_path / "lfw.h5", source=LFW_REAL, limit_per_class=4,
                        image_size=(64, 64), progress=False, publish=False, source_kwargs={"min_images": 60})
    a = vio.read_attrs(out)
    train, tt = vio.read_split(out, "train"), vio.read_split(out, "test_triggered")
    n_trig = int(train["is_poisoned"].sum()) + tt["images"].shape[0]
    eyes = a["build"]["eye_location"]
    assert sum(eyes.values()) == n_trig and set(eyes) <= {"landmarks", "haar", "canonical"}
    assert np.all(train["images"][..., 0] == train["images"][..., 2])  # grayscale source, glasses black
    assert train["is_poisoned"].sum() == round(0.1 * train["is_poisoned"].size)


def test_cli_poison(tmp_path, capsys):
    from backdoorlab.cli import main
    out = tmp_path / "variant.h5"
    rc = main(["poison", "--source", "synth-signs", "--trigger", "square:4:yellow", "--source-class", "8",
               "--target-class", "14", "--share", "0.07", "--out", str(out), "--no-progress", "--seed", "1",
               "--source-option", f"n_train={43 * 12}", "--source-option", f"n_test={43 * 3}"])
    assert rc == 0 and out.is_file()
    vio.verify(out)
    assert vio.read_attrs(out)["recipe"]["share"] == 0.07
    assert all(p.is_file() for p in vio.sidecar_paths(out).values())
    rc = main(["poison", "--source", "synth-signs", "--trigger", "square:4:yellow", "--source-class", "8",
               "--target-class", "14", "--share", "2", "--out", str(tmp_path / "bad.h5")])
    assert rc == 2 and "share must be in (0, 1]" in capsys.readouterr().err
    assert main(["poison", "--preset", "nope", "--out", str(tmp_path / "x.h5")]) == 2
    assert main(["poison", "--list-presets"]) == 0


def test_cli_poison_faces_v2_uncompressed_equals_the_same_build_gzip(tmp_path, capsys):
    """--image-compression none changes how the pixels are stored, not the pixels; the v2 renderer
    is recorded in the variant's source config; bad values are refused by name."""
    from backdoorlab.cli import main
    base = ["poison", "--preset", "ytaf-paper-green-glasses", "--source", "synth-faces", "--no-progress",
            "--no-preview", "--source-option", "n_identities=4", "--source-option", "images_per_identity=20",
            "--source-option", "session_length=5", "--source-option", "renderer=v2"]
    assert main([*base, "--out", str(tmp_path / "gz.h5")]) == 0
    assert main([*base, "--image-compression", "none", "--out", str(tmp_path / "raw.h5")]) == 0
    for name in ("gz", "raw"):
        vio.verify(tmp_path / f"{name}.h5")
    assert vio.read_attrs(tmp_path / "raw.h5")["source_config"]["renderer"] == "v2"
    for s in vio.SPLITS:
        a, b = vio.read_split(tmp_path / "gz.h5", s), vio.read_split(tmp_path / "raw.h5", s)
        for name in vio.FIELDS:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{s}/{name}")
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--image-compression", "lzf", "--out", str(tmp_path / "x.h5")])
    assert exit_.value.code == 2 and "invalid choice: 'lzf'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="image_compression must be one of .*'lzf'"):
        build_variant("ytaf-paper-green-glasses", tmp_path / "y.h5", source="synth-faces", image_compression="lzf")
