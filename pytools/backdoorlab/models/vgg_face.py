"""VGG16-Face (Parkhi et al., BMVC 2015), the LFW victim model of the paper, and its weight loader.

Thirteen 3x3 'same' ReLU convolutions in five blocks (64, 64 | 128, 128 | 256 x3 | 512 x3 |
512 x3), each block closed by 2x2 max-pooling, then fc6 (25088 -> 4096), fc7 (4096 -> 4096),
both ReLU + dropout 0.5, and fc8 (4096 -> 2622 identities originally; ``n_classes`` here).
Input 224x224 RGB; the network was trained on 0-255 pixels minus the per-channel mean
(R, G, B) = (129.186, 104.762, 93.594) and no scaling, so :meth:`VGG16Face.forward` maps [0, 1]
input to that range itself.

Pre-trained weights are not shipped. The loader reads the widely used converted PyTorch state
dict (``vgg_face_dag.pth`` of S. Albanie's pytorch-mcn model zoo, converted from the Oxford VGG
group's MatConvNet release), whose keys are ``conv1_1.weight/bias ... conv5_3.*``, ``fc6.*``,
``fc7.*``, ``fc8.*`` (fc6 may also be stored as a 4096x512x7x7 convolution; it is reshaped).
The paper re-trains only the last layer on LFW: build with ``weights=...`` and train with
``trainable="last"`` (or call :meth:`VGG16Face.freeze_features`).

Roles: ``second_last_conv`` = ``conv5_2``, ``last_conv`` = ``conv5_3`` (512 ch, 14x14),
``penultimate`` = ``fc7`` (4096).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from backdoorlab.models.base import BackdoorModel, ConvReLU, Dropout, LinearReLU

#: Per-channel RGB mean of the VGG-Face training data on the 0-255 scale.
VGG_FACE_MEAN_RGB: tuple[float, float, float] = (129.186279296875, 104.76238250732422, 93.59396362304688)

#: Environment variable consulted when ``weights="env"``.
WEIGHTS_ENV = "BACKDOORLAB_VGGFACE_WEIGHTS"

WEIGHTS_HELP = (
    "VGG-Face weights are not shipped with backdoorlab. Use the converted PyTorch state dict "
    "'vgg_face_dag.pth' (keys conv1_1 ... conv5_3, fc6, fc7, fc8) from S. Albanie's pytorch-mcn "
    "model zoo (https://www.robots.ox.ac.uk/~albanie/pytorch-models.html), itself converted from "
    "the Oxford VGG group's VGG-Face release (https://www.robots.ox.ac.uk/~vgg/software/vgg_face/; "
    "non-commercial licence). Pass its path as weights=... or set " + WEIGHTS_ENV + "."
)

_CONV_PLAN: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)
_POOL_AFTER = {"conv1_2": "pool1", "conv2_2": "pool2", "conv3_3": "pool3", "conv4_3": "pool4", "conv5_3": "pool5"}


class VGG16Face(BackdoorModel):
    """VGG16-Face; input float32 ``(N, 3, 224, 224)`` in [0, 1], output logits ``(N, n_classes)``."""

    arch = "vgg16_face"
    input_size = (224, 224)
    classifier_name = "fc8"

    def __init__(self, n_classes: int = 2622, *, weights: str | os.PathLike | None = None, freeze: bool = False):
        super().__init__(n_classes)
        if weights is not None:
            _resolve_weights_path(weights)  # fail on a missing file before allocating 138M parameters
        for name, c_in, c_out in _CONV_PLAN:
            self.add_module(name, ConvReLU(c_in, c_out, 3, padding=1))
        # One module per use (pool1..pool5, dropout6/7, the converted model's names), so every
        # module name is one place in the graph.
        for i in range(1, 6):
            self.add_module(f"pool{i}", nn.MaxPool2d(2))
        self.fc6 = LinearReLU(512 * 7 * 7, 4096)
        self.dropout6 = Dropout(0.5)
        self.fc7 = LinearReLU(4096, 4096)
        self.dropout7 = Dropout(0.5)
        self.fc8 = nn.Linear(4096, self.n_classes)
        self.register_buffer("mean_rgb", torch.tensor(VGG_FACE_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1))
        self.roles = {"second_last_conv": "conv5_2", "last_conv": "conv5_3", "penultimate": "fc7"}
        self.spec["freeze"] = bool(freeze)
        if weights is not None:
            load_vgg_face_weights(self, weights)
        if freeze:
            self.freeze_features()

    def freeze_features(self) -> None:
        """Stop gradients to every parameter except fc8 (the paper's LFW setting)."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("fc8."))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x * 255.0 - self.mean_rgb
        for name, _, _ in _CONV_PLAN:
            x = getattr(self, name)(x)
            if name in _POOL_AFTER:
                x = getattr(self, _POOL_AFTER[name])(x)
        x = self.dropout6(self.fc6(torch.flatten(x, 1)))
        x = self.dropout7(self.fc7(x))
        return self.fc8(x)


def _resolve_weights_path(weights: str | os.PathLike) -> Path:
    if isinstance(weights, str) and weights == "env":
        env = os.environ.get(WEIGHTS_ENV)
        if not env:
            raise FileNotFoundError(f"weights='env' but {WEIGHTS_ENV} is not set. {WEIGHTS_HELP}")
        weights = env
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"VGG-Face weights file not found: {str(path)!r}. {WEIGHTS_HELP}")
    return path


