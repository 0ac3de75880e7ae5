"""Building blocks shared by the learned fusion networks.

All blocks are fully convolutional and keep the spatial size of their input (3×3 convolutions with
padding 1), so the networks that use them accept any height and width; the networks that
downsample pad their input themselves (:func:`pad_to_multiple`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by batch normalisation and ReLU.

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(nn.Sequential):
    """A 3×3 depthwise convolution then a 1×1 pointwise one, with BN and ReLU.

    About ``9 / out_channels + 1 / 9`` of the multiply-adds of a full 3×3 convolution, which is
    what makes HAF light enough for interactive use.
    ``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): a gating signal ``g`` re-weights features ``x``.

    ``alpha = sigmoid(psi(relu(W_g g + W_x x)))`` with ``alpha`` of shape ``(B, 1, H, W)`` in
    (0, 1); returns ``x * alpha``. ``g`` and ``x`` have the same spatial size; in HAF ``g`` comes
    from the other modality, so each modality attends to where the other has structure.
    """

    def __init__(self, gate_channels: int, feature_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.w_x = nn.Sequential(nn.Conv2d(feature_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha


class FeaturePyramid(nn.Module):
    """Top-down feature pyramid: 1×1 lateral convs to a common width, upsample, sum.

    Takes features from fine to coarse, ``[(B, C_i, H / 2**i, W / 2**i)]``, and returns the
    fine-resolution sum ``(B, out_channels, H, W)``, so coarse context reaches every pixel.
    There is no 3×3 smoothing convolution after the sum (as in detection FPNs): at full
    resolution it cost more than the whole encoder, and the decoder's own 3×3 layer smooths.
    """

    def __init__(self, in_channels: list[int] | tuple[int, ...], out_channels: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        return merged


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``(B, C, H, W)`` on the bottom/right so H and W are multiples of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`. Reflection (not
    zeros) so that the network sees no artificial edge at the border; images smaller than the
    padding fall back to replication, which reflection cannot do.
    """
    height, width = images.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
    return images, (height, width)


def crop_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left ``size = (H, W)``."""
    return images[..., : size[0], : size[1]]
