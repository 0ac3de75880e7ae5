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
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels))
        self.w_x = nn.Sequential(nn.Conv2d(feature_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha


class CrossAttentionGatePair(nn.Module):
    """HAF's two cross-modal gates at one scale, evaluated together (an inference form).

    ``gate_a(g=feat_b, x=feat_a)`` and ``gate_b(g=feat_a, x=feat_b)`` read the same two feature
    maps, so their four 1×1 projections are one 1×1 convolution over ``cat(feat_a, feat_b)`` and
    their two ψ convolutions one grouped convolution: the same function up to float rounding,
    in fewer and larger kernels, which run faster. Built from
    eval-mode gates whose BatchNorms are already folded into their projections.
    ``forward(feat_a, feat_b)``: two ``(B, w, H, W)`` -> ``cat(feat_a * α_a, feat_b * α_b)``,
    ``(B, 2w, H, W)``.
    """

    def __init__(self, gate_a: AttentionGate, gate_b: AttentionGate) -> None:
        super().__init__()
        project = {name: self._folded_conv(getattr(gate, part)) for name, gate, part in (
            ("g_a", gate_a, "w_g"), ("x_a", gate_a, "w_x"), ("g_b", gate_b, "w_g"), ("x_b", gate_b, "w_x"))}
        inter, width = project["x_a"].out_channels, project["x_a"].in_channels
        self.project = nn.Conv2d(2 * width, 2 * inter, 1)
        self.psi = nn.Conv2d(2 * inter, 2, 1, groups=2)
        with torch.no_grad():
            weight = torch.zeros_like(self.project.weight)
            weight[:inter, :width] = project["x_a"].weight  # gate a: x = feat_a, g = feat_b
            weight[:inter, width:] = project["g_a"].weight
            weight[inter:, :width] = project["g_b"].weight  # gate b: g = feat_a, x = feat_b
            weight[inter:, width:] = project["x_b"].weight
            self.project.weight.copy_(weight)
            self.project.bias.copy_(torch.cat([project["x_a"].bias + project["g_a"].bias,
                                               project["g_b"].bias + project["x_b"].bias]))
            self.psi.weight.copy_(torch.cat([gate_a.psi[0].weight, gate_b.psi[0].weight]))
            self.psi.bias.copy_(torch.cat([gate_a.psi[0].bias, gate_b.psi[0].bias]))

    @staticmethod
    def _folded_conv(projection: nn.Sequential) -> nn.Conv2d:
        conv, rest = projection[0], list(projection)[1:]
        if conv.bias is None or any(not isinstance(layer, nn.Identity) for layer in rest):
            raise ValueError("fold the gates' BatchNorms (models.optimize.fold_batch_norms) before merging them")
        return conv

    def forward(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.project(torch.cat([feat_a, feat_b], dim=1)))))
        return torch.cat([feat_a * alpha[:, :1], feat_b * alpha[:, 1:]], dim=1)


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
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:], mode="bilinear",
                                                      align_corners=False)
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
