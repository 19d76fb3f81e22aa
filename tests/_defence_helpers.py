"""Shared pieces of the defence tests: a tiny prunable CNN and a backdoored model on a toy variant.

The toy variant (``datasets_gen.toy.make_toy_variant``) has a few classes of distinct coloured
shapes and a 4x4 yellow square trigger on a share of the source class, relabelled to the target
class: clearly separable, so a tiny CNN learns both the task and the backdoor in seconds.
:class:`TinyNet` is a real :class:`backdoorlab.models.BackdoorModel` (roles, prunable blocks), so
the defences are exercised through the same interfaces as the paper's models.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backdoorlab.models.base import BackdoorModel, ConvReLU, LinearReLU

IMAGE_SIZE = (16, 16)
N_CLASSES = 4
SOURCE, TARGET = 0, 1
WIDTH = 32  # channels of the last conv (the layer Fine-Pruning prunes by default)
HIDDEN = 64  # width of the penultimate layer (what AC and SS analyse)
LR = 1e-3


class TinyNet(BackdoorModel):
    """conv(3->8) pool conv(8->16) pool fc(256->32) fc(32->k) on 16x16 images."""

    arch = "tiny_test"
    input_size = IMAGE_SIZE
    classifier_name = "fc2"

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__(n_classes)
        self.conv1 = ConvReLU(3, 8, 3, padding=1)
        self.conv2 = ConvReLU(8, WIDTH, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = LinearReLU(WIDTH * 4 * 4, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, n_classes)
        self.roles = {"second_last_conv": "conv1", "last_conv": "conv2", "penultimate": "fc1"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.pool(self.conv2(self.pool(self.conv1(x))))
        return self.fc2(self.fc1(torch.flatten(x, 1)))


def make_variant(path: Path, *, seed: int = 0, n_train_per_class: int = 100, poison_share: float = 0.5,
                 n_clean_per_class: int = 15, group_size: int = 10) -> Path:
    from datasets_gen.toy import make_toy_variant

    return make_toy_variant(path, n_classes=N_CLASSES, n_train_per_class=n_train_per_class, n_test_per_class=20,
                            n_clean_per_class=n_clean_per_class, image_size=IMAGE_SIZE, source_class=SOURCE,
                            target_class=TARGET, poison_share=poison_share, seed=seed, group_size=group_size)


def train_config(epochs: int = 10):
    from backdoorlab.train import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=LR)


def make_context(path: Path, model: nn.Module | None = None, *, epochs: int = 10, seed: int = 1):
    """A DefenceContext on the variant with a (freshly trained, backdoored) TinyNet, trained on one
    thread (:class:`single_thread`)."""
    from backdoorlab.data import H5Split
    from backdoorlab.defences import DefenceContext
    from backdoorlab.train import train_model

    splits = {s: H5Split(path, s) for s in ("train", "clean", "test", "test_triggered")}
    cfg = train_config(epochs)
    if model is None:
        torch.manual_seed(seed)
        with single_thread():
            model = train_model(TinyNet(), splits["train"], cfg, seed=seed, device="cpu", progress=False)
    return DefenceContext(model=model, train=splits["train"], clean=splits["clean"], test=splits["test"],
                          test_triggered=splits["test_triggered"], target_class=TARGET, train_config=cfg,
                          device="cpu", seed=seed)


def fresh(ctx):
    """The same context with a private copy of the model (tests must not share mutations)."""
    return ctx.replace(model=copy.deepcopy(ctx.model))


class single_thread:
    """Run torch on one thread inside the block: on a shared 2-core machine the default
    multi-threaded kernels of such tiny models spend most of their time waiting for each other."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` rows (Mann-Whitney, ties halved)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))
