"""Training-free fusion rules: for comparison, and as a fallback that needs no weights.

Each is a parameter-free :class:`~MedFusionLib.models.base.FusionNet`:
``forward(a, b)`` on ``(B, 1, H, W)`` float32 in [0, 1] returns ``(B, 1, H, W)`` in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.registry import register_model


@register_model("average", description="Pixel-wise mean of the two sources (training-free)", learned=False)
class AverageFusion(FusionNet):
    receptive_radius = 0  # pixel-wise

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) * 0.5


@register_model("maximum", description="Pixel-wise maximum of the two sources (training-free)", learned=False)
class MaximumFusion(FusionNet):
    receptive_radius = 0  # pixel-wise

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)


@register_model(
    "laplacian",
    description="Laplacian pyramid: strongest detail per pixel and scale, averaged base (training-free)",
    learned=False,
    reference="Burt & Adelson, IEEE Trans. Commun. 31 (1983); Toet, Pattern Recognit. Lett. 9 (1989)",
)
class LaplacianPyramidFusion(FusionNet):
    """Laplacian-pyramid fusion.

    Both sources are decomposed into ``levels`` band-pass layers plus a low-pass residual; at every
    band-pass layer the coefficient with the larger local activity (mean magnitude over a 3×3
    window) wins, i.e. the sharper structure, the residuals are
    averaged (overall brightness from both), and the pyramid is collapsed. The decomposition is
    exactly invertible, so fusing an image with itself returns it unchanged. The number of
    levels depends on the slice size, so the output has no bounded receptive radius (whole slices).
    """

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # binomial approximation of a Gaussian
        self.register_buffer("kernel", torch.outer(taps, taps)[None, None], persistent=False)
        self.levels = levels

    @property
    def min_traced_size(self) -> int:
        """From this slice side up, every level of the pyramid is built, so the structure no longer
        depends on the size (what an exported, traced graph needs: :mod:`~MedFusionLib.models.onnx_export`)."""
        return 2 ** (self.levels + 2)

    def _blur(self, images: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(images.shape[-2:]) > 2 else "replicate"
        return F.conv2d(F.pad(images, (2, 2, 2, 2), mode=mode), self.kernel.to(images.dtype))

    def _decompose(self, images: torch.Tensor, levels: int) -> list[torch.Tensor]:
        bands, current = [], images
        for _ in range(levels):
            smaller = self._blur(current)[..., ::2, ::2]
            expanded = F.interpolate(smaller, size=current.shape[-2:], mode="bilinear", align_corners=False)
            bands.append(current - expanded)
            current = smaller
        bands.append(current)
        return bands

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Stop before a level gets smaller than the 5-tap kernel's support.
        levels = max(0, min(self.levels, int(math.log2(max(min(a.shape[-2:]), 1))) - 2))
        bands_a, bands_b = self._decompose(a, levels), self._decompose(b, levels)
        fused = (bands_a[-1] + bands_b[-1]) * 0.5
        for band_a, band_b in zip(reversed(bands_a[:-1]), reversed(bands_b[:-1])):
            # Activity is |coefficient| averaged over a 3×3 window, not per pixel: an isolated
            # noise spike then cannot flip the choice, so the selection map is coherent within a
            # slice and changes less from one slice to the next.
            activity_a = F.avg_pool2d(band_a.abs(), 3, stride=1, padding=1, count_include_pad=False)
            activity_b = F.avg_pool2d(band_b.abs(), 3, stride=1, padding=1, count_include_pad=False)
            detail = torch.where(activity_a >= activity_b, band_a, band_b)
            fused = detail + F.interpolate(fused, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        return fused.clamp(0.0, 1.0)
