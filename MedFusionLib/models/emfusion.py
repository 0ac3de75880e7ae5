"""EMFusion's fusion network (Xu & Ma, Information Fusion 76 (2021) 177–186).

A seven-layer CNN on the two sources stacked as channels: four densely connected 3×3 layers
(each sees the input and every earlier layer's output, so low-level intensity and edge cues
reach the end unchanged), then three layers that narrow to one channel. No downsampling, so any
``H, W`` works without padding. Two sizes are registered: ``emfusion`` (light, 16-channel
layers, fast on two CPU cores) and ``emfusion-full`` (the published 44-channel width). It is
trained unsupervised with the surface-level constraint
(saliency-weighted SSIM and MSE towards each source) plus a gradient loss
(:mod:`MedFusionLib.training.losses`).
"""

from __future__ import annotations

import torch
from torch import nn

from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.registry import register_model


@register_model(
    "emfusion",
    description="EMFusion, light (CPU default): dense 7-layer CNN, 16-channel layers, saliency-weighted SSIM/MSE "
    "and gradient losses",
    learned=True,
    reference="Xu & Ma, EMFusion, Information Fusion 76 (2021) 177-186",
)
class EMFusionNet(FusionNet):
    """``forward(a, b)``: two ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` in (0, 1).

    Args:
        growth: channels added by each dense layer.
        dense_layers: number of densely connected layers (the remaining three narrow the width).
    """

    def __init__(self, growth: int = 16, dense_layers: int = 4) -> None:
        super().__init__()
        self.dense = nn.ModuleList()
        channels = 2
        for _ in range(dense_layers):
            self.dense.append(nn.Sequential(nn.Conv2d(channels, growth, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)))
            channels += growth
        self.head = nn.Sequential(
            nn.Conv2d(channels, 2 * growth, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * growth, growth, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(growth, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    @property
    def receptive_radius(self) -> int:
        """One pixel of reach per 3×3 layer: the dense layers and the three of the head."""
        return len(self.dense) + 3

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        features = torch.cat([a, b], dim=1)
        if self.dense[0][0].weight.is_contiguous(memory_format=torch.channels_last):
            # Prepared for channels-last inference: the concatenation of two one-channel inputs
            # comes out NCHW, and every convolution would copy it back.
            features = features.contiguous(memory_format=torch.channels_last)
        for layer in self.dense:
            features = torch.cat([features, layer(features)], dim=1)
        return self.head(features)


@register_model(
    "emfusion-full",
    description="EMFusion, full size: the light network's layout at the published width (44-channel dense layers)",
    learned=True,
    reference="Xu & Ma, EMFusion, Information Fusion 76 (2021) 177-186",
)
class EMFusionFullNet(EMFusionNet):
    """EMFusion at the published width: the same layers as :class:`EMFusionNet`, 44 channels each.

    About 7× the light network's parameters and arithmetic; the choice on CUDA, where that costs
    next to nothing (README, "Choosing a model").
    """

    def __init__(self, growth: int = 44, dense_layers: int = 4) -> None:
        super().__init__(growth=growth, dense_layers=dense_layers)
