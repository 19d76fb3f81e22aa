"""Whether a model fits a data-set split: the one check every model-on-data loop runs first.

Training, prediction and activation extraction all take ``(model, split)``; a mismatch (image size,
class count, a label the model cannot output) would otherwise surface as a shape error deep in a
forward pass, or -- for a class count that differs but covers the labels -- as silently wrong
per-class figures. Kept beside the models (not in ``train``) so that evaluation and activations
need not import the trainer for it.
"""

from __future__ import annotations

from backdoorlab.data import H5Split
from backdoorlab.models.base import BackdoorModel


def check_compatible(model: BackdoorModel, dataset: H5Split) -> None:
    """Raise ValueError when the split's image size or labels do not fit the model."""
    if not isinstance(model, BackdoorModel):
        raise TypeError(f"model must be a BackdoorModel, got {type(model).__name__}")
    if not isinstance(dataset, H5Split):
        raise TypeError(f"dataset must be an H5Split, got {type(dataset).__name__}")
    h, w, _ = dataset.image_shape
    if (h, w) != tuple(model.input_size):
        raise ValueError(
            f"{model.arch} expects {model.input_size[0]}x{model.input_size[1]} images, "
            f"but {dataset!r} has {h}x{w}"
        )
    if len(dataset) and int(dataset.labels.max()) >= model.n_classes:
        raise ValueError(
            f"{dataset!r} has label {int(dataset.labels.max())} but the model has {model.n_classes} classes"
        )
    if dataset.n_classes != model.n_classes:
        # Labels below both counts pass the check above, and every per-class figure would then be
        # computed over the wrong classes.
        raise ValueError(f"{dataset!r} has {dataset.n_classes} classes but the {model.arch} model has {model.n_classes}")
