"""HAF: hierarchically aggregated fusion, the project's light real-time network (seed text §4.1–4.2).

Each modality has its own encoder of depthwise-separable convolutions at three scales
(64, 128, 256 channels at full, 1/2 and 1/4 resolution). At every scale two attention gates let
each modality weight its features by where the *other* one has structure; the gated pair is
concatenated, a feature pyramid brings all scales to 64 channels at full resolution, and a small
decoder produces the fused image. The two stride-2 stages need ``H, W`` divisible by 4, so the
input is reflect-padded and the output cropped back.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionGate, DepthwiseSeparableConv, FeaturePyramid, crop_to, pad_to_multiple
from .registry import register_model


class _Encoder(nn.Module):
    """``(B, 1, H, W) -> [(B, w0, H, W), (B, w1, H/2, W/2), (B, w2, H/4, W/4)]``."""

    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        stem = widths[0] // 2
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(1, stem, 3, padding=1, bias=False),
                    nn.BatchNorm2d(stem),
                    nn.ReLU(inplace=True),
                    DepthwiseSeparableConv(stem, widths[0]),
                ),
                DepthwiseSeparableConv(widths[0], widths[1], stride=2),
                DepthwiseSeparableConv(widths[1], widths[2], stride=2),
            ]
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features, current = [], image
        for stage in self.stages:
            current = stage(current)
            features.append(current)
        return features


@register_model(
    "haf",
    description="HAF: light depthwise-separable encoder, cross-modal attention gates, feature pyramid (real-time)",
    learned=True,
    reference="MedFusion seed text, sections 4.1-4.2",
)
class HAFNet(nn.Module):
    """``forward(a, b)``: two ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` in (0, 1).

    Args:
        widths: encoder channels at full, 1/2 and 1/4 resolution.
        pyramid_channels: width of the feature pyramid and decoder input.
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), pyramid_channels: int = 64) -> None:
        super().__init__()
        widths = tuple(widths)
        self.encoder_a = _Encoder(widths)
        self.encoder_b = _Encoder(widths)
        self.gates_a = nn.ModuleList(AttentionGate(w, w, max(w // 4, 8)) for w in widths)
        self.gates_b = nn.ModuleList(AttentionGate(w, w, max(w // 4, 8)) for w in widths)
        self.pyramid = FeaturePyramid([2 * w for w in widths], pyramid_channels)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(pyramid_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, 4)
        b, _ = pad_to_multiple(b, 4)
        scales = []
        for feat_a, feat_b, gate_a, gate_b in zip(self.encoder_a(a), self.encoder_b(b), self.gates_a, self.gates_b):
            scales.append(torch.cat([gate_a(feat_b, feat_a), gate_b(feat_a, feat_b)], dim=1))
        return crop_to(self.decoder(self.pyramid(scales)), size)
