"""HAF: hierarchically aggregated fusion, the project's real-time network, light and full size (seed text §4.1–4.2).

Each modality has its own encoder of depthwise-separable convolutions at three scales (the
seed's 64, 128, 256 channels in ``haf-full``; 16, 32, 64 in the light ``haf``) at full, 1/2 and 1/4
resolution. At every scale two attention gates let each modality weight its features by where
the *other* one has structure; the gated pair is concatenated, a feature pyramid (1×1 lateral
convolutions, upsample, sum) brings all scales to one width at full resolution, and a
depthwise-separable decoder produces the fused image. Everything at full resolution is 1×1 or
depthwise, which is what keeps HAF fast on a CPU. The two stride-2 stages need ``H, W``
divisible by 4, so the input is reflect-padded and the output cropped back.
"""

from __future__ import annotations

import torch
from torch import nn

from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.blocks import (
    AttentionGate,
    CrossAttentionGatePair,
    DepthwiseSeparableConv,
    FeaturePyramid,
    crop_to,
    pad_to_multiple,
)
from MedFusionLib.models.registry import register_model


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
    description="HAF, light (16/32/64 encoder, 16-channel pyramid): depthwise-separable encoder, cross-modal "
    "attention gates, feature pyramid (real-time)",
    learned=True,
    reference="MedFusion seed text, sections 4.1-4.2",
)
class HAFNet(FusionNet):
    """``forward(a, b)``: two ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` in (0, 1).

    Args:
        widths: encoder channels at full, 1/2 and 1/4 resolution.
        pyramid_channels: width of the feature pyramid (the decoder's input).
        decoder_channels: width of the decoder's depthwise-separable layer.
    """

    # Inference with cropped slices (MedFusionLib.fusion.engine) keeps outputs identical to a
    # whole-slice pass when the crop has this much context on every side and starts on the
    # stride-4 grid. Receptive radius: stem 1 + full-res depthwise 1 + stride-2 depthwise 1
    # + stride-4 depthwise 2 + two bilinear upsamplings 4 + 2 + decoder depthwise 1 = 12 px.
    receptive_radius = 12
    size_multiple = 4
    # Input windows rounded to 8 pixels: HAF's many small convolutions are slower on always-new
    # shapes (oneDNN builds kernels per shape); 8 was the fastest step in `medfusion benchmark`.
    window_step = 8

    def __init__(
        self,
        widths: tuple[int, int, int] = (16, 32, 64),
        pyramid_channels: int = 16,
        decoder_channels: int = 16,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        self.encoder_a = _Encoder(widths)
        self.encoder_b = _Encoder(widths)
        self.gates_a = nn.ModuleList(AttentionGate(w, w, max(w // 4, 8)) for w in widths)
        self.gates_b = nn.ModuleList(AttentionGate(w, w, max(w // 4, 8)) for w in widths)
        self.gate_pairs: nn.ModuleList | None = None  # set by fuse_for_inference
        self.pyramid = FeaturePyramid([2 * w for w in widths], pyramid_channels)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True),
            DepthwiseSeparableConv(pyramid_channels, decoder_channels),
            nn.Conv2d(decoder_channels, 1, 1),
            nn.Sigmoid(),
        )

    def fuse_for_inference(self) -> None:
        """Evaluate each scale's two gates as one :class:`CrossAttentionGatePair` from now on.

        Call on an eval-mode copy whose BatchNorms are folded
        (:func:`~MedFusionLib.models.optimize.prepare_for_inference` does both); not for training.
        """
        self.gate_pairs = nn.ModuleList(CrossAttentionGatePair(a, b) for a, b in zip(self.gates_a, self.gates_b))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, self.size_multiple)
        b, _ = pad_to_multiple(b, self.size_multiple)
        scales = []
        for index, (feat_a, feat_b) in enumerate(zip(self.encoder_a(a), self.encoder_b(b))):
            if self.gate_pairs is not None:
                scales.append(self.gate_pairs[index](feat_a, feat_b))
            else:
                gate_a, gate_b = self.gates_a[index], self.gates_b[index]
                scales.append(torch.cat([gate_a(feat_b, feat_a), gate_b(feat_a, feat_b)], dim=1))
        return crop_to(self.decoder(self.pyramid(scales)), size)


@register_model(
    "haf-full",
    description="HAF, full size (the seed's 64/128/256 encoder, 64-channel pyramid and decoder)",
    learned=True,
    reference="MedFusion seed text, sections 4.1-4.2",
)
class HAFFullNet(HAFNet):
    """HAF at the seed's widths: encoder 64/128/256 channels, 64-channel pyramid and decoder."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 128, 256),
        pyramid_channels: int = 64,
        decoder_channels: int = 64,
    ) -> None:
        super().__init__(widths=widths, pyramid_channels=pyramid_channels, decoder_channels=decoder_channels)
