"""The GTSRB traffic-sign CNN of Neural Cleanse (Wang et al., S&P 2019), used by the paper for GTSRB.

Three blocks of two 3x3 ReLU convolutions (32, 32 | 64, 64 | 128, 128); the first conv of each
block keeps the size ('same' padding), the second shrinks it by 2 ('valid'); each block ends in
2x2 max-pooling and dropout 0.2. Then a dense layer of 512 (ReLU, dropout 0.5) and the dense
output layer. For a 32x32 input the maps go 32 -> 30 -> 15 -> 13 -> 6 -> 4 -> 2, so the dense
layer sees 128 * 2 * 2 = 512 features.

Roles: ``second_last_conv`` = ``conv3_1``, ``last_conv`` = ``conv3_2`` (128 channels, 4x4),
``penultimate`` = ``fc1`` (512). Input is taken as is in [0, 1] (Neural Cleanse feeds raw
scaled pixels; no mean subtraction); ``input_norm="per_image"`` standardises each image first
(not the paper's; see :data:`backdoorlab.models.base.INPUT_NORMS`).
"""

from __future__ import annotations

import torch
from torch import nn

from backdoorlab.models.base import BackdoorModel, ConvReLU, Dropout, LinearReLU


class GTSRBCNN(BackdoorModel):
    """Neural Cleanse's GTSRB CNN; input float32 ``(N, 3, 32, 32)`` in [0, 1], output logits ``(N, n_classes)``."""

    arch = "gtsrb_cnn"
    input_size = (32, 32)
    classifier_name = "fc2"

    def __init__(self, n_classes: int = 43, *, dropout_conv: float = 0.2, dropout_fc: float = 0.5,
                 input_norm: str = "none"):
        super().__init__(n_classes)
        self.set_input_norm(input_norm)
        for name, p in (("dropout_conv", dropout_conv), ("dropout_fc", dropout_fc)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        self.spec.update(dropout_conv=float(dropout_conv), dropout_fc=float(dropout_fc))
        self.conv1_1 = ConvReLU(3, 32, 3, padding=1)
        self.conv1_2 = ConvReLU(32, 32, 3)
        self.conv2_1 = ConvReLU(32, 64, 3, padding=1)
        self.conv2_2 = ConvReLU(64, 64, 3)
        self.conv3_1 = ConvReLU(64, 128, 3, padding=1)
        self.conv3_2 = ConvReLU(128, 128, 3)
        # One module per use (no shared pooling/dropout), so every module name is one place in
        # the graph and a hook on e.g. "pool2" sees exactly one output per forward pass.
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        # Layout-independent dropout: the same mask for a channels-last batch (see Dropout).
        self.drop1, self.drop2, self.drop3 = Dropout(dropout_conv), Dropout(dropout_conv), Dropout(dropout_conv)
        self.fc1 = LinearReLU(128 * 2 * 2, 512)
        self.drop_fc = Dropout(dropout_fc)
        self.fc2 = nn.Linear(512, self.n_classes)
        self.keras_init()
        self.roles = {"second_last_conv": "conv3_1", "last_conv": "conv3_2", "penultimate": "fc1"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.normalise_input(x)
        x = self.drop1(self.pool1(self.conv1_2(self.conv1_1(x))))
        x = self.drop2(self.pool2(self.conv2_2(self.conv2_1(x))))
        x = self.drop3(self.pool3(self.conv3_2(self.conv3_1(x))))
        x = self.drop_fc(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
