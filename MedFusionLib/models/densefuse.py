"""DenseFuse (Li & Wu, IEEE TIP 28 (2019) 2614–2623).

An auto-encoder trained to *reconstruct single images* (:meth:`DenseFuseNet.reconstruct`); at
inference each source is encoded, the two 64-channel feature maps are merged by a fixed rule
(``addition``, or ``l1``: weights from the locally averaged L1 norm of each map's activity), and
the merged features are decoded. No downsampling, so any ``H, W`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.registry import register_model


def _conv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class _DenseBlock(nn.Module):
    """Three 3×3 layers, each fed the concatenation of the block input and all earlier outputs."""

    def __init__(self, channels: int, growth: int, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_conv_relu(channels + i * growth, growth) for i in range(layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            features = torch.cat([features, layer(features)], dim=1)
        return features


@register_model(
    "densefuse",
    description="DenseFuse: dense-block auto-encoder, features merged by an L1-norm activity rule",
    learned=True,
    reference="Li & Wu, DenseFuse, IEEE TIP 28 (2019) 2614-2623",
)
class DenseFuseNet(FusionNet):
    """``forward(a, b)``: two ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` clamped to [0, 1].

    Args:
        growth: channels of the stem and of each dense layer (feature width is ``4 * growth``).
        fusion_rule: ``"l1"`` (activity-weighted) or ``"addition"``.
    """

    # Eight 3×3 layers plus the 3×3 activity window of the l1 rule: 9 pixels of context make
    # cropped inference equal a whole-slice pass (MedFusionLib.fusion.engine).
    receptive_radius = 9

    def __init__(self, growth: int = 16, fusion_rule: str = "l1") -> None:
        super().__init__()
        if fusion_rule not in ("l1", "addition"):
            raise ValueError(f"fusion_rule must be 'l1' or 'addition', not {fusion_rule!r}")
        self.fusion_rule = fusion_rule
        width = 4 * growth
        self.encoder = nn.Sequential(_conv_relu(1, growth), _DenseBlock(growth, growth))
        self.decoder = nn.Sequential(
            _conv_relu(width, width),
            _conv_relu(width, width // 2),
            _conv_relu(width // 2, width // 4),
            nn.Conv2d(width // 4, 1, 3, padding=1),
        )

    def reconstruct(self, image: torch.Tensor) -> torch.Tensor:
        """Auto-encoder pass used in training: ``(B, 1, H, W) -> (B, 1, H, W)``, unclamped."""
        return self.decoder(self.encoder(image))

    def merge(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Merge two ``(B, C, H, W)`` feature maps by the configured rule."""
        if self.fusion_rule == "addition":
            return features_a + features_b
        # Activity = channel-wise L1 norm, smoothed over a 3×3 window so that single noisy
        # pixels do not flip the choice; weights are the activities' shares (soft selection).
        activity_a = F.avg_pool2d(features_a.abs().sum(1, keepdim=True), 3, stride=1, padding=1,
                                  count_include_pad=False)
        activity_b = F.avg_pool2d(features_b.abs().sum(1, keepdim=True), 3, stride=1, padding=1,
                                  count_include_pad=False)
        weight_a = activity_a / (activity_a + activity_b + 1e-7)
        return weight_a * features_a + (1.0 - weight_a) * features_b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.merge(self.encoder(a), self.encoder(b))).clamp(0.0, 1.0)
