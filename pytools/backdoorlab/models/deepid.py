"""DeepID (Sun et al., CVPR 2014) as used for YouTube Aligned Faces by Fine-Pruning and the paper.

Input 55x47 (HxW) RGB, no padding anywhere: conv 20 (4x4) -> 2x2 pool -> conv 40 (3x3) -> pool ->
conv 60 (3x3) -> pool -> conv 80 (2x2). Sizes: 55x47 -> 52x44 -> 26x22 -> 24x20 -> 12x10 ->
10x8 -> 5x4 -> conv4 4x3. Two branches meet in the 160-d DeepID layer: a dense 160 on the
flattened third pooling output (60*5*4 = 1200) plus a dense 160 on the flattened conv4 output
(80*4*3 = 960), summed and passed through ReLU. The output layer is a dense softmax layer over
the identities. ``input_norm="per_image"`` standardises each image first (not the paper's).

Roles: ``second_last_conv`` = ``conv3`` (60 ch), ``last_conv`` = ``conv4`` (80 ch),
``penultimate`` = ``deepid`` (160). ``deepid`` is a :class:`DeepIDLayer` whose channel mask
acts on the 160 summed units, so it can be pruned like any other block.
"""

from __future__ import annotations

import torch
from torch import nn

from backdoorlab.models.base import BackdoorModel, ConvReLU, _MaskedBlock


class DeepIDLayer(_MaskedBlock):
    """``relu(fc_pool3(flatten(pool3)) + fc_conv4(flatten(conv4))) * channel_mask`` -> ``(N, 160)``."""

    def __init__(self, pool3_features: int, conv4_features: int, width: int = 160):
        super().__init__()
        self.fc_pool3 = nn.Linear(pool3_features, width)
        self.fc_conv4 = nn.Linear(conv4_features, width)
        self._init_mask(width)

    def forward(self, pool3: torch.Tensor, conv4: torch.Tensor) -> torch.Tensor:
        y = self.fc_pool3(torch.flatten(pool3, 1)) + self.fc_conv4(torch.flatten(conv4, 1))
        return self._apply_mask(torch.relu(y))


class DeepID(BackdoorModel):
    """DeepID; input float32 ``(N, 3, 55, 47)`` in [0, 1], output logits ``(N, n_classes)``."""

    arch = "deepid"
    input_size = (55, 47)
    classifier_name = "fc"

    def __init__(self, n_classes: int = 1283, *, input_norm: str = "none"):
        super().__init__(n_classes)
        self.set_input_norm(input_norm)
        self.conv1 = ConvReLU(3, 20, 4)
        self.conv2 = ConvReLU(20, 40, 3)
        self.conv3 = ConvReLU(40, 60, 3)
        self.conv4 = ConvReLU(60, 80, 2)
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)  # one module per use
        self.deepid = DeepIDLayer(60 * 5 * 4, 80 * 4 * 3, 160)
        self.fc = nn.Linear(160, self.n_classes)
        self.keras_init()
        self.roles = {"second_last_conv": "conv3", "last_conv": "conv4", "penultimate": "deepid"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.pool1(self.conv1(self.normalise_input(x)))
        x = self.pool2(self.conv2(x))
        pool3 = self.pool3(self.conv3(x))
        conv4 = self.conv4(pool3)
        return self.fc(self.deepid(pool3, conv4))
