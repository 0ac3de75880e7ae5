"""Tests of MedFusionLib.evaluation.metrics: hand-computable values, invariances, bounds, scikit-image SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MedFusionLib.core.errors import InputError
from MedFusionLib.evaluation import metrics


def synthetic_pair(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like (soft tissue, smooth texture) and a CT-like (bright ring) image, 8-bit levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    radius = np.hypot(x, y)
    head = radius < 0.8
    texture = 0.5 + 0.25 * np.sin(6 * x + 2 * y) * np.cos(5 * y)
    mr = np.where(head, 60 + 150 * texture, 0) + rng.normal(0, 3, (size, size)) * head
    ct = np.where((radius > 0.7) & head, 240, np.where(head, 40, 0))
    return np.clip(np.round(mr), 0, 255), np.clip(np.round(ct), 0, 255).astype(np.float64)


# ----------------------------------------------------------------------------- hand-computable


def test_entropy_of_two_level_images_is_binary_entropy():
    half = np.zeros((16, 16))
    half[:, 8:] = 200
    assert metrics.entropy(half) == pytest.approx(1.0, abs=1e-12)
    quarter = np.zeros((16, 16))
    quarter[:4, :] = 255
    expected = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert metrics.entropy(quarter) == pytest.approx(expected, abs=1e-12)
    assert metrics.entropy(np.full((8, 8), 77.0)) == 0.0


def test_mutual_information_of_an_image_with_itself_is_its_entropy_in_nats():
    mr, _ = synthetic_pair()
    entropy_nats = metrics.entropy(mr) * math.log(2)
    # Summed over both sources, each equal to F: 2 H(F).
    assert metrics.mutual_information(mr, mr, mr) == pytest.approx(2 * entropy_nats, rel=1e-12)


def test_mutual_information_is_invariant_to_relabelling_grey_levels():
    mr, ct = synthetic_pair()
    permutation = np.random.default_rng(1).permutation(256).astype(np.float64)
    relabelled = permutation[mr.astype(int)]
    assert metrics.mutual_information(relabelled, mr, ct) == pytest.approx(
        metrics.mutual_information(mr, mr, ct), rel=1e-12
    )


def test_mutual_information_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(2)
    f, a, b = (rng.integers(0, 4, (256, 256)).astype(np.float64) * 60 for _ in range(3))
    # Four levels, 65536 samples: the histogram bias of each term is about 9 / (2 N) nats.
    assert metrics.mutual_information(f, a, b) < 1e-3


def test_spatial_frequency_and_average_gradient_of_ramps():
    columns = np.tile(np.arange(32) * 3.0, (20, 1))  # steps of 3 along x, constant along y
    assert metrics.spatial_frequency(columns) == pytest.approx(3.0, abs=1e-12)
    assert metrics.average_gradient(columns) == pytest.approx(3.0 / math.sqrt(2), abs=1e-12)
    diagonal = np.add.outer(np.arange(20) * 4.0, np.arange(32) * 3.0)
    assert metrics.spatial_frequency(diagonal) == pytest.approx(5.0, abs=1e-12)
    assert metrics.average_gradient(diagonal) == pytest.approx(5.0 / math.sqrt(2), abs=1e-12)


def test_standard_deviation_of_a_black_and_white_image():
    image = np.zeros((10, 10))
    image[::2] = 255
    assert metrics.standard_deviation(image) == pytest.approx(127.5)


def test_qabf_is_its_maximum_where_the_fused_image_equals_the_only_edged_source():
    mr, _ = synthetic_pair()
    # Black, not grey: Sobel with zero padding (the reference convention) sees a grey border.
    flat = np.zeros_like(mr)
    assert metrics.qabf(mr, mr, flat) == pytest.approx(metrics.QABF_MAX, abs=1e-12)
    assert metrics.qabf(mr, mr, mr) == pytest.approx(metrics.QABF_MAX, abs=1e-12)
    # The standard constants put the maximum just below one, by the sigmoid tails.
    assert metrics.QABF_MAX == pytest.approx(0.99885 * 0.97593, abs=1e-4)


def test_qabf_penalises_lost_edges():
    mr, ct = synthetic_pair()
    flat = np.zeros_like(mr)
    assert metrics.qabf(flat, mr, ct) < 0.01  # every edge lost
    # Keeping the MR edges but losing the CT ring scores in between.
    kept_mr = metrics.qabf(mr, mr, ct)
    assert 0.05 < kept_mr < metrics.QABF_MAX - 0.05
    assert metrics.qabf(flat, flat, flat) == 0.0  # no edges to preserve at all


def test_ssim_of_identical_images_is_one_per_source():
    mr, ct = synthetic_pair()
    assert metrics.structural_similarity(mr, mr) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(mr, mr, mr) == pytest.approx(2.0, abs=1e-12)
    assert metrics.ssim(mr, mr, ct) < 2.0 - 1e-3


@pytest.mark.parametrize("data_range", [255.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_agrees_with_scikit_image(seed, data_range):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    mr, ct = synthetic_pair(size=80, seed=seed)
    fused = np.round(0.6 * mr + 0.4 * ct)
    for x, y in ((fused, mr), (fused, ct), (mr, ct)):
        expected = skimage_metrics.structural_similarity(x, y, data_range=data_range)
        assert metrics.structural_similarity(x, y, data_range) == pytest.approx(expected, abs=1e-9)


def test_psnr_uses_the_fused_peak_and_the_mean_squared_error_of_both_sources():
    mr, _ = synthetic_pair()
    fused = np.clip(mr, 20, 235)
    plus, minus = fused + 10, fused - 10  # both sources differ by 10 everywhere: MSE = 100
    expected = 10 * math.log10(fused.max() ** 2 / 100.0)
    assert metrics.peak_signal_to_noise_ratio(fused, plus, minus) == pytest.approx(expected)
    assert metrics.peak_signal_to_noise_ratio(mr, mr, mr) == math.inf


def test_correlation_coefficient_and_scd_of_exact_relations():
    mr, ct = synthetic_pair()
    assert metrics.correlation_coefficient(mr, mr, mr) == pytest.approx(1.0)
    assert metrics.correlation_coefficient(255 - mr, mr, mr) == pytest.approx(-1.0)
    half_a, half_b = np.round(mr / 2), np.round(ct / 2)
    # F - B == A and F - A == B: both correlations of differences are exactly 1.
    assert metrics.sum_of_correlations_of_differences(
        half_a + half_b, half_a, half_b
    ) == pytest.approx(2.0)
    # F == A makes F - A constant, which counts as uncorrelated.
    assert metrics.sum_of_correlations_of_differences(mr, mr, ct) == pytest.approx(
        np.corrcoef(mr.ravel(), (mr - ct).ravel())[0, 1]
    )


def test_vif_is_one_per_source_for_an_undistorted_copy_and_drops_with_noise():
    mr, ct = synthetic_pair()
    assert metrics.visual_information_fidelity(mr, mr, mr) == pytest.approx(2.0, abs=1e-6)
    noisy = np.clip(mr + np.random.default_rng(3).normal(0, 20, mr.shape), 0, 255)
    assert metrics.visual_information_fidelity(noisy, mr, mr) < 1.5
    blurred = (mr + np.roll(mr, 1, 0) + np.roll(mr, 1, 1) + np.roll(mr, (1, 1), (0, 1))) / 4
    assert metrics.visual_information_fidelity(blurred, mr, mr) < 2.0 - 0.1


# ----------------------------------------------------------------------------- invariances, bounds


def test_two_source_metrics_are_symmetric_in_the_sources():
    mr, ct = synthetic_pair()
    fused = np.maximum(mr, ct)
    forward = metrics.score(fused, mr, ct)
    backward = metrics.score(fused, ct, mr)
    for name in forward:
        assert forward[name] == pytest.approx(backward[name], rel=1e-12, abs=1e-12), name


def test_fused_only_metrics_ignore_pixel_order_or_orientation():
    mr, _ = synthetic_pair()
    shuffled = np.random.default_rng(4).permutation(mr.ravel()).reshape(mr.shape)
    assert metrics.entropy(shuffled) == pytest.approx(metrics.entropy(mr))
    assert metrics.standard_deviation(shuffled) == pytest.approx(metrics.standard_deviation(mr))
    assert metrics.standard_deviation(np.clip(mr, 0, 200) + 50) == pytest.approx(
        metrics.standard_deviation(np.clip(mr, 0, 200))
    )
    assert metrics.spatial_frequency(mr.T) == pytest.approx(metrics.spatial_frequency(mr))
    assert metrics.average_gradient(mr.T) == pytest.approx(metrics.average_gradient(mr))


eight_bit_images = st.integers(min_value=0, max_value=2**31).map(
    lambda seed: np.random.default_rng(seed).integers(0, 256, (48, 48)).astype(np.float64)
)


@settings(max_examples=25, deadline=None)
@given(eight_bit_images, eight_bit_images, st.floats(0.0, 1.0))
def test_metrics_stay_within_their_stated_ranges(a, b, weight):
    fused = np.round(weight * a + (1 - weight) * b)
    scores = metrics.score(fused, a, b)
    assert 0 <= scores["EN"] <= 8
    assert 0 <= scores["SD"] <= 127.5
    assert 0 <= scores["SF"] <= 255 * math.sqrt(2)
    assert 0 <= scores["AG"] <= 255
    assert 0 <= scores["MI"] <= 2 * math.log(256) + 1e-9
    assert -2 <= scores["SCD"] <= 2
    assert scores["VIF"] >= 0
    assert 0 <= scores["Qabf"] <= metrics.QABF_MAX + 1e-12
    assert -2 <= scores["SSIM"] <= 2
    assert scores["PSNR"] > 0
    assert -1 <= scores["CC"] <= 1


# ----------------------------------------------------------------------------- volumes, inputs


def test_volume_scores_average_the_foreground_slices_only():
    mr, ct = synthetic_pair()
    fused = np.maximum(mr, ct)
    other_fused = np.round((mr + ct) / 2)
    empty = np.zeros_like(mr)
    volume_f = np.stack([empty, fused, other_fused, empty])
    volume_a = np.stack([empty, mr, mr, empty])
    volume_b = np.stack([empty, ct, ct, empty])
    for name, metric in metrics.METRICS.items():
        if metric.uses_sources:
            on_volume = metric.function(volume_f, volume_a, volume_b)
            per_slice = [metric.function(f, mr, ct) for f in (fused, other_fused)]
        else:
            on_volume = metric.function(volume_f)
            per_slice = [metric.function(f) for f in (fused, other_fused)]
        assert on_volume == pytest.approx(np.mean(per_slice), rel=1e-12), name


def test_foreground_slices_need_one_percent_of_bright_pixels():
    volume = np.zeros((3, 10, 10))
    volume[1, 0, 0] = 255  # 1 % of the slice: foreground
    volume[2, 0, 0] = 25  # below 10 % of the range: background
    assert metrics.foreground_slices(volume).tolist() == [1]
    # A background lifted by min-max scaling (air at 30 levels) is still background.
    assert metrics.foreground_slices(volume + 30).tolist() == [1]
    with pytest.raises(InputError, match="no foreground slice"):
        metrics.entropy(np.zeros((3, 10, 10)))


@pytest.mark.parametrize(
    ("fused", "message"),
    [
        (np.full((16, 16), 0.5), r"\[0, 1\] image"),
        (np.full((16, 16), 300.0), r"8-bit scale"),
        (np.full((16, 16), np.nan), "NaN"),
        (np.zeros((2, 2, 16, 16)), "2D image"),
        (np.zeros((16, 15)), "same shape"),
    ],
)
def test_bad_inputs_raise_input_errors_that_name_the_problem(fused, message):
    source = np.zeros((16, 16))
    with pytest.raises(InputError, match=message):
        metrics.mutual_information(fused, source, source)


def test_score_rejects_unknown_metric_names_and_lists_the_known_ones():
    image = np.zeros((16, 16))
    with pytest.raises(InputError, match="QABF.*choose from"):
        metrics.score(image, image, image, metrics=["QABF"])
    assert set(metrics.score(image, image, image, metrics=["EN", "CC"])) == {"EN", "CC"}


def test_to_eight_bit_rounds_and_clips_like_saving_a_png():
    assert metrics.to_eight_bit(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [
        0.0,
        0.0,
        128.0,
        255.0,
        255.0,
    ]
    assert metrics.to_eight_bit(np.array([-1000.0, 1000.0]), low=-1000, high=1000).tolist() == [
        0.0,
        255.0,
    ]
