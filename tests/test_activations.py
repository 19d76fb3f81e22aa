"""Activation extraction: hooked outputs equal a full forward, reductions, memmap spill, class grouping, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _model_helpers import one_thread, toy_variant
from backdoorlab.activations import (channel_means, channel_stats, extract, extract_by_class, image_channel_means,
                                     iter_activations)
from backdoorlab.data import H5Split
from backdoorlab.models import build_model

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = toy_variant(tmp_path_factory.mktemp("acts") / "toy.h5", seed=2)
    ds = H5Split(path, "train", indices=np.arange(0, 240, 3))  # 80 rows, all 4 classes
    model = build_model("gtsrb_cnn", 4, seed=0).eval()
    return model, ds


def _full_forward(model, ds, layer):
    """Reference: hook during a plain full forward pass over all rows at once."""
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    seen = {}
    h = model.layer(layer).register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["out"]


@pytest.mark.parametrize("layer,width", [("penultimate", 512), ("last_conv", 128 * 4 * 4), ("conv2_2", 64 * 13 * 13)])
def test_extract_equals_full_forward(setup, layer, width):
    model, ds = setup
    acts = extract(model, ds, layer, batch_size=32, device="cpu", progress=False)
    ref = _full_forward(model, ds, layer).flatten(1).numpy()
    assert acts.shape == (80, width) and acts.dtype == np.float32
    np.testing.assert_allclose(acts, ref, rtol=1e-5, atol=1e-5)


def test_channel_mean_reduction_and_memmap(setup, tmp_path):
    model, ds = setup
    ref = _full_forward(model, ds, "last_conv").mean(dim=(2, 3)).numpy()
    acts = extract(model, ds, "last_conv", reduce="channel_mean", batch_size=17, device="cpu", progress=False)
    np.testing.assert_allclose(acts, ref, rtol=1e-5, atol=1e-6)
    spilled = extract(model, ds, "last_conv", reduce="channel_mean", batch_size=17, device="cpu",
                      out=tmp_path / "acts.npy", progress=False)
    assert isinstance(spilled, np.memmap)
    np.testing.assert_array_equal(np.asarray(spilled), acts)
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match=r"\.npy"):
        extract(model, ds, "last_conv", out=tmp_path / "acts.bin", progress=False)
    with pytest.raises(ValueError, match="reduce"):
        extract(model, ds, "last_conv", reduce="max", progress=False)
    with pytest.raises(KeyError, match="unknown layer 'fc9'"):
        extract(model, ds, "fc9", progress=False)


def test_extract_by_class_layout(setup, tmp_path):
    model, ds = setup
    flat = extract(model, ds, "penultimate", device="cpu", progress=False)
    X, offsets, order = extract_by_class(model, ds, "penultimate", batch_size=13, device="cpu",
                                         out=tmp_path / "by_class.npy", progress=False)
    np.testing.assert_array_equal(order, np.argsort(ds.labels, kind="stable"))
    np.testing.assert_allclose(np.asarray(X), flat[order], rtol=1e-5, atol=1e-6)  # batch sizes differ
    assert offsets[0] == 0 and offsets[-1] == len(ds) and len(offsets) == 5
    for c in range(4):
        assert (ds.labels[order[offsets[c] : offsets[c + 1]]] == c).all()


def test_iter_stops_at_the_layer(setup):
    model, ds = setup
    calls = []
    h = model.fc2.register_forward_hook(lambda m, i, o: calls.append(1))
    batches = list(iter_activations(model, ds, "last_conv", batch_size=40, device="cpu"))
    h.remove()
    assert not calls  # the layers after the hooked one never ran
    assert [b[0] for b in batches] == [0, 40] and batches[0][1].shape == (40, 128, 4, 4)
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), ds.labels)


def test_channel_means_reference_backend(setup):
    model, ds = setup
    ref = _full_forward(model, ds, "last_conv").double().mean(dim=(0, 2, 3)).numpy()
    means = channel_means(model, ds, "last_conv", backend="reference", batch_size=30, device="cpu", progress=False)
    assert means.shape == (128,)
    np.testing.assert_allclose(means, ref, rtol=1e-5, atol=1e-7)
    per_class = channel_stats(model, ds, "penultimate", by_class=True, backend="reference", device="cpu", progress=False)
    assert np.asarray(per_class["mean"]).shape == (4, 512)
    with pytest.raises(ValueError, match="backend"):
        channel_means(model, ds, backend="gpu")


def test_channel_means_native_matches_reference(setup):
    pytest.importorskip("backdoorlab.native", reason="native core not built")
    model, ds = setup
    native = channel_means(model, ds, "last_conv", backend="native", device="cpu", progress=False)
    ref = channel_means(model, ds, "last_conv", backend="reference", device="cpu", progress=False)
    np.testing.assert_allclose(native, ref, rtol=1e-5, atol=1e-7)


def test_image_channel_means_of_images_in_memory(setup):
    """Images held in memory (e.g. stamped with a reversed trigger) go through the same forward loop."""
    model, ds = setup
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    batches = [x[i:i + 30] for i in range(0, len(ds), 30)]
    ref = _full_forward(model, ds, "last_conv").double().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(image_channel_means(model, batches, "last_conv", device="cpu"), ref, rtol=1e-5, atol=1e-7)
    dense = _full_forward(model, ds, "penultimate").double().mean(dim=0).numpy()
    np.testing.assert_allclose(image_channel_means(model, batches, "penultimate", device="cpu"), dense, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        image_channel_means(model, [], "last_conv", device="cpu")
    with pytest.raises(KeyError):
        image_channel_means(model, batches, "no_such_layer", device="cpu")
