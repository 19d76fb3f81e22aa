"""Victim models: forward shapes, layer roles and names, pruning masks, VGG-Face weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _model_helpers import one_thread
from backdoorlab.models import ROLES, build_model, load_vgg_face_weights

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


# (name, input (H, W), role -> expected output shape without the batch dimension)
SMALL = [
    ("gtsrb_cnn", (32, 32), {"second_last_conv": (128, 6, 6), "last_conv": (128, 4, 4), "penultimate": (512,)}),
    ("deepid", (55, 47), {"second_last_conv": (60, 10, 8), "last_conv": (80, 4, 3), "penultimate": (160,)}),
]


def _outputs_by_role(model, x):
    seen = {}
    handles = [model.layer(r).register_forward_hook(lambda m, i, o, r=r: seen.__setitem__(r, o)) for r in ROLES]
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return logits, seen


@pytest.mark.parametrize("name,size,role_shapes", SMALL)
def test_forward_and_role_shapes(name, size, role_shapes):
    model = build_model(name, 7, seed=0).eval()
    logits, seen = _outputs_by_role(model, torch.rand(3, 3, *size))
    assert logits.shape == (3, 7)
    assert model.input_size == size
    for role, shape in role_shapes.items():
        assert tuple(seen[role].shape[1:]) == shape, role
        assert (seen[role] >= 0).all(), f"{role} must be post-ReLU"


@pytest.fixture(scope="module")
def vgg():
    return build_model("vgg16_face", 5, seed=0).eval()


def test_vgg16_face_forward_one_image(vgg):
    logits, seen = _outputs_by_role(vgg, torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 5)
    assert tuple(seen["last_conv"].shape) == (1, 512, 14, 14)
    assert tuple(seen["second_last_conv"].shape) == (1, 512, 14, 14)
    assert tuple(seen["penultimate"].shape) == (1, 4096)
    assert vgg.layer_name("last_conv") == "conv5_3"


def test_vgg16_face_mean_subtraction(vgg):
    # An image equal to the mean colour must reach conv1_1 as zeros.
    mean = torch.tensor([129.186279296875, 104.76238250732422, 93.59396362304688]) / 255.0
    x = mean.view(1, 3, 1, 1).expand(1, 3, 224, 224).contiguous()
    seen = {}
    h = vgg.conv1_1.conv.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    with torch.no_grad():
        vgg(x)
    h.remove()
    assert seen["inp"].abs().max() < 1e-3


@pytest.mark.parametrize("name,size", [("gtsrb_cnn", (32, 32)), ("deepid", (55, 47))])
def test_every_module_name_is_one_place_in_the_graph(name, size):
    # A module reused in forward (a shared pooling layer) would make a hook on its name ambiguous.
    model = build_model(name, 5).eval()
    calls = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in model.named_modules() if n]
    with torch.no_grad():
        model(torch.rand(2, 3, *size))
    for h in handles:
        h.remove()
    assert calls == {n: 1 for n in model.layer_names()}


def test_layer_lookup_by_name_and_unknown():
    model = build_model("gtsrb_cnn", 43)
    assert model.layer("fc1") is model.layer("penultimate")
    assert model.layer("conv3_2.conv") is model.conv3_2.conv
    with pytest.raises(KeyError, match="roles are .*last_conv.*module names are .*conv1_1"):
        model.layer("conv9")
    with pytest.raises(TypeError):
        model.layer(3)


def test_bad_inputs_named():
    model = build_model("gtsrb_cnn", 43)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*\(2, 3, 55, 47\)"):
        model(torch.rand(2, 3, 55, 47))
    with pytest.raises(TypeError, match="uint8"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", 10)
    with pytest.raises(ValueError, match="n_classes"):
        build_model("deepid", 1)
    with pytest.raises(ValueError, match="dropout_conv"):
        build_model("gtsrb_cnn", 10, dropout_conv=1.5)


def test_seeded_init_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b = build_model("deepid", 10, seed=3), build_model("deepid", 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    c = build_model("deepid", 10, seed=4)
    assert torch.equal(a.conv1.conv.weight, b.conv1.conv.weight)
    assert not torch.equal(a.conv1.conv.weight, c.conv1.conv.weight)


@pytest.mark.parametrize("name,size", [("gtsrb_cnn", (32, 32)), ("deepid", (55, 47))])
def test_per_image_input_norm_standardises_what_the_first_conv_sees(name, size):
    model = build_model(name, 5, seed=0, input_norm="per_image").eval()
    first = model.conv1_1.conv if name == "gtsrb_cnn" else model.conv1.conv
    seen = {}
    h = first.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    x = torch.rand(3, 3, *size) * torch.tensor([0.2, 1.0, 1.0]).view(3, 1, 1, 1)  # dark, full range, (flat)
    x[2] = 0.3  # a flat image: the std floor keeps it finite (all zeros after the shift)
    with torch.no_grad():
        logits = model(x)
    h.remove()
    inp = seen["inp"].flatten(1)
    assert torch.allclose(inp[:2].mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(inp[:2].std(1, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.equal(inp[2], torch.zeros_like(inp[2])) and torch.isfinite(logits).all()
    # Invariant to brightness and contrast (up to rounding), unlike the paper's raw input.
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x[:1] * 4.0 + 0.1), atol=1e-4)
    assert model.spec["input_norm"] == "per_image"
    assert "input_norm" not in build_model(name, 5).spec  # paper models' checkpoints unchanged
    with pytest.raises(ValueError, match="input_norm must be one of .*'global'"):
        build_model(name, 5, input_norm="global")


def test_input_norm_survives_checkpoint(tmp_path):
    from backdoorlab import checkpoint

    model = build_model("gtsrb_cnn", 5, seed=1, input_norm="per_image").eval()
    checkpoint.save(tmp_path / "m.pt", model)
    again, _ = checkpoint.load(tmp_path / "m.pt")
    x = torch.rand(2, 3, 32, 32)
    assert again.input_norm == "per_image"
    with torch.no_grad():
        assert torch.equal(model(x), again.eval()(x))


@pytest.mark.parametrize("name,size", [("gtsrb_cnn", (32, 32)), ("deepid", (55, 47))])
def test_prune_silences_channels_and_survives_state_dict(name, size):
    model = build_model(name, 5, seed=0).eval()
    model.prune("last_conv", np.array([0, 3, 5]))
    _, seen = _outputs_by_role(model, torch.rand(4, 3, *size))
    assert (seen["last_conv"][:, [0, 3, 5]] == 0).all()
    assert (seen["last_conv"][:, [1, 2, 4]] != 0).any()
    other = build_model(name, 5, seed=1)
    other.load_state_dict(model.state_dict())
    assert other.pruned_channels("last_conv").tolist() == [0, 3, 5]
    with pytest.raises(ValueError, match="out of range"):
        model.prune("last_conv", [500])
    with pytest.raises(TypeError, match="cannot be pruned"):
        model.prune("pool1", [0])


def _converted_layout_state(model, *, fc6_as_conv: bool) -> dict:
    """A state dict in the converted vgg_face_dag layout whose values differ from ``model``'s.

    Values are the model's own random initialisation negated and halved (cheaper than drawing
    138M new numbers), stored in half precision to halve the file.
    """
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, module in model.named_children():
        inner = getattr(module, "conv", None) or getattr(module, "linear", None) or module
        if not hasattr(inner, "weight"):
            continue
        w = inner.weight.detach().mul(-0.5).half()
        if name == "fc6" and fc6_as_conv:
            w = w.reshape(4096, 512, 7, 7)
        state[f"{name}.weight"] = w
        state[f"{name}.bias"] = torch.randn(inner.bias.shape, generator=g, dtype=torch.float16)
    state["fc8.weight"] = torch.randn(2622, 4096, generator=g, dtype=torch.float16)
    state["fc8.bias"] = torch.zeros(2622, dtype=torch.float16)
    return state


def test_vgg_face_loader_converted_layout(vgg, tmp_path):
    state = _converted_layout_state(vgg, fc6_as_conv=True)
    path = tmp_path / "vgg_face_dag.pth"
    torch.save(state, path)
    before = vgg.conv2_1.conv.weight.detach().clone()
    info = load_vgg_face_weights(vgg, path)
    assert not torch.equal(vgg.conv2_1.conv.weight, before)
    assert "fc8.weight" in info["skipped"]  # 2622 identities vs 5 classes: fc8 stays fresh
    assert torch.equal(vgg.conv1_1.conv.weight, state["conv1_1.weight"].float())
    assert torch.equal(vgg.conv5_3.conv.bias, state["conv5_3.bias"].float())
    assert torch.equal(vgg.fc6.linear.weight, state["fc6.weight"].float().reshape(4096, -1))
    assert torch.equal(vgg.fc7.linear.weight, state["fc7.weight"].float())
    # wrong layout and wrong shapes are named
    del state["conv3_2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys.*conv3_2.weight"):
        load_vgg_face_weights(vgg, path)


def test_vgg_face_missing_weights_says_where_from(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="vgg_face_dag.pth.*albanie"):
        build_model("vgg16_face", 5, weights=tmp_path / "nope.pth")
    monkeypatch.delenv("BACKDOORLAB_VGGFACE_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="BACKDOORLAB_VGGFACE_WEIGHTS"):
        build_model("vgg16_face", 5, weights="env")


def test_vgg_freeze_features_leaves_only_fc8(vgg):
    vgg.freeze_features()
    trainable = [n for n, p in vgg.named_parameters() if p.requires_grad]
    assert trainable == ["fc8.weight", "fc8.bias"]