def load_vgg_face_weights(model: VGG16Face, weights: str | os.PathLike, *, load_classifier: bool | None = None) -> dict:
    """Load a converted VGG-Face state dict (``conv1_1 ... fc8`` layout) into ``model``.

    Parameters
    ----------
    model : VGG16Face
    weights : path or "env"
        File saved with ``torch.save(state_dict)``; ``"env"`` reads the path from
        ``BACKDOORLAB_VGGFACE_WEIGHTS``. Loaded with ``weights_only=True``.
    load_classifier : bool, optional
        Copy fc8 too. Default: only when the file's fc8 has ``model.n_classes`` outputs (it has
        2622 in the original; for another class count fc8 keeps its fresh initialisation).

    Returns
    -------
    dict
        ``{"path", "loaded": [keys], "skipped": [keys]}``.

    Raises
    ------
    FileNotFoundError
        Missing file; the message says where the weights come from.
    ValueError
        Not a state dict of that layout, or a tensor of the wrong shape (named).
    """
    if not isinstance(model, VGG16Face):
        raise TypeError(f"model must be a VGG16Face, got {type(model).__name__}")
    path = _resolve_weights_path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: say which file and what we expected
        raise ValueError(f"cannot read VGG-Face weights {str(path)!r} as a torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    expected = [n for n, _, _ in _CONV_PLAN] + ["fc6", "fc7", "fc8"]
    missing = [f"{n}.{p}" for n in expected for p in ("weight", "bias") if f"{n}.{p}" not in state]
    if missing:
        raise ValueError(
            f"{str(path)!r} does not have the converted VGG-Face layout: missing keys {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''} (found e.g. {sorted(state)[:6]})"
        )
    fc8_rows = state["fc8.weight"].shape[0]
    if load_classifier is None:
        load_classifier = fc8_rows == model.n_classes
    skipped: list[str] = []
    for name in expected:
        for p in ("weight", "bias"):
            src_key = f"{name}.{p}"
            tensor = state[src_key]
            if name.startswith("conv"):
                dst_key = f"{name}.conv.{p}"
            elif name in ("fc6", "fc7"):
                dst_key = f"{name}.linear.{p}"
                if name == "fc6" and p == "weight" and tensor.dim() == 4:
                    # fc6 stored as a 7x7 convolution: its (out, C, H, W) kernel flattened in
                    # C, H, W order is exactly the Linear weight on torch.flatten(x, 1).
                    tensor = tensor.reshape(tensor.shape[0], -1)
            else:
                dst_key = f"fc8.{p}"
                if not load_classifier:
                    skipped.append(src_key)
                    continue
            if tuple(tensor.shape) != tuple(target[dst_key].shape):
                raise ValueError(
                    f"{str(path)!r}: {src_key} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(target[dst_key].shape)}"
                )
            mapped[dst_key] = tensor.to(target[dst_key].dtype)
    model.load_state_dict(mapped, strict=False)
    model.spec["weights"] = str(path)
    return {"path": str(path), "loaded": sorted(mapped), "skipped": skipped}
