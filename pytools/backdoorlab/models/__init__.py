"""Victim models of the paper, built by name, each answering layer roles for the defences.

``build_model("gtsrb_cnn" | "deepid" | "vgg16_face", n_classes, **kw)`` returns a
:class:`BackdoorModel`; ``model.layer("last_conv" | "second_last_conv" | "penultimate")`` or
``model.layer("<module name>")`` gives the module whose (post-ReLU) output defences hook.
"""

from __future__ import annotations

import torch

from backdoorlab.models.base import INPUT_NORMS, ROLES, BackdoorModel, ConvReLU, LinearReLU, UnknownLayerError
from backdoorlab.models.deepid import DeepID
from backdoorlab.models.gtsrb_cnn import GTSRBCNN
from backdoorlab.models.vgg_face import VGG16Face, load_vgg_face_weights

MODELS: dict[str, type[BackdoorModel]] = {cls.arch: cls for cls in (GTSRBCNN, DeepID, VGG16Face)}


def build_model(name: str, n_classes: int, *, seed: int | None = None, **kw) -> BackdoorModel:
    """Build a victim model by name.

    Parameters
    ----------
    name : {"gtsrb_cnn", "deepid", "vgg16_face"}
    n_classes : int
        Output classes (>= 2).
    seed : int, optional
        Seed for the weight initialisation (the global torch RNG is left untouched), so the
        same seed gives the same initial weights.
    **kw
        Architecture options (e.g. ``weights=`` / ``freeze=`` for ``vgg16_face``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if seed is None:
        return MODELS[name](n_classes, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = MODELS[name](n_classes, **kw)
    model.spec["init_seed"] = int(seed)
    return model


__all__ = [
    "INPUT_NORMS", "ROLES", "BackdoorModel", "ConvReLU", "LinearReLU", "UnknownLayerError", "GTSRBCNN", "DeepID", "VGG16Face",
    "MODELS", "build_model", "load_vgg_face_weights",
]
