"""Training losses of the learned fusion models, as differentiable torch functions.

Every image argument is a ``(B, 1, H, W)`` float tensor in [0, 1] (``H, W >= 11`` for SSIM);
every loss returns a scalar tensor (mean over the batch). Loss weights are configuration
(:class:`FusionLossWeights`), so that a user can shift the balance, e.g. towards bone (CT) or
soft tissue (MRI) with ``source_bias``.

* :func:`ssim` / :func:`ssim_map`: SSIM with an 11 × 11 Gaussian window (σ = 1.5, K1 = 0.01,
  K2 = 0.03, L = 1), the convention of Wang et al. (2004) used by fusion papers' losses.
* :func:`saliency_weights`: EMFusion's per-image information measure of each source (entropy and
  brightness), turned into two weights that sum to one.
* :func:`gradient_loss`: the seed's ``L1(|∇F|, max(|∇A|, |∇B|))``, both directions (Sobel).
* :func:`pixel_vif`: differentiable pixel-domain VIF (Sheikh & Bovik 2006), the evaluation's VIF
  on the 8-bit scale; a loss term keeps the functional sources' information where an
  equal-weight SSIM term alone would trade it away.
* :class:`FusionLoss`: EMFusion's surface-level constraint (saliency-weighted SSIM and MSE
  towards each source) + gradient loss + optional pixel-wise maximum-intensity and VIF terms;
  used for EMFusion and HAF.
* :class:`ReconstructionLoss`: DenseFuse's auto-encoder loss ``MSE + λ (1 - SSIM)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.settings import reject_unknown_settings

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
HISTOGRAM_BINS = 256


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian ``(size,)``."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    window = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return window / window.sum()


def _separable_filter(image: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of ``(B, C, H, W)`` with ``window ⊗ window``, 'valid' mode."""
    channels = image.shape[1]
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(image, horizontal, groups=channels), vertical, groups=channels)


def _full_precision(tensor: torch.Tensor) -> torch.autocast:
    """A context that switches autocast off on ``tensor``'s device: under autocast a convolution
    runs in bf16/fp16 whatever its inputs' dtype, and the variances below need float32."""
    return torch.autocast(tensor.device.type, enabled=False)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Local SSIM of ``x`` and ``y`` (``(B, C, H, W)``): ``(B, C, H - 10, W - 10)``.

    11 × 11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, computed in float32 even under
    autocast (the variance differences lose too much precision in bf16 or fp16).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(f"SSIM needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise InputError(
            f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}"
        )
    with _full_precision(x):
        x, y = x.float(), y.float()
        window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)
        mu_x, mu_y = _separable_filter(x, window), _separable_filter(y, window)
        var_x = _separable_filter(x * x, window) - mu_x * mu_x
        var_y = _separable_filter(y * y, window) - mu_y * mu_y
        cov_xy = _separable_filter(x * y, window) - mu_x * mu_y
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image mean SSIM: ``(B,)`` in [-1, 1]."""
    return ssim_map(x, y, data_range).flatten(1).mean(dim=1)


def image_entropy(images: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Shannon entropy in bits of each image's ``bins``-level histogram: ``(B,)`` in [0, log2(bins)].

    Not differentiable (a histogram); used on the sources only, to weight the loss.
    """
    levels = (images.detach().float().clamp(0, 1) * (bins - 1)).round().long().flatten(1)
    counts = torch.zeros(levels.shape[0], bins, device=images.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float32)
    )
    p = counts / levels.shape[1]
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(dim=1)


