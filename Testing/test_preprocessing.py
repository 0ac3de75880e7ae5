"""Normalisation, CT windows, resampling, foreground boxes, grids, orientation and devices."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedFusionLib.core.devices import resolve_device
from MedFusionLib.core.errors import DeviceUnavailableError, InputError
from MedFusionLib.core.geometry import grid_differences, slicing_array_axis
from MedFusionLib.imaging.normalization import (
    CT_WINDOWS,
    apply_ct_window,
    normalize_intensity,
    resample_to_reference,
    slice_boxes,
)


def test_normalize_clips_at_99th_percentile_and_scales_to_unit_range():
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)  # 0..999, p99 = 989.01
    normalized = normalize_intensity(values, low_percentile=0.0)  # the seed's rule
    assert normalized.dtype == np.float32 and normalized.shape == values.shape
    assert normalized.min() == 0.0
    assert normalized.max() == pytest.approx(1.0, abs=1e-6)
    assert (normalized.ravel()[990:] == normalized.max()).all()  # everything above p99 is clipped
    assert normalized.ravel()[500] == pytest.approx(500 / np.percentile(values, 99), rel=1e-5)


def test_normalize_clips_undershoot_so_the_background_stays_black():
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[5:15, 5:15, 5:15] = 500.0
    volume[0, 0, :10] = -69.0  # interpolation undershoot, as in BraTS T1
    normalized = normalize_intensity(volume)
    assert normalized[volume == 0].max() == 0.0 and normalized[volume == -69].max() == 0.0
    assert normalize_intensity(volume, low_percentile=0.0)[volume == 0].min() > 0.1  # the seed's rule


def test_normalize_is_invariant_to_affine_intensity_changes():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 50.0, size=(8, 16, 16)).astype(np.float32)
    assert np.allclose(normalize_intensity(values), normalize_intensity(3.0 * values - 200.0), atol=1e-5)


def test_normalize_constant_input_gives_zeros_not_nans():
    assert not normalize_intensity(np.full((4, 4), 7.0)).any()


def test_ct_windows_map_level_and_edges():
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 3000.0], dtype=np.float32)
    brain = apply_ct_window(hu, "brain")  # level 40, width 80: 0 HU -> 0, 40 -> 0.5, 80 -> 1
    assert brain.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert apply_ct_window(hu, (40.0, 80.0)).tolist() == brain.tolist()
    assert {"brain", "bone", "soft-tissue"} <= set(CT_WINDOWS)
    with pytest.raises(InputError, match="unknown CT window"):
        apply_ct_window(hu, "lungs")
    with pytest.raises(InputError, match="positive"):
        apply_ct_window(hu, (40.0, 0.0))


def test_resample_to_reference_takes_the_reference_geometry_and_keeps_physical_positions():
    moving = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    moving.SetSpacing((2.0, 2.0, 2.0))
    moving[10, 10, 10] = 100.0  # physical (20, 20, 20) mm
    reference = sitk.Image([41, 41, 41], sitk.sitkFloat32)  # 1 mm grid over the same space
    resampled = resample_to_reference(moving, reference, interpolator=sitk.sitkNearestNeighbor)
    assert resampled.GetSize() == reference.GetSize() and resampled.GetSpacing() == reference.GetSpacing()
    assert resampled[20, 20, 20] == 100.0
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # reference point p shows moving p + 4 mm
    shifted = resample_to_reference(moving, reference, shift, interpolator=sitk.sitkNearestNeighbor)
    assert shifted[16, 20, 20] == 100.0


def test_slice_boxes():
    mask = np.zeros((3, 10, 12), bool)
    mask[0, 2:5, 3:4] = True
    mask[0, 7, 10] = True
    mask[2, 0, 0] = True
    assert slice_boxes(mask, margin=0) == [(2, 8, 3, 11), None, (0, 1, 0, 1)]
    assert slice_boxes(mask, margin=2) == [(0, 10, 1, 12), None, (0, 3, 0, 3)]

def _grid(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.Image([8, 9, 10], sitk.sitkFloat32)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-10.0, 4.0, 7.5))
    image.SetDirection(direction)
    return image


def test_grid_differences_name_each_mismatch():
    image = _grid()
    assert grid_differences(image, _grid()) == []
    other = _grid()
    other.SetOrigin((-10.0, 4.0, 9.0))
    other.SetSpacing((0.8, 1.1, 2.0))
    differences = " ".join(grid_differences(image, other))
    assert "origin" in differences and "spacing" in differences and "size" not in differences
    assert "size" in " ".join(grid_differences(image, sitk.Image([8, 9, 11], sitk.sitkFloat32)))


def test_slicing_axis_follows_the_direction_matrix():
    identity = _grid()
    assert [slicing_array_axis(identity, plane) for plane in ("axial", "coronal", "sagittal")] == [0, 1, 2]
    # Stored sagittally: index x runs A->P, y runs S->I, z runs L->R.
    sagittal_storage = _grid(direction=(0, 0, 1, 1, 0, 0, 0, -1, 0))
    assert slicing_array_axis(sagittal_storage, "sagittal") == 0  # steps along index z (array axis 0)
    assert slicing_array_axis(sagittal_storage, "axial") == 1  # along index y
    assert slicing_array_axis(sagittal_storage, "coronal") == 2  # along index x


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceUnavailableError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_but_absent_says_why_and_what_to_do():
    with pytest.raises(DeviceUnavailableError, match="--device cpu"):
        resolve_device("cuda")
