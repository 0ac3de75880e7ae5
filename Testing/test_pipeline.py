"""End-to-end volume and 2D fusion through :func:`MedFusionLib.fusion.pipeline.fuse_volumes`."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import oblique

from MedFusionLib.core.errors import FusionCancelled, GridMismatchError, InputError
from MedFusionLib.fusion.engine import SliceFuser
from MedFusionLib.fusion.options import OptionsError
from MedFusionLib.fusion.pipeline import FOREGROUND_MARGIN, FOREGROUND_THRESHOLD, fuse_volumes
from MedFusionLib.imaging.colour import rgb_to_ycbcr
from MedFusionLib.imaging.normalization import normalize_intensity
from MedFusionLib.imaging.phantom import make_clinical_pair
from MedFusionLib.models import FusionNet
from MedFusionLib.registration import aligned_as_stored


def assert_same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()


@pytest.mark.parametrize("model", ["laplacian", "maximum"])
def test_phantom_fusion_keeps_geometry_and_both_modalities(phantom_pair, model):
    result = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model=model, device="cpu")
    fused = result.fused
    assert_same_geometry(fused, phantom_pair.ct)
    assert fused.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(fused)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    ct, mr = sitk.GetArrayFromImage(phantom_pair.ct), sitk.GetArrayFromImage(phantom_pair.mr)
    bone = ct > 700  # bright on CT, dark on MR
    fluid = (mr > 800) & (ct < 100)  # CSF/ventricles: bright on MR, dark-ish on CT
    white = (np.abs(ct - 27) < 15) & (np.abs(mr - 380) < 60)
    # The fused image shows bone (from CT) and fluid (from MR) brighter than white matter.
    assert values[bone].mean() > values[white].mean() + 0.1
    assert values[fluid].mean() > values[white].mean() + 0.1


def test_default_model_on_the_cpu_is_the_light_network_and_is_recorded(phantom_pair):
    """The default model is "auto": on the CPU it resolves to the light network (the table in
    MedFusionLib.core.choices), and the result names the concrete network that ran."""
    from MedFusionLib.core.choices import DEFAULT_MODEL_BY_DEVICE
    from MedFusionLib.fusion.options import FusionOptions

    assert FusionOptions().model == "auto"
    result = fuse_volumes(phantom_pair.ct, phantom_pair.mr, FusionOptions(device="cpu"))
    assert result.model == DEFAULT_MODEL_BY_DEVICE["cpu"] == "emfusion" and result.device == "cpu"
    assert result.fused_slices > 0


def test_average_fusion_equals_mean_of_volume_normalised_sources(phantom_pair):
    """Checks normalisation per volume, cropping and uncropping against a direct computation
    (percentiles for both: 'none', since the default 'auto' shows the phantom CT through a window)."""
    result = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="average", reference_window="none")
    fused = sitk.GetArrayFromImage(result.fused)
    a = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.ct))
    b = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.mr))
    # Inside the foreground box by the model, outside it by the pipeline's background fill.
    assert np.allclose(fused, (a + b) / 2, atol=1e-6)


def test_only_the_joint_foreground_is_sent_to_the_model(phantom_pair):
    """Thirty empty slices above and below the head are not fused; the output still covers them."""
    ct = sitk.ConstantPad(phantom_pair.ct, (0, 0, 30), (0, 0, 30), -1000.0)
    mr = sitk.ConstantPad(phantom_pair.mr, (0, 0, 30), (0, 0, 30), 0.0)
    calls = []
    result = fuse_volumes(ct, mr, model="laplacian", progress=lambda *call: calls.append(call))
    fused_slices = calls[-1][2]
    assert fused_slices <= phantom_pair.ct.GetSize()[2] + 2 * FOREGROUND_MARGIN < ct.GetSize()[2]
    values = sitk.GetArrayFromImage(result.fused)
    assert values.shape == sitk.GetArrayFromImage(ct).shape and values[:20].max() < 0.02


@pytest.mark.parametrize("axis", ["coronal", "sagittal"])
def test_slicing_axis_does_not_change_a_pixelwise_rule(phantom_pair, axis):
    """The model runs inside per-slice boxes, which depend on the slicing; wherever either input
    is foreground both slicings ran it, and elsewhere the rule and the background mean differ
    by less than half the foreground threshold. (Percentiles for both inputs, as computed here.)"""
    options = {"model": "maximum", "reference_window": "none"}
    axial = sitk.GetArrayFromImage(fuse_volumes(phantom_pair.ct, phantom_pair.mr, axis="axial", **options).fused)
    other = sitk.GetArrayFromImage(fuse_volumes(phantom_pair.ct, phantom_pair.mr, axis=axis, **options).fused)
    a = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.ct))
    b = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.mr))
    foreground = (a > FOREGROUND_THRESHOLD) | (b > FOREGROUND_THRESHOLD)
    assert np.array_equal(axial[foreground], other[foreground])
    assert np.allclose(axial[foreground], np.maximum(a, b)[foreground], atol=1e-6)
    assert np.abs(axial - other).max() <= FOREGROUND_THRESHOLD / 2


def test_slicing_axis_matters_for_a_spatial_model(phantom_pair):
    axial = sitk.GetArrayFromImage(
        fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="laplacian", axis="axial").fused
    )
    coronal = sitk.GetArrayFromImage(
        fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="laplacian", axis="coronal").fused
    )
    assert not np.allclose(axial, coronal, atol=1e-3)


def test_oblique_anisotropic_geometry_is_kept(phantom_pair):
    ct, mr = oblique(phantom_pair.ct), oblique(phantom_pair.mr)
    ct.SetOrigin((12.5, -30.25, 81.0))
    mr.SetOrigin((12.5, -30.25, 81.0))
    assert_same_geometry(fuse_volumes(ct, mr, model="laplacian").fused, ct)


def test_cpu_fusion_is_bit_identical_across_runs(phantom_pair):
    first = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="laplacian", batch_size=5).fused
    second = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="laplacian", batch_size=5).fused
    assert np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))


def test_progress_reports_every_slice_and_cancel_stops(phantom_pair):
    calls = []
    fuse_volumes(phantom_pair.ct, phantom_pair.mr, batch_size=4, progress=lambda *call: calls.append(call))
    fuse_calls = [call for call in calls if call[0] == "fuse"]
    done = [call[1] for call in fuse_calls]
    assert done == sorted(done) and done[0] == 0 and done[-1] == fuse_calls[-1][2] > 4
    with pytest.raises(FusionCancelled):
        fuse_volumes(phantom_pair.ct, phantom_pair.mr, cancel=lambda: True)


def test_mismatched_grids_without_registration_is_a_clear_error(phantom_pair):
    moved = sitk.Image(phantom_pair.mr)
    moved.SetOrigin([o + 5.0 for o in moved.GetOrigin()])
    with pytest.raises(GridMismatchError) as error:
        fuse_volumes(phantom_pair.ct, moved, registration="none")
    assert "origin" in str(error.value) and "--registration" in str(error.value)


def test_default_registration_is_none_on_one_grid_and_rigid_across_grids(phantom_pair):
    """``auto``: co-registered inputs (one voxel grid) are fused as they are; two grids are registered."""
    same = fuse_volumes(phantom_pair.ct, phantom_pair.ct, model="average")
    assert same.registration is None
    moved = sitk.Image(phantom_pair.ct)
    moved.SetOrigin([o + 4.0 for o in moved.GetOrigin()])
    across = fuse_volumes(phantom_pair.ct, moved, model="average", backend="simpleitk")
    assert across.registration is not None and across.registration.preset == "rigid"


def _turned_on_the_same_grid(image: sitk.Image, degrees: float, shift_mm: float) -> sitk.Image:
    """``image`` turned about z through its centre and shifted, resampled back onto its own grid:
    a scan resampled onto a standard grid without registration."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in image.GetSize()])
    turn = sitk.Euler3DTransform(centre, 0.0, 0.0, np.radians(degrees), (shift_mm, 0.0, 0.0))
    return sitk.Resample(image, image, turn, sitk.sitkLinear, float(sitk.GetArrayViewFromImage(image).min()))


