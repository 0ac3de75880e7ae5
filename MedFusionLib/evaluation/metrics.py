"""Fusion quality metrics, with the conventions of the multimodal image fusion literature.

Every metric takes the fused image ``F`` and, where it compares, the two sources ``A`` and ``B``
(in this project A is the MRI, B the CT/PET/SPECT). Conventions follow the evaluator that recent
papers share (CDDFuse's ``utils/Evaluator.py``) so that numbers can be set beside published
tables:

* images are on the **8-bit scale**: float or integer arrays with values in [0, 255] (a network's
  [0, 1] output must be multiplied by 255 first, ideally rounded as saving a PNG would);
* histogram metrics (EN, MI) quantise to the 256 integer levels;
* two-source metrics are **summed** over the sources (MI, SCD, VIF, SSIM), except CC, which the
  literature averages, and PSNR, which uses the mean of the two squared errors.

Inputs are 2D arrays ``(H, W)``, or volumes ``(S, H, W)``: a volume is scored slice by slice along
axis 0 over its foreground slices (see :func:`foreground_slices`) and the slice scores are
averaged. Every metric here is "higher is better"; :data:`METRICS` lists name, range and unit.
All functions are vectorised numpy; the full set on a 256 x 256 pair takes a few tens of ms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from MedFusionLib.core.errors import InputError

EIGHT_BIT_MAX = 255.0

# Xydeas & Petrovic (Electronics Letters 36(4), 2000) sigmoid constants, as every Q^AB/F
# implementation in the field uses them. With these, a perfectly preserved edge scores
# QABF_MAX ~ 0.9748 rather than exactly 1.
QABF_GAMMA_G, QABF_KAPPA_G, QABF_SIGMA_G = 0.9994, -15.0, 0.5
QABF_GAMMA_A, QABF_KAPPA_A, QABF_SIGMA_A = 0.9879, -22.0, 0.8
QABF_MAX = (QABF_GAMMA_G / (1.0 + math.exp(QABF_KAPPA_G * (1.0 - QABF_SIGMA_G)))) * (
    QABF_GAMMA_A / (1.0 + math.exp(QABF_KAPPA_A * (1.0 - QABF_SIGMA_A)))
)

# A volume slice counts as foreground when at least FOREGROUND_FRACTION of its pixels is brighter
# than the volume's background by FOREGROUND_LEVELS_ABOVE_BACKGROUND (8-bit grey levels, 0-255
# scale), in some image: slices of air would otherwise
# dominate a volume's average. 10 % of the range keeps MRI's Rician background noise out; the
# background is the volume's 1st percentile, because min-max scaling lifts the air of a volume
# with a few negative voxels (BraTS T1: min -69) to ~10 % of the range.
FOREGROUND_LEVELS_ABOVE_BACKGROUND = 0.10 * EIGHT_BIT_MAX
FOREGROUND_FRACTION = 0.01
BACKGROUND_PERCENTILE = 1.0


# ----------------------------------------------------------------------------- input handling


def _as_eight_bit_array(image: np.ndarray, name: str) -> np.ndarray:
    """Return ``image`` as float64, after checking it is a finite 2D/3D array on the 8-bit scale."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(
            f"{name} has shape {array.shape}; metrics need a 2D image (H, W) or a volume (S, H, W). "
            "Take the Y/gray channel of colour images first."
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} has dtype {array.dtype}; pass a numeric image on the 8-bit scale.")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values; fix the image before scoring it.")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > EIGHT_BIT_MAX:
        raise InputError(
            f"{name} has values in [{low:g}, {high:g}]; metrics use the 8-bit scale [0, 255]. "
            "Rescale it first (e.g. metrics.to_eight_bit)."
        )
    if 0.0 < high <= 1.0 and np.any(array != np.round(array)):
        raise InputError(
            f"{name} looks like a [0, 1] image (max {high:g}); metrics use the 8-bit scale. "
            "Multiply by 255 first."
        )
    return array


def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(f"images to compare must have the same shape, got {listed}; resample first.")