def saliency_weights(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    entropy_weight: float = 1.0,
    brightness_weight: float = 1.0,
    temperature: float = 0.1,
    source_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMFusion's per-image weights of the two sources: two ``(B, 1, 1, 1)`` tensors summing to one.

    The information of a source image is ``entropy_weight · EN / 8 + brightness_weight · mean``
    (EN in bits on 256 levels, so both terms are in [0, 1]); the weights are a softmax of the two
    informations divided by ``temperature`` (small: the richer source dominates; large: equal
    weights). ``source_bias`` is added to A's information before the softmax (positive: favour A,
    e.g. MRI soft tissue; negative: favour B, e.g. CT bone).
    """
    if temperature <= 0:
        raise InputError(f"saliency temperature must be > 0, got {temperature}")

    def information(image: torch.Tensor) -> torch.Tensor:
        brightness = image.detach().float().flatten(1).mean(dim=1)
        return entropy_weight * image_entropy(image) / math.log2(HISTOGRAM_BINS) + brightness_weight * brightness

    logits = torch.stack([information(a) + source_bias, information(b)], dim=1) / temperature
    weights = torch.softmax(logits, dim=1).view(-1, 2, 1, 1, 1)
    return weights[:, 0], weights[:, 1]


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """``|∇I| = |G_x| + |G_y|`` with 3 × 3 Sobel kernels, replicate padding: ``(B, 1, H, W)``."""
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device)
    kernels = torch.stack([kernel_x, kernel_x.t()]).unsqueeze(1).to(images.dtype)
    gradients = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients.abs().sum(dim=1, keepdim=True)


def gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The seed's gradient loss ``L1(|∇F|, max(|∇A|, |∇B|))``: keep the strongest edge of either source."""
    target = torch.maximum(sobel_magnitude(a), sobel_magnitude(b))
    return F.l1_loss(sobel_magnitude(fused), target)


VIF_SCALES = 4
VIF_NOISE_VARIANCE = 2.0  # on the 8-bit scale, as in the evaluation metric
VIF_EPS = 1e-10