def test_default_registration_checks_a_shared_grid_for_alignment():
    """One voxel grid is not proof of alignment: a CT turned 180° and shifted onto the same grid is
    registered (and ends up aligned), where taking the grid at its word would fuse two poses."""
    ct = make_clinical_pair(size=(64, 64, 48), spacing=(3.75, 3.75, 3.5)).ct
    turned = _turned_on_the_same_grid(ct, 180.0, 20.0)
    result = fuse_volumes(ct, turned, model="average")
    assert result.registration is not None and result.registration.preset == "rigid"
    assert not result.registration.confidence.doubtful
    reference = sitk.GetArrayViewFromImage(ct).astype(np.float32)
    registered = sitk.GetArrayViewFromImage(result.registered_moving).astype(np.float32)
    body = reference > -300
    assert np.median(np.abs(registered[body] - reference[body])) < 50  # HU: the same tissue on the same voxel
    assert aligned_as_stored(ct, ct).aligned  # an image against itself stays unregistered


def test_a_turned_scan_on_a_shared_grid_is_searched_once_and_prepared_once(monkeypatch):
    """The shared-grid check's orientation search is the registration's start: one search per
    fusion (there were two), and the CT's body mask is made once for registration and the boxes."""
    import MedFusionLib.fusion.pipeline as pipeline
    import MedFusionLib.io.gate as gate
    import MedFusionLib.registration as registration

    ct = make_clinical_pair(size=(64, 64, 48), spacing=(3.75, 3.75, 3.5)).ct
    turned = _turned_on_the_same_grid(ct, 180.0, 20.0)
    calls = {"search": 0, "body mask": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(registration, "search_orientations", counted("search", registration.search_orientations))
    for module in (gate, registration, pipeline):  # wherever a body mask is made
        if hasattr(module, "body_mask"):
            monkeypatch.setattr(module, "body_mask", counted("body mask", module.body_mask))
    result = fuse_volumes(ct, turned, model="average")
    assert result.registration is not None and result.registration.preset == "rigid"
    assert result.windows["reference"].startswith("CT ") and result.windows["moving"].startswith("CT ")
    assert calls == {"search": 1, "body mask": 2}  # one search; one body mask per CT


def test_bad_inputs_are_named(phantom_pair):
    nan = sitk.Image(phantom_pair.mr)
    nan[3, 4, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fuse_volumes(phantom_pair.ct, nan)
    with pytest.raises(InputError, match="constant"):
        fuse_volumes(phantom_pair.ct, sitk.Image(phantom_pair.ct.GetSize(), sitk.sitkFloat32))
    with pytest.raises(InputError, match="4D"):
        fuse_volumes(phantom_pair.ct, sitk.Image([4, 4, 4, 2], sitk.sitkFloat32))
    with pytest.raises(InputError, match="2D"):
        fuse_volumes(phantom_pair.ct, phantom_pair.mr[:, :, 10])
    with pytest.raises(OptionsError, match="unknown model 'nope'"):
        fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="nope")
    with pytest.raises(InputError, match="axis"):
        fuse_volumes(phantom_pair.ct, phantom_pair.mr, axis="transverse")
    with pytest.raises(InputError, match="(?i)no such file"):
        fuse_volumes("/nonexistent/ct.nii.gz", phantom_pair.mr)


def _picture(values: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(values, isVector=values.ndim == 3)


def test_2d_gray_with_rgb_fuses_luminance_and_keeps_chroma():
    rng = np.random.default_rng(0)
    gray = np.zeros((64, 64), dtype=np.uint8)
    gray[16:48, 16:48] = rng.integers(60, 130, size=(32, 32))
    gray[16:20, 16:48] = 250  # brighter than the colour band where they overlap
    colour = np.zeros((64, 64, 3), dtype=np.uint8)
    colour[18:40, 8:56] = (230, 120, 20)  # an orange band (luminance 141.5), like a hot PET region
    result = fuse_volumes(_picture(gray), _picture(colour), model="maximum")
    fused = sitk.GetArrayFromImage(result.fused)
    assert result.fused.GetNumberOfComponentsPerPixel() == 3 and fused.dtype == np.uint8
    assert fused.shape == (64, 64, 3)
    band = np.zeros((64, 64), bool)
    band[18:40, 8:56] = True
    colour_wins = band.copy()
    colour_wins[16:20] = False
    # 8-bit pictures keep their scale (x / 255): where the colour source is brighter, the maximum
    # rule returns it unchanged, up to YCbCr round-off.
    assert np.abs(fused[colour_wins].astype(int) - colour[colour_wins]).max() <= 2
    # Where the gray source is brighter, luminance rises but the hue stays orange (R > G > B).
    raised = fused[18:20, 16:48].astype(int)
    assert (raised[..., 0] > raised[..., 1]).all() and (raised[..., 1] > raised[..., 2]).all()
    # Outside the band the colour image is black: the result is the gray image, neutral in colour.
    fused_chroma = rgb_to_ycbcr(fused.astype(np.float32))[..., 1:]
    assert np.abs(fused_chroma[~band] - 128.0).max() < 1.0
    assert np.abs(fused[~band][..., 0].astype(int) - gray[~band]).max() <= 1


def test_2d_gray_pair_gives_gray_float_output():
    rng = np.random.default_rng(1)
    a, b = rng.random((40, 50)).astype(np.float32), rng.random((40, 50)).astype(np.float32)
    result = fuse_volumes(_picture(a), _picture(b), model="average")
    fused = sitk.GetArrayFromImage(result.fused)
    assert fused.shape == (40, 50) and fused.dtype == np.float32
    assert np.allclose(fused, (normalize_intensity(a) + normalize_intensity(b)) / 2, atol=1e-6)


class _MemoryHungryAverage(FusionNet):
    """Averages, but runs out of memory on batches of more than ``limit`` slices."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.batch_sizes = limit, []

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(a.shape[0])
        if a.shape[0] > self.limit:
            raise torch.OutOfMemoryError("out of memory (test)")
        return (a + b) / 2


def test_out_of_memory_halves_the_batch_and_finishes(phantom_pair, caplog):
    model = _MemoryHungryAverage(limit=3)
    fuser = SliceFuser(model, device="cpu", batch_size=16)
    a = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.ct))
    b = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.mr))
    with caplog.at_level("WARNING", logger="MedFusionLib"):
        fused = fuser.fuse_stack(a, b)
    assert np.allclose(fused, (a + b) / 2, atol=1e-6)
    assert model.batch_sizes[:3] == [16, 8, 4] and max(model.batch_sizes[3:]) == 2
    assert "retrying with 2 slices per batch" in caplog.text


def test_out_of_memory_with_one_slice_on_cpu_is_raised():
    fuser = SliceFuser(_MemoryHungryAverage(limit=0), device="cpu", batch_size=4)
    with pytest.raises(torch.OutOfMemoryError):
        fuser.fuse_stack(np.ones((2, 8, 8), np.float32), np.ones((2, 8, 8), np.float32))
