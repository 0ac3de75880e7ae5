"""Tests for MedFusionLib.training.losses: SSIM against scikit-image, saliency weights, gradient and fusion losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity as skimage_ssim

from MedFusionLib.core.errors import InputError
from MedFusionLib.evaluation.metrics import visual_information_fidelity
from MedFusionLib.training.losses import (
    FusionLoss,
    FusionLossWeights,
    ReconstructionLoss,
    gradient_loss,
    image_entropy,
    pixel_vif,
    saliency_weights,
    ssim,
    ssim_map,
)


def _smooth_random(seed: int, size: int = 48) -> torch.Tensor:
    """A (1, 1, size, size) image in [0, 1] with structure at several scales."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, size // 8, size // 8, generator=generator)
    fine = torch.rand(1, 1, size, size, generator=generator)
    image = 0.7 * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") + 0.3 * fine
    return image.clamp(0, 1)


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    image = _smooth_random(0)
    assert float(ssim(image, image)[0]) == pytest.approx(1.0, abs=1e-6)
    noisy = (image + 0.2 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim(image, noisy)[0]) < 0.9


def test_ssim_map_matches_scikit_image_gaussian_ssim_inside_the_border():
    x, y = _smooth_random(2), _smooth_random(3)
    ours = ssim_map(x, y)[0, 0].double().numpy()
    _, reference = skimage_ssim(
        x[0, 0].double().numpy(), y[0, 0].double().numpy(), data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True,
    )
    # scikit-image pads the border; its interior (5 px in) uses the same 11-tap windows as ours.
    # Ours runs in float32 (as in training), hence the 1e-4 tolerance.
    np.testing.assert_allclose(ours, reference[5:-5, 5:-5], atol=1e-4)


def test_ssim_and_vif_stay_float32_under_autocast():
    # Under autocast a convolution runs in bf16/fp16 whatever its inputs; SSIM's and VIF's
    # variance differences then err by ~0.05 (bf16), so the losses switch autocast off.
    x, y = _smooth_random(10, 64), _smooth_random(11, 64)
    reference_ssim, reference_vif = ssim_map(x, y), pixel_vif(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_ssim, under_vif = ssim_map(x, y), pixel_vif(x, y)
    assert under_ssim.dtype == torch.float32 and under_vif.dtype == torch.float32
    assert torch.allclose(under_ssim, reference_ssim, atol=1e-6) and torch.allclose(under_vif, reference_vif, atol=1e-6)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(InputError, match="at least 11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="one shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))


def test_image_entropy_of_constant_and_two_level_images():
    constant = torch.full((1, 1, 16, 16), 0.5)
    halves = torch.zeros(1, 1, 16, 16)
    halves[..., 8:] = 1.0
    assert image_entropy(torch.cat([constant, halves])).tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_saliency_weights_favour_the_richer_source_and_follow_the_bias():
    rich = _smooth_random(4)
    poor = torch.zeros_like(rich)
    poor[..., 20:28, 20:28] = 0.3
    weight_a, weight_b = saliency_weights(rich, poor)
    assert torch.allclose(weight_a + weight_b, torch.ones_like(weight_a))
    assert float(weight_a) > 0.9
    # A strong bias towards B overrides the information difference.
    biased_a, _ = saliency_weights(rich, poor, source_bias=-2.0)
    assert float(biased_a) < 0.1
    # A high temperature gives nearly equal weights.
    warm_a, _ = saliency_weights(rich, poor, temperature=100.0)
    assert float(warm_a) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(InputError, match="temperature"):
        saliency_weights(rich, poor, temperature=0.0)


def test_gradient_loss_is_zero_for_the_source_with_every_edge():
    edges = torch.zeros(1, 1, 32, 32)
    edges[..., 8:24, 8:24] = 1.0
    flat = torch.full_like(edges, 0.4)
    assert float(gradient_loss(edges, edges, flat)) == pytest.approx(0.0, abs=1e-7)
    assert float(gradient_loss(flat, edges, flat)) > 0.05


def test_fusion_loss_terms_reward_keeping_both_sources_structures():
    a = 0.6 * torch.nn.functional.interpolate(
        torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(5)), size=(48, 48), mode="bilinear"
    )  # smooth soft tissue
    b = torch.zeros(1, 1, 48, 48)
    b[..., 10:30, 15:40] = 0.9  # a bright "bone" the MRI does not show
    loss = FusionLoss(FusionLossWeights(intensity_max=1.0))
    keep_both, parts_both = loss(torch.maximum(a, b), a, b)
    _, parts_a = loss(a, a, b)
    assert set(parts_both) == {"ssim", "mse", "gradient", "intensity_max"}
    assert float(parts_both["gradient"]) < float(parts_a["gradient"])
    assert float(parts_both["intensity_max"]) < float(parts_a["intensity_max"])
    total = sum(getattr(loss.weights, name) * float(value) for name, value in parts_both.items())
    assert float(keep_both) == pytest.approx(total, rel=1e-6)


def test_source_bias_moves_the_surface_constraint_towards_one_source():
    a, b = _smooth_random(7), _smooth_random(8)
    towards_a = FusionLoss(FusionLossWeights(gradient=0.0, source_bias=5.0))
    towards_b = FusionLoss(FusionLossWeights(gradient=0.0, source_bias=-5.0))
    assert float(towards_a(a, a, b)[0]) < float(towards_a(b, a, b)[0])
    assert float(towards_b(b, a, b)[0]) < float(towards_b(a, a, b)[0])


def test_pixel_vif_agrees_with_the_evaluation_metric_and_has_gradients():
    # The loss term is worth training on only if it is the metric the val tables report.
    a, b = _smooth_random(4, 96), _smooth_random(5, 96)
    a[..., :30, :] = 0.25  # a flat region: no information to keep there
    fused = (0.6 * a + 0.4 * b).requires_grad_(True)
    loss_sum = pixel_vif(a, fused) + pixel_vif(b, fused)
    metric = visual_information_fidelity(*(255.0 * image.detach()[0, 0].double().numpy() for image in (fused, a, b)))
    assert float(loss_sum[0]) == pytest.approx(metric, rel=1e-3)
    assert float(pixel_vif(a, a)[0]) == pytest.approx(1.0, abs=1e-5)
    loss_sum.sum().backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    with pytest.raises(InputError, match="41 x 41"):
        pixel_vif(a[..., :40, :40], a[..., :40, :40])


def test_fusion_loss_vif_term_is_zero_for_a_kept_source_and_grows_with_noise():
    a = _smooth_random(6, 64)
    loss = FusionLoss(FusionLossWeights(ssim=0.0, mse=0.0, gradient=0.0, vif=1.0))
    kept, parts = loss(a, a, a)
    noise = 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(8))
    degraded, _ = loss((a + noise).clamp(0, 1), a, a)
    assert "vif" in parts and float(kept) == pytest.approx(0.0, abs=1e-5)
    assert float(degraded) > 0.3


def test_fusion_loss_weights_reject_unknown_settings():
    with pytest.raises(InputError, match="unknown fusion loss setting"):
        FusionLossWeights.from_dict({"ssim": 1.0, "perceptual": 1.0})


def test_reconstruction_loss_is_zero_for_a_perfect_reconstruction():
    image = _smooth_random(6)
    loss, parts = ReconstructionLoss(ssim_weight=10.0)(image, image)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    worse, _ = ReconstructionLoss(ssim_weight=10.0)(image * 0.5, image)
    assert float(worse) > 0.01