def to_eight_bit(image: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Map ``image`` linearly from [low, high] to the 8-bit scale and round, as saving a PNG does.

    Returns float64 integer-valued levels in [0, 255] (values outside [low, high] are clipped).
    The default maps a network output in [0, 1].
    """
    if not high > low:
        raise InputError(f"to_eight_bit needs high > low, got low={low}, high={high}.")
    scaled = (np.asarray(image, dtype=np.float64) - low) * (EIGHT_BIT_MAX / (high - low))
    return np.clip(np.round(scaled), 0.0, EIGHT_BIT_MAX)


def foreground_slices(*volumes: np.ndarray) -> np.ndarray:
    """Indices (along axis 0) of the slices where any of ``volumes`` has foreground.

    ``volumes``: (S, H, W) arrays on the 8-bit scale. A slice is foreground when at least
    ``FOREGROUND_FRACTION`` of its pixels exceed the volume's background (its
    ``BACKGROUND_PERCENTILE``-th percentile) by ``FOREGROUND_LEVELS_ABOVE_BACKGROUND`` in at least one volume.
    """
    bright_fraction = np.stack(
        [
            (v > np.percentile(v, BACKGROUND_PERCENTILE) + FOREGROUND_LEVELS_ABOVE_BACKGROUND).mean(axis=(1, 2))
            for v in volumes
        ]
    )
    return np.flatnonzero((bright_fraction >= FOREGROUND_FRACTION).any(axis=0))


def _volume_average(slice_metric: Callable[..., float], *volumes: np.ndarray) -> float:
    indices = foreground_slices(*volumes)
    if indices.size == 0:
        raise InputError(
            "the volume has no foreground slice (no slice with >= 1% of pixels 10% of the 8-bit "
            "range above its background); check the intensity scaling or the crop."
        )
    return float(np.mean([slice_metric(*(v[i] for v in volumes)) for i in indices]))


def _fused_only(metric: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
    """Validate input and, for a (S, H, W) volume, average ``metric`` over foreground slices."""

    @functools.wraps(metric)
    def wrapper(fused: np.ndarray) -> float:
        array = _as_eight_bit_array(fused, "fused image")
        if array.ndim == 3:
            return _volume_average(metric, array)
        return float(metric(array))

    return wrapper


def _fused_and_sources(
    metric: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    """Validate (F, A, B) and, for volumes, average ``metric`` over the sources' foreground slices."""

    @functools.wraps(metric)
    def wrapper(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
        f = _as_eight_bit_array(fused, "fused image")
        a = _as_eight_bit_array(source_a, "source A")
        b = _as_eight_bit_array(source_b, "source B")
        _check_same_shape(fused=f, source_a=a, source_b=b)
        if f.ndim == 3:
            # Foreground from the sources only: a fused image must not choose its own slices.
            indices = foreground_slices(a, b)
            if indices.size == 0:
                raise InputError(
                    "the source volumes have no foreground slice; check their intensity scaling."
                )
            return float(np.mean([metric(f[i], a[i], b[i]) for i in indices]))
        return float(metric(f, a, b))

    return wrapper


# ----------------------------------------------------------------------------- shared helpers


def _quantise(image: np.ndarray) -> np.ndarray:
    """Integer 8-bit levels (intp) of an image on the 8-bit scale."""
    return np.clip(np.round(image), 0, 255).astype(np.intp)


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate ``image`` (H, W) with the separable kernel ``kernel`` x ``kernel`` ('valid' mode).

    Output shape (H - k + 1, W - k + 1) with k = len(kernel).
    """
    rows = sliding_window_view(image, kernel.size, axis=0) @ kernel
    return sliding_window_view(rows, kernel.size, axis=1) @ kernel


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either image is constant (no linear relation measurable)."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    return float(np.sum(dx * dy)) / denominator if denominator > 0 else 0.0


def _mutual_information_pair(x: np.ndarray, y: np.ndarray) -> float:
    """MI(x; y) in nats from the 256 x 256 joint histogram of the 8-bit levels."""
    joint = np.bincount((_quantise(x) * 256 + _quantise(y)).ravel(), minlength=256 * 256)
    joint = joint.reshape(256, 256) / x.size
    px, py = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    outer = np.outer(px, py)[nonzero]
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer)))


# ----------------------------------------------------------------------------- fused-only metrics


@_fused_only
def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy of the 256-level histogram, in **bits** (log2).

    Range [0, 8]; higher is better (more information, but noise raises it too).
    """
    histogram = np.bincount(_quantise(fused).ravel(), minlength=256) / fused.size
    p = histogram[histogram > 0]
    return float(-np.sum(p * np.log2(p)))


@_fused_only
def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of the intensities (8-bit units).

    Range [0, 127.5]; higher is better (contrast).
    """
    return float(np.std(fused))


@_fused_only
def spatial_frequency(fused: np.ndarray) -> float:
    """SF: sqrt(RF^2 + CF^2), RF/CF the RMS of horizontal/vertical first differences (8-bit units).

    Range [0, 255*sqrt(2)]; higher is better (detail, but noise raises it too).
    """
    row_frequency = np.mean(np.diff(fused, axis=1) ** 2)
    column_frequency = np.mean(np.diff(fused, axis=0) ** 2)
    return float(np.sqrt(row_frequency + column_frequency))


@_fused_only
def average_gradient(fused: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), central differences (one-sided at borders), 8-bit units.

    Range [0, 255]; higher is better (sharpness, but noise raises it too).
    """
    gy, gx = np.gradient(fused)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# ----------------------------------------------------------------------------- metrics vs sources


@_fused_and_sources
def mutual_information(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """MI: MI(F; A) + MI(F; B) in **nats**, from 256-level joint histograms.

    Range [0, H(A) + H(B)] (at most 2 ln 256 = 11.09); higher is better.
    """
    return _mutual_information_pair(fused, source_a) + _mutual_information_pair(fused, source_b)


@_fused_and_sources
def sum_of_correlations_of_differences(
    fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray
) -> float:
    """SCD (Aslantas & Bendes 2015): corr(F - B, A) + corr(F - A, B).

    A constant image correlates as 0. Range [-2, 2]; higher is better.
    """
    return _pearson(fused - source_b, source_a) + _pearson(fused - source_a, source_b)


@_fused_and_sources
def correlation_coefficient(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """CC: mean of the Pearson correlations corr(F, A) and corr(F, B) (averaged, as in the field).

    A constant image correlates as 0. Range [-1, 1]; higher is better.
    """
    return (_pearson(fused, source_a) + _pearson(fused, source_b)) / 2.0


@_fused_and_sources
def peak_signal_to_noise_ratio(
    fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray
) -> float:
    """PSNR in dB: 10 log10(r^2 / MSE), MSE the mean of MSE(F, A) and MSE(F, B).

    As in the fusion literature, r is the peak value of the *fused* image (255 for any fused image
    that reaches white). ``inf`` when F equals both sources. Higher is better.
    """
    mse = (np.mean((fused - source_a) ** 2) + np.mean((fused - source_b) ** 2)) / 2.0
    peak = float(fused.max())
    if mse == 0.0:
        return math.inf
    if peak == 0.0:
        return -math.inf
    return float(10.0 * np.log10(peak * peak / mse))


def _pixel_vif(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain VIF (Sheikh & Bovik 2006, 'vifp'): 4 scales, Gaussian windows, noise var 2.

    The MATLAB-style reference implementation the fusion literature copies: window N = 2^(5-s)+1
    with sd N/5, 'valid' filtering, dyadic downsampling; returns 1 when undefined (flat reference).
    """
    noise_variance, eps = 2.0, 1e-10
    numerator = denominator = 0.0
    ref, dist = reference, distorted
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        offsets = np.arange(size) - (size - 1) / 2.0
        kernel = np.exp(-(offsets**2) / (2.0 * (size / 5.0) ** 2))
        kernel /= kernel.sum()
        if scale > 1:
            ref = _filter_valid(ref, kernel)[::2, ::2]
            dist = _filter_valid(dist, kernel)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, kernel), _filter_valid(dist, kernel)
        sigma1_sq = np.maximum(_filter_valid(ref * ref, kernel) - mu1 * mu1, 0.0)
        sigma2_sq = np.maximum(_filter_valid(dist * dist, kernel) - mu2 * mu2, 0.0)
        sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2

        gain = sigma12 / (sigma1_sq + eps)
        residual_variance = sigma2_sq - gain * sigma12
        flat_reference = sigma1_sq < eps
        gain[flat_reference] = 0.0
        residual_variance[flat_reference] = sigma2_sq[flat_reference]
        sigma1_sq[flat_reference] = 0.0
        flat_distorted = sigma2_sq < eps
        gain[flat_distorted] = 0.0
        residual_variance[flat_distorted] = 0.0
        negative_gain = gain < 0
        residual_variance[negative_gain] = sigma2_sq[negative_gain]
        gain[negative_gain] = 0.0
        residual_variance = np.maximum(residual_variance, eps)

        numerator += np.sum(
            np.log10(1.0 + gain * gain * sigma1_sq / (residual_variance + noise_variance))
        )
        denominator += np.sum(np.log10(1.0 + sigma1_sq / noise_variance))
    return float(numerator / denominator) if denominator > 0 else 1.0


@_fused_and_sources
def visual_information_fidelity(
    fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray
) -> float:
    """VIF: pixel-domain VIF(A -> F) + VIF(B -> F) (sources as reference), summed.

    Range [0, ~2] (each term is 1 for F equal to the source and may exceed 1 for contrast
    enhancement); higher is better. Images need at least 41 x 41 pixels (4 scales).
    """
    if min(fused.shape) < 41:
        raise InputError(f"VIF needs images of at least 41 x 41 pixels, got {fused.shape}.")
    return _pixel_vif(source_a, fused) + _pixel_vif(source_b, fused)


def _sobel_strength_and_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength g and orientation alpha = arctan(sy / sx) in (-pi/2, pi/2].

    Zero padding at the border ('same' convolution), as in the reference implementation;
    alpha = pi/2 where sx = 0.
    """
    p = np.pad(image, 1)
    sx = (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2]) - (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:])
    sy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    strength = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return strength, orientation


def _edge_preservation(
    strength_source: np.ndarray,
    orientation_source: np.ndarray,
    strength_fused: np.ndarray,
    orientation_fused: np.ndarray,
) -> np.ndarray:
    """Per-pixel Q^SF = Q_g * Q_a: how well F keeps the source's edge strength and orientation."""
    # Equal strengths give a ratio of 1, as in the paper; CDDFuse's evaluator uses g_F there,
    # which changes a pair's Q^AB/F by about 1e-4 (both saturate the sigmoid).
    larger = np.maximum(strength_source, strength_fused)
    smaller = np.minimum(strength_source, strength_fused)
    with np.errstate(divide="ignore", invalid="ignore"):
        strength_ratio = np.where(larger > 0, smaller / np.where(larger > 0, larger, 1.0), 1.0)
    orientation_agreement = 1.0 - np.abs(orientation_source - orientation_fused) / (np.pi / 2)
    q_strength = QABF_GAMMA_G / (1.0 + np.exp(QABF_KAPPA_G * (strength_ratio - QABF_SIGMA_G)))
    q_orientation = QABF_GAMMA_A / (
        1.0 + np.exp(QABF_KAPPA_A * (orientation_agreement - QABF_SIGMA_A))
    )
    return q_strength * q_orientation


@_fused_and_sources
def qabf(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """Q^AB/F (Xydeas & Petrovic 2000): edge information of A and B preserved in F.

    Sobel edges; per-pixel preservation Q^AF, Q^BF with the standard sigmoid constants, averaged
    with the source edge strengths as weights. Range [0, QABF_MAX ~ 0.9748] (the constants keep
    a perfectly kept edge just below 1); higher is better. 0 when neither source has an edge.
    Sobel uses zero padding, so a non-black image border counts as an edge (as in the reference).
    """
    g_a, alpha_a = _sobel_strength_and_orientation(source_a)
    g_b, alpha_b = _sobel_strength_and_orientation(source_b)
    g_f, alpha_f = _sobel_strength_and_orientation(fused)
    weight = float(np.sum(g_a + g_b))
    if weight == 0.0:
        return 0.0
    kept = _edge_preservation(g_a, alpha_a, g_f, alpha_f) * g_a + (
        _edge_preservation(g_b, alpha_b, g_f, alpha_f) * g_b
    )
    return float(np.sum(kept) / weight)


SSIM_WINDOW = 7


def structural_similarity(
    x: np.ndarray, y: np.ndarray, data_range: float = EIGHT_BIT_MAX
) -> float:
    """SSIM(x, y) (Wang et al. 2004) of two 2D images, as scikit-image computes it by default.

    7 x 7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the windows that fit
    inside the image. ``data_range`` L = 255 for the 8-bit scale. Range [-1, 1]; 1 iff x == y.
    """
    if x.shape != y.shape or x.ndim != 2:
        raise InputError(f"SSIM needs two 2D images of one shape, got {x.shape} and {y.shape}.")
    if min(x.shape) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least 7 x 7 pixels, got {x.shape}.")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    box = np.full(SSIM_WINDOW, 1.0 / SSIM_WINDOW)
    n = SSIM_WINDOW * SSIM_WINDOW
    covariance_norm = n / (n - 1.0)
    mu_x, mu_y = _filter_valid(x, box), _filter_valid(y, box)
    var_x = covariance_norm * (_filter_valid(x * x, box) - mu_x * mu_x)
    var_y = covariance_norm * (_filter_valid(y * y, box) - mu_y * mu_y)
    cov_xy = covariance_norm * (_filter_valid(x * y, box) - mu_x * mu_y)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


@_fused_and_sources
def ssim(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), each as :func:`structural_similarity` with L = 255.

    Range [-2, 2]; higher is better. Note: CDDFuse's evaluator passed float32 images to
    scikit-image 0.19, which then assumed L = 2 (near-zero stabilising constants); its published
    SSIM values are therefore not on this convention (on the Harvard CT-MRI val pairs, L = 2
    gives sums 0.09-0.14 lower for the average and maximum rules).
    """
    return structural_similarity(fused, source_a) + structural_similarity(fused, source_b)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Metric:
    """One metric: ``function(fused)`` or ``function(fused, A, B)``; all are higher-is-better."""

    name: str
    function: Callable[..., float]
    uses_sources: bool
    unit: str
    value_range: str


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("EN", entropy, False, "bits", "[0, 8]"),
        Metric("SD", standard_deviation, False, "8-bit levels", "[0, 127.5]"),
        Metric("SF", spatial_frequency, False, "8-bit levels", "[0, 360.6]"),
        Metric("AG", average_gradient, False, "8-bit levels", "[0, 255]"),
        Metric("MI", mutual_information, True, "nats, summed", "[0, 11.09]"),
        Metric("SCD", sum_of_correlations_of_differences, True, "summed", "[-2, 2]"),
        Metric("VIF", visual_information_fidelity, True, "summed", "[0, ~2]"),
        Metric("Qabf", qabf, True, "", "[0, 0.975]"),
        Metric("SSIM", ssim, True, "summed, L=255", "[-2, 2]"),
        Metric("PSNR", peak_signal_to_noise_ratio, True, "dB", "[0, inf)"),
        Metric("CC", correlation_coefficient, True, "mean", "[-1, 1]"),
    )
}


def score(
    fused: np.ndarray,
    source_a: np.ndarray,
    source_b: np.ndarray,
    metrics: list[str] | tuple[str, ...] | None = None,
) -> dict[str, float]:
    """All (or the named) metrics of one fused image/volume against its sources, by name.

    Inputs as for the individual metrics: same-shape 2D or 3D arrays on the 8-bit scale.
    """
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}.")
    results = {}
    for name in names:
        metric = METRICS[name]
        args = (fused, source_a, source_b) if metric.uses_sources else (fused,)
        results[name] = metric.function(*args)
    return results
