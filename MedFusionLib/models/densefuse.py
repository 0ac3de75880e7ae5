"""DenseFuse (Li & Wu, IEEE TIP 28 (2019) 2614–2623).

An auto-encoder trained to *reconstruct single images* (:meth:`DenseFuseNet.reconstruct`); at
inference each source is encoded, the two 64-channel feature maps are merged by a fixed rule, and
the merged features are decoded. No downsampling, so any ``H, W`` works. Rules:

* ``l1`` (the paper's): weights are each map's share of the 3×3-averaged channel L1 activity;
* ``addition``: the feature maps are summed;
* ``l1_residual`` (the default): weights are the shares of the *squared* activity, and the
  decoder's own reconstruction error of each source is added back with the same weights::

      w = act_a² / (act_a² + act_b²)
      F = D(w E(a) + (1-w) E(b)) + w (a - D(E(a))) + (1-w) (b - D(E(b)))

  equivalently ``F = w a + (1-w) b + [D(merged) - w D(E(a)) - (1-w) D(E(b))]``: the pixel blend
  of the sources plus what merging in feature space adds to it. The auto-encoder is not an exact
  inverse (on Harvard val a reconstruction keeps only ~0.71 of its source's VIF, the error lying in
  smooth PET/SPECT tracer regions and fine MRI texture); decoding merged features alone passes
  that loss on to the fused image, which is why the ``l1`` rule trailed a plain average on VIF for
  PET-MRI. The compensation cancels the error that both paths share, and fusing an image with
  itself returns it exactly. The L1 activity of these ReLU features is nearly proportional to
  intensity (~14 per unit intensity for every modality), so ``l1``'s shares are close to an
  intensity-proportional blend that halves both contrasts wherever the sources are comparable;
  squaring sharpens the choice toward the more active source while staying soft (not a maximum).
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
    description="DenseFuse: dense-block auto-encoder, features merged by L1-norm activity, decoder error compensated",
    learned=True,
    reference="Li & Wu, DenseFuse, IEEE TIP 28 (2019) 2614-2623",
)
class DenseFuseNet(FusionNet):
    """``forward(a, b)``: two ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` clamped to [0, 1].

    Args:
        growth: channels of the stem and of each dense layer (feature width is ``4 * growth``).
        fusion_rule: ``"l1_residual"`` (squared-activity weights, decoder error compensated),
            ``"l1"`` (activity-weighted, as in the paper) or ``"addition"``; see the module docstring.
    """

    FUSION_RULES = ("l1_residual", "l1", "addition")

    # Eight 3×3 layers plus the 3×3 activity window of the l1 rules: 9 pixels of context make
    # cropped inference equal a whole-slice pass (MedFusionLib.fusion.engine). The compensation
    # terms of l1_residual reach less far (reconstructions: 8, weights: 4 + 1).
    receptive_radius = 9

    def __init__(self, growth: int = 16, fusion_rule: str = "l1_residual") -> None:
        super().__init__()
        if fusion_rule not in self.FUSION_RULES:
            choices = ", ".join(map(repr, self.FUSION_RULES))
            raise ValueError(f"fusion_rule must be one of {choices}, not {fusion_rule!r}")
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

    @staticmethod
    def _activity(features: torch.Tensor) -> torch.Tensor:
        """Channel-wise L1 norm, averaged over a 3×3 window so that single noisy pixels do not
        flip the choice: ``(B, C, H, W) -> (B, 1, H, W)``."""
        return F.avg_pool2d(features.abs().sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=False)

    def weights(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Weight of source ``a`` per pixel, ``(B, 1, H, W)`` in [0, 1], for the l1 rules (the
        activities' shares; their squares' shares for ``l1_residual``)."""
        activity_a, activity_b = self._activity(features_a), self._activity(features_b)
        if self.fusion_rule == "l1_residual":
            activity_a, activity_b = activity_a.square(), activity_b.square()
            return activity_a / (activity_a + activity_b + 1e-12)
        return activity_a / (activity_a + activity_b + 1e-7)

    def merge(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Merge two ``(B, C, H, W)`` feature maps by the configured rule."""
        if self.fusion_rule == "addition":
            return features_a + features_b
        weight_a = self.weights(features_a, features_b)
        return weight_a * features_a + (1.0 - weight_a) * features_b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        features_a, features_b = self.encoder(a), self.encoder(b)
        if self.fusion_rule != "l1_residual":
            return self.decoder(self.merge(features_a, features_b)).clamp(0.0, 1.0)
        weight_a = self.weights(features_a, features_b)
        merged = weight_a * features_a + (1.0 - weight_a) * features_b
        # One decoder pass over the merged features and both sources' own features.
        fused, decoded_a, decoded_b = self.decoder(torch.cat([merged, features_a, features_b])).chunk(3)
        fused = fused + weight_a * (a - decoded_a) + (1.0 - weight_a) * (b - decoded_b)
        return fused.clamp(0.0, 1.0)
