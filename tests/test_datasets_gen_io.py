"""HDF5 variant schema, atomic writing, manifest verification and the toy variant."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from datasets_gen import variant_io as vio
from datasets_gen.atomic import atomic_open, atomic_path, atomic_write_json, json_safe
from datasets_gen.toy import make_toy_variant


def _tiny_splits(n=6, hw=(8, 8), k=3, target=1):
    rng = np.random.default_rng(0)

    def split(n, poisoned=False):
        labels = np.arange(n) % k
        return {"images": rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8), "labels": labels.copy(),
                "original_labels": labels, "is_poisoned": np.zeros(n, bool),
                "provenance": np.arange(n, dtype=np.int32), "index": np.arange(n)}

    splits = {s: split(n) for s in vio.SPLITS}
    tt = splits["test_triggered"]
    tt["is_poisoned"][:] = True
    tt["labels"] = np.full(n, target)
    tr = splits["train"]
    tr["is_poisoned"][0] = True
    tr["labels"][0] = target
    attrs = {"recipe": {"share": 0.1}, "trigger": {"spec": "square:2:yellow"}, "class_names": ["a", "b", "c"],
             "n_classes": k, "seed": 3, "generator_version": "test", "source": "unit", "target_class": target,
             "source_classes": [0], "image_shape": (*hw, 3)}
    return splits, attrs


def test_round_trip_preserves_every_field_and_attr(tmp_path):
    splits, attrs = _tiny_splits()
    path = vio.write_variant(tmp_path / "v.h5", splits, attrs)
    got = vio.read_attrs(path)
    for key in vio.REQUIRED_ATTRS:
        want = tuple(attrs[key]) if key == "image_shape" else attrs[key]
        assert got[key] == want, key
    for s in vio.SPLITS:
        back = vio.read_split(path, s)
        for name, dtype in vio.FIELDS.items():
            assert back[name].dtype == dtype
            np.testing.assert_array_equal(back[name], splits[s][name])
    with h5py.File(path) as f:
        assert f["train/images"].compression == "gzip"
        assert f["train/images"].chunks is not None
    vio.verify(path)


def test_uncompressed_images_read_back_the_same(tmp_path):
    """image_compression="none": the images dataset has no filter, every field reads back as with gzip."""
    splits, attrs = _tiny_splits()
    out = tmp_path / "raw.h5"
    with vio.VariantWriter(out, attrs, image_compression="none") as w:
        for s in vio.SPLITS:
            w.append(s, splits[s])
    with h5py.File(out) as f:
        assert f["train/images"].compression is None and f["train/images"].chunks is not None
        assert f["train/labels"].compression == "gzip"
    for s in vio.SPLITS:
        back = vio.read_split(out, s)
        for name in vio.FIELDS:
            np.testing.assert_array_equal(back[name], splits[s][name])
    with pytest.raises(ValueError, match="image_compression must be one of .*'lz4'"):
        vio.VariantWriter(tmp_path / "x.h5", attrs, image_compression="lz4")


def test_interrupted_write_leaves_no_file(tmp_path):
    splits, attrs = _tiny_splits()
    out = tmp_path / "v.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with vio.VariantWriter(out, attrs) as w:
            w.append("train", splits["train"])
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_previous_file(tmp_path):
    splits, attrs = _tiny_splits()
    out = vio.write_variant(tmp_path / "v.h5", splits, attrs)
    before = out.read_bytes()
    bad = dict(splits)
    bad["clean"] = dict(splits["clean"], labels=np.full(6, 7))  # class 7 does not exist
    with pytest.raises(ValueError, match="outside"):
        vio.write_variant(out, bad, attrs)
    assert out.read_bytes() == before
    assert not (tmp_path / "v.h5.tmp").exists()


@pytest.mark.parametrize("mutate, err, match", [
    (lambda s, a: s["train"].update(labels=np.where(np.arange(6) == 1, 2, s["train"]["labels"])),
     ValueError, "not poisoned"),  # row 1 is clean but relabelled
    (lambda s, a: s["train"].update(images=s["train"]["images"].astype(np.float32)), TypeError, "uint8"),
    (lambda s, a: s["test"].update(provenance=np.zeros(5, np.int32)), ValueError, "shape"),
    (lambda s, a: s["test_triggered"].update(labels=np.zeros(6, int)), ValueError, "target class"),
    (lambda s, a: a.pop("seed"), KeyError, "seed"),
    (lambda s, a: a.update(target_class=9), ValueError, "target_class"),
    (lambda s, a: s.pop("clean"), KeyError, "clean"),
])
def test_schema_violations_are_named(tmp_path, mutate, err, match):
    splits, attrs = _tiny_splits()
    splits = {k: dict(v) for k, v in splits.items()}
    mutate(splits, attrs)
    with pytest.raises(err, match=match):
        vio.write_variant(tmp_path / "v.h5", splits, attrs)
    assert not (tmp_path / "v.h5").exists()


def test_verify_detects_tampering_and_missing_manifest(tmp_path):
    splits, attrs = _tiny_splits()
    path = vio.write_variant(tmp_path / "v.h5", splits, attrs)
    manifest = vio.sidecar_paths(path)["manifest"]
    m = json.loads(manifest.read_text())
    assert m["splits"]["train"]["n_poisoned"] == 1
    assert m["splits"]["test"]["per_class"] == [2, 2, 2]
    with h5py.File(path, "r+") as f:
        f["train/labels"][1] = 0
    with pytest.raises(ValueError, match="SHA-256"):
        vio.verify(path)
    with pytest.raises(ValueError, match="SHA-256"):
        vio.read_split(path, "train", verify_checksum=True)
    manifest.unlink()
    with pytest.raises(FileNotFoundError, match="manifest"):
        vio.verify(path)


def test_toy_variant_schema_counts_and_provenance(tmp_path):
    path = make_toy_variant(tmp_path / "toy.h5", seed=1)
    vio.verify(path)
    attrs = vio.read_attrs(path)
    assert attrs["n_classes"] == 4 and attrs["target_class"] == 1 and attrs["source_classes"] == [0]
    train = vio.read_split(path, "train")
    p = train["is_poisoned"]
    assert p.sum() == 18  # round(0.3 * 60)
    assert np.all(train["original_labels"][p] == 0) and np.all(train["labels"][p] == 1)
    assert np.all(train["labels"][~p] == train["original_labels"][~p])
    # poisoned rows form their own provenance groups
    assert not set(train["provenance"][p]) & set(train["provenance"][~p])
    # exact trigger pixels: 4x4 yellow at the centre
    np.testing.assert_array_equal(train["images"][p][:, 14:18, 14:18], np.broadcast_to([255, 255, 0], (18, 4, 4, 3)))
    tt = vio.read_split(path, "test_triggered")
    assert tt["images"].shape[0] == 20 and np.all(tt["original_labels"] == 0)
    test = vio.read_split(path, "test")
    np.testing.assert_array_equal(test["images"][tt["index"]][:, :14], tt["images"][:, :14])


def test_toy_variant_is_deterministic(tmp_path):
    a = make_toy_variant(tmp_path / "a.h5", seed=5)
    b = make_toy_variant(tmp_path / "b.h5", seed=5)
    c = make_toy_variant(tmp_path / "c.h5", seed=6)
    ia, ib, ic = (vio.read_split(p, "train")["images"] for p in (a, b, c))
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(ia, ic)


def test_toy_classes_are_separable_by_nearest_centroid(tmp_path):
    # a learnability check without torch: class means of the clean images separate the test set
    path = make_toy_variant(tmp_path / "t.h5", n_train_per_class=40)
    train, test = vio.read_split(path, "train"), vio.read_split(path, "test")
    keep = ~train["is_poisoned"]
    x = train["images"][keep].reshape(keep.sum(), -1).astype(np.float32)
    y = train["labels"][keep]
    cent = np.stack([x[y == c].mean(0) for c in range(4)])
    xt = test["images"].reshape(len(test["labels"]), -1).astype(np.float32)
    pred = np.argmin(((xt[:, None] - cent[None]) ** 2).sum(-1), 1)
    assert (pred == test["labels"]).mean() > 0.8


def test_toy_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="share"):
        make_toy_variant(tmp_path / "x.h5", poison_share=1.5)
    with pytest.raises(ValueError, match="larger than"):
        make_toy_variant(tmp_path / "x.h5", trigger="square:40:yellow")
    with pytest.raises(ValueError, match="unknown class"):
        make_toy_variant(tmp_path / "x.h5", target_class=7)


def test_failing_completion_hook_moves_nothing(tmp_path):
    splits, attrs = _tiny_splits()

    def hook(tmp, final):
        assert tmp.is_file() and not final.exists()
        raise OSError("disk full while writing the card")

    with pytest.raises(OSError, match="disk full"):
        with vio.VariantWriter(tmp_path / "v.h5", attrs, on_complete=hook) as w:
            for s in vio.SPLITS:
                w.append(s, splits[s])
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    # Guards the one atomic-write helper every output goes through: a failing writer must leave
    # neither a temporary nor a changed destination.
    dest = tmp_path / "sub" / "out.bin"
    with atomic_open(dest) as fh:
        fh.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(dest) as fh:
            fh.write(b"new")
            raise RuntimeError("writer failed")
    assert dest.read_bytes() == b"old"
    with pytest.raises(RuntimeError):
        with atomic_path(dest, unique=True) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]


def test_json_safe_turns_non_finite_into_null_and_strict_json_refuses_it(tmp_path):
    # Cells committed under results/ hold null for NaN/inf; the shared encoder must keep that.
    obj = {"a": float("inf"), "b": np.float32(0.5), "c": (np.int64(2), float("nan")), 3: np.arange(2)}
    assert json_safe(obj) == {"a": None, "b": 0.5, "c": [2, None], "3": [0, 1]}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"a": float("-inf")})
    assert not (tmp_path / "x.json").exists()