def pixel_vif(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    """Pixel-domain VIF of ``distorted`` against ``reference`` (``(B, 1, H, W)`` in [0, 1]): ``(B,)``.

    The same four scales, Gaussian windows (17, 9, 5, 3 px; σ = size / 5), 'valid' filtering,
    dyadic down-sampling and noise variance 2 on the 8-bit scale as
    :func:`MedFusionLib.evaluation.metrics.visual_information_fidelity`, so that on unquantised
    images the two agree. The metric's clipping of negative gains and tiny variances is kept, as
    clamps (sub-gradients), so the term is differentiable in ``distorted``. ~1 for an identical
    image, < 1 for a loss of information, > 1 for contrast gain; 1 for a flat reference.
    Needs ``H, W >= 41``.
    """
    if reference.shape != distorted.shape or reference.dim() != 4:
        shapes = f"{tuple(reference.shape)} and {tuple(distorted.shape)}"
        raise InputError(f"VIF needs two (B, C, H, W) tensors of one shape, got {shapes}")
    if min(reference.shape[-2:]) < 41:
        raise InputError(f"VIF needs images of at least 41 x 41 pixels, got {tuple(reference.shape[-2:])}")
    with _full_precision(reference):
        return _pixel_vif_float32(reference.float() * 255.0, distorted.float() * 255.0)


def _pixel_vif_float32(ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """:func:`pixel_vif` of float32 images on the 8-bit scale (autocast off)."""
    numerator = torch.zeros(ref.shape[0], device=ref.device)
    denominator = torch.zeros_like(numerator)
    for scale in range(1, VIF_SCALES + 1):
        size = 2 ** (VIF_SCALES - scale + 1) + 1
        window = _gaussian_window(size, size / 5.0, ref.dtype, ref.device)
        if scale > 1:
            ref = _separable_filter(ref, window)[..., ::2, ::2]
            dist = _separable_filter(dist, window)[..., ::2, ::2]
        mu_ref, mu_dist = _separable_filter(ref, window), _separable_filter(dist, window)
        var_ref = (_separable_filter(ref * ref, window) - mu_ref * mu_ref).clamp_min(0.0)
        var_dist = (_separable_filter(dist * dist, window) - mu_dist * mu_dist).clamp_min(0.0)
        covariance = _separable_filter(ref * dist, window) - mu_ref * mu_dist
        informative = (var_ref >= VIF_EPS).to(ref.dtype)  # a flat reference carries no information
        var_ref = var_ref * informative
        gain = covariance.clamp_min(0.0) / (var_ref + VIF_EPS) * informative
        residual = (var_dist - gain * covariance).clamp_min(VIF_EPS)
        kept = torch.log10(1.0 + gain * gain * var_ref / (residual + VIF_NOISE_VARIANCE))
        numerator = numerator + kept.flatten(1).sum(dim=1)
        denominator = denominator + torch.log10(1.0 + var_ref / VIF_NOISE_VARIANCE).flatten(1).sum(dim=1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(VIF_EPS), torch.ones_like(numerator))


@dataclass
class FusionLossWeights:
    """Weights of :class:`FusionLoss` (configuration: ``loss`` in a training config).

    ``ssim``/``mse``: the surface-level constraint's SSIM and MSE terms, each a saliency-weighted
    sum over the two sources. ``gradient``: :func:`gradient_loss`. ``intensity_max``: L1 to the
    pixel-wise maximum of the sources (keeps bright structures of either: bone, tracer uptake).
    ``vif``: ``1 - (VIF(A→F) + VIF(B→F)) / 2`` with :func:`pixel_vif` (0: off; needs crops of at
    least 41 px). ``entropy_weight``, ``brightness_weight``, ``temperature``, ``source_bias``: see
    :func:`saliency_weights`.
    """

    ssim: float = 1.0
    mse: float = 1.0
    gradient: float = 1.0
    intensity_max: float = 0.0
    vif: float = 0.0
    entropy_weight: float = 1.0
    brightness_weight: float = 1.0
    temperature: float = 0.1
    source_bias: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> FusionLossWeights:
        reject_unknown_settings(cls, values, "fusion loss")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


class FusionLoss(nn.Module):
    """EMFusion's unsupervised objective: ``forward(fused, a, b) -> (total, parts)``.

    ``total`` is a scalar tensor; ``parts`` maps each term's name to its (unweighted) scalar
    tensor, for logging.
    """

    def __init__(self, weights: FusionLossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or FusionLossWeights()

    def forward(self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str,
                                                                                                         torch.Tensor]]:
        w = self.weights
        fused = fused.float()
        weight_a, weight_b = saliency_weights(
            a,
            b,
            entropy_weight=w.entropy_weight,
            brightness_weight=w.brightness_weight,
            temperature=w.temperature,
            source_bias=w.source_bias,
        )
        weight_a, weight_b = weight_a.view(-1), weight_b.view(-1)
        ssim_term = (weight_a * (1 - ssim(fused, a)) + weight_b * (1 - ssim(fused, b))).mean()
        mse_a = (fused - a).pow(2).flatten(1).mean(dim=1)
        mse_b = (fused - b).pow(2).flatten(1).mean(dim=1)
        mse_term = (weight_a * mse_a + weight_b * mse_b).mean()
        parts = {"ssim": ssim_term, "mse": mse_term, "gradient": gradient_loss(fused, a, b)}
        total = w.ssim * parts["ssim"] + w.mse * parts["mse"] + w.gradient * parts["gradient"]
        if w.intensity_max:
            parts["intensity_max"] = F.l1_loss(fused, torch.maximum(a, b))
            total = total + w.intensity_max * parts["intensity_max"]
        if w.vif:
            parts["vif"] = (1.0 - (pixel_vif(a, fused) + pixel_vif(b, fused)) / 2.0).mean()
            total = total + w.vif * parts["vif"]
        return total, parts


class ReconstructionLoss(nn.Module):
    """DenseFuse's auto-encoder loss: ``forward(output, target) -> (MSE + λ (1 - SSIM), parts)``.

    Li & Wu compare λ in {1, 10, 100, 1000}; λ is configuration (``ssim_weight``).
    """

    def __init__(self, ssim_weight: float = 1.0) -> None:
        super().__init__()
        self.ssim_weight = ssim_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = output.float()
        parts = {"mse": F.mse_loss(output, target), "ssim": (1 - ssim(output, target)).mean()}
        return parts["mse"] + self.ssim_weight * parts["ssim"], parts
