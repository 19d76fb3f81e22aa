"""H5Split: schema checks, item conversion, row arrays, subsets, memory fast path, worker safety."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from _model_helpers import one_thread, toy_variant, write_raw_split
from backdoorlab.data import BatchSource, H5Split, open_variant, to_float_chw

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    return toy_variant(tmp_path_factory.mktemp("data") / "toy.h5", seed=1)


def test_items_and_row_arrays_match_file(variant):
    ds = H5Split(variant, "train")
    with h5py.File(variant, "r") as f:
        g = f["train"]
        images, labels = g["images"][()], g["labels"][()]
        np.testing.assert_array_equal(ds.is_poisoned, g["is_poisoned"][()])
        np.testing.assert_array_equal(ds.provenance, g["provenance"][()])
        np.testing.assert_array_equal(ds.original_labels, g["original_labels"][()])
        np.testing.assert_array_equal(ds.index, g["index"][()])
    assert len(ds) == 240 and ds.n_classes == 4 and len(ds.class_names) == 4
    assert ds.attrs["target_class"] == 1 and ds.attrs["source"] == "toy"
    np.testing.assert_array_equal(ds.labels, labels)
    x, y = ds[7]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255.0, images[7], atol=1e-4)
    assert y == labels[7]
    assert ds.is_poisoned.sum() == 30 and (ds.labels[ds.is_poisoned] == 1).all()
    with pytest.raises(IndexError):
        ds[240]


def test_subset_is_relative_and_accepts_masks(variant):
    ds = H5Split(variant, "train", indices=np.arange(10, 50))
    sub = ds.subset([0, 5, 39])
    np.testing.assert_array_equal(sub.rows, [10, 15, 49])
    np.testing.assert_array_equal(sub.labels, ds.labels[[0, 5, 39]])
    torch.testing.assert_close(sub[1][0], ds[5][0])
    mask = np.zeros(len(ds), bool)
    mask[[2, 3]] = True
    np.testing.assert_array_equal(ds.subset(mask).rows, [12, 13])
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([40])
    with pytest.raises(ValueError, match="boolean mask"):
        ds.subset(np.ones(3, bool))
    with pytest.raises(ValueError, match="integer"):
        ds.subset([0.5])


def test_load_images_and_memory_bound(variant):
    ds = H5Split(variant, "train", indices=[200, 3, 3, 150])
    imgs = ds.load_images()
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 32, 32, 3)
    for i in range(4):
        torch.testing.assert_close(to_float_chw(imgs[i : i + 1])[0], ds[i][0])
    with pytest.raises(MemoryError, match="DataLoader"):
        ds.load_images(max_bytes=100)


def test_memory_and_stream_feeds_give_identical_batches(variant):
    ds = H5Split(variant, "test")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    mem = BatchSource(ds, torch.device("cpu"), in_memory=True)
    stream = BatchSource(ds, torch.device("cpu"), in_memory=False)
    assert (mem.mode, stream.mode) == ("memory", "stream")
    for (xa, ya), (xb, yb) in zip(mem.batches(16, order), stream.batches(16, order), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert BatchSource(ds, torch.device("cpu"), max_bytes=10).mode == "stream"
    with pytest.raises(MemoryError):
        BatchSource(ds, torch.device("cpu"), in_memory=True, max_bytes=10)


def test_workers_open_their_own_handle(variant):
    ds = H5Split(variant, "test")
    ds[0]  # open a handle in this process: it must not travel to the workers
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    loader = torch.utils.data.DataLoader(ds, batch_size=20, num_workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape == (80, 3, 32, 32)
    torch.testing.assert_close(xs[33], ds[33][0])


def test_open_variant_lists_present_splits(variant):
    splits = open_variant(variant)
    assert sorted(splits) == ["clean", "test", "test_triggered", "train"]
    assert len(splits["test_triggered"]) == 20 and splits["test_triggered"].is_poisoned.all()


def test_bad_files_and_splits_are_named(variant, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        H5Split(tmp_path / "nope.h5", "train")
    with pytest.raises(KeyError, match="'valid'.*clean"):
        H5Split(variant, "valid")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        H5Split(text, "train")
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, 3\\)"):
        H5Split(write_raw_split(tmp_path / "f.h5", dtype=np.float32), "train")
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, 3\\)"):
        H5Split(write_raw_split(tmp_path / "g.h5", shape=(32, 32)), "train")
    with pytest.raises(ValueError, match="lacks the 'labels'"):
        H5Split(write_raw_split(tmp_path / "h.h5", fields=()), "train")
    with pytest.raises(ValueError, match="labels outside"):
        H5Split(write_raw_split(tmp_path / "i.h5", n_classes=2), "train")
    with pytest.raises(ValueError, match="out of range"):
        H5Split(variant, "test", indices=[80])
    # a minimal foreign file (only images + labels) still loads, with neutral row arrays
    ds = H5Split(write_raw_split(tmp_path / "j.h5"), "train")
    assert not ds.is_poisoned.any() and ds.n_classes == 3
    np.testing.assert_array_equal(ds.index, np.arange(6))
