"""Registration: recovery of known transforms, failure detection, transform files, the CLI.

Always-run tests use the procedural head phantom at 2.5 mm (a CT-like reference and an MR-like
moving image), with its face and neck: a head without them is nearly symmetric, and the default
start (the orientation search) would then rightly find a 180° turn almost as good (and report the
result as doubtful). Tests on real BraTS volumes skip when ``<repo>/../shared/data`` is absent.
Both backends run wherever elastix is installed; elastix tests skip without itk-elastix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError, OutputExistsError, RegistrationError
from MedFusionLib.devtools.registration_accuracy import (
    random_rigid,
    rigid_errors,
    smooth_deformation,
    target_registration_errors,
    warp_with_known_transform,
)
from MedFusionLib.imaging.phantom import make_head_phantom, rigid_motion
from MedFusionLib.registration import (
    apply_transform,
    available_backends,
    read_transform,
    register,
    write_transform,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BRATS_CASE = DATA / "brats" / "TCGA-DU-7294"
HAS_ELASTIX = "elastix" in available_backends()
BACKENDS = [
    pytest.param("elastix", marks=pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")),
    "simpleitk",
]
PHANTOM_SIZE, PHANTOM_SPACING = (64, 80, 72), (2.5, 2.5, 2.5)
# Moved by up to 15 degrees and 20 mm, as between two sessions on two scanners.
PHANTOM_MOTION = rigid_motion((8.0, -12.0, 15.0), (15.0, -20.0, 10.0))


@pytest.fixture(scope="module")
def aligned() -> tuple[sitk.Image, sitk.Image]:
    """CT-like reference and MR-like image of the same head on the same grid."""
    phantom = make_head_phantom(size=PHANTOM_SIZE, spacing=PHANTOM_SPACING, seed=3, face=True)
    return phantom.ct, phantom.mr


@pytest.fixture(scope="module")
def head_mask(aligned) -> np.ndarray:
    """Foreground of the reference (not air), numpy [z, y, x]; where errors are measured."""
    return sitk.GetArrayFromImage(aligned[0]) > -500.0


def foreground_centre(image: sitk.Image, mask: np.ndarray) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(mask).mean(axis=0)[::-1]])


@pytest.fixture(scope="module")
def rigid_pair() -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """CT reference; MR rendered on its own 2×2×3 mm grid with the head rotated and shifted."""
    phantom = make_head_phantom(
        size=PHANTOM_SIZE,
        spacing=PHANTOM_SPACING,
        misalignment=PHANTOM_MOTION,
        moving_spacing=(2.0, 2.0, 3.0),
        seed=4,
        face=True,
    )
    return phantom.ct, phantom.mr, phantom.reference_to_moving


@pytest.fixture(scope="module")
def deformed_pair(aligned) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """MR reference (another noise draw); MR moved by a small rigid motion and a smooth
    deformation of up to 6 mm. Not the CT: the phantom's CT shows grey matter, white matter and
    CSF within 30 HU, so inside its skull a deformation is unobservable (B-spline raises MI and
    TRE together there)."""
    _, mr = aligned
    reference = make_head_phantom(size=PHANTOM_SIZE, spacing=PHANTOM_SPACING, seed=9, face=True).mr
    deformation = smooth_deformation(mr, np.random.default_rng(7), control_spacing_mm=50.0, max_displacement_mm=6.0)
    truth = sitk.CompositeTransform([rigid_motion((3.0, -2.0, 4.0), (4.0, -3.0, 2.0)), deformation])
    return reference, warp_with_known_transform(mr, truth), truth


@pytest.mark.parametrize("backend", BACKENDS)
def test_rigid_preset_recovers_a_known_motion_across_grids(backend, rigid_pair, head_mask):
    reference, moving, truth = rigid_pair
    result = register(reference, moving, preset="rigid", backend=backend)

    rotation_error, translation_error = rigid_errors(result.transform, truth, foreground_centre(reference, head_mask))
    tre = target_registration_errors(result.transform, truth, reference, head_mask)
    assert rotation_error <= 0.5
    assert translation_error <= 0.5
    assert tre.mean() <= 0.5, f"mean TRE {tre.mean():.3f} mm (2.5 mm voxels)"
    assert result.metric_after < result.metric_before
    assert result.backend == backend and result.seconds > 0
    registered = result.registered
    assert registered.GetSize() == reference.GetSize()
    assert registered.GetSpacing() == reference.GetSpacing()
    assert registered.GetOrigin() == reference.GetOrigin()
    assert registered.GetDirection() == reference.GetDirection()
    assert registered.GetPixelID() == moving.GetPixelID()


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_preset_recovers_scaling_and_shear(backend, aligned, head_mask):
    """MR to MR (another noise draw): on the CT/MR phantom, 3 % anisotropic scaling makes a
    rotated pose score best for both backends (its nested ellipsoids trade aspect ratio for tilt),
    so the multimodal affine case is measured on BraTS in bench/bench_registration.py instead."""
    _, mr = aligned
    reference = make_head_phantom(size=PHANTOM_SIZE, spacing=PHANTOM_SPACING, seed=9, face=True).mr
    truth = sitk.AffineTransform(3)
    truth.SetCenter(foreground_centre(reference, head_mask))
    # Scanner calibration differs by a few per cent; gradient non-linearity adds a little shear.
    truth.SetMatrix((1.04, 0.02, 0.0, -0.015, 0.97, 0.01, 0.0, 0.02, 1.03))
    truth.SetTranslation((5.0, -4.0, 3.0))
    moving = warp_with_known_transform(mr, truth)

    rigid_tre = target_registration_errors(
        register(reference, moving, "rigid", backend).transform, truth, reference, head_mask
    )
    result = register(reference, moving, preset="affine", backend=backend)
    tre = target_registration_errors(result.transform, truth, reference, head_mask)
    assert tre.mean() <= 0.3, f"mean TRE {tre.mean():.3f} mm"
    assert tre.mean() <= 0.2 * rigid_tre.mean()


# SimpleITK's B-spline stage is too slow for this suite (about a minute per level on this
# phantom with ITK's v4 metric), so only elastix's is checked here.
@pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")
@pytest.mark.parametrize("backend", ["elastix"])
def test_bspline_preset_halves_the_error_of_rigid_on_a_smooth_deformation(backend, deformed_pair, head_mask):
    reference, moving, truth = deformed_pair
    rigid = register(reference, moving, preset="rigid", backend=backend)
    elastic = register(reference, moving, preset="bspline", backend=backend)
    rigid_tre = target_registration_errors(rigid.transform, truth, reference, head_mask).mean()
    elastic_tre = target_registration_errors(elastic.transform, truth, reference, head_mask).mean()
    assert elastic_tre <= 0.5 * rigid_tre, f"B-spline {elastic_tre:.2f} mm vs rigid {rigid_tre:.2f} mm"
    assert elastic.metric_after < rigid.metric_after


def test_aligned_pair_stays_aligned(aligned, head_mask):
    """No registration error for a pair that is already aligned: the metric cannot improve much,
    and the result must stay near identity rather than be refused."""
    reference, mr = aligned
    result = register(reference, mr, preset="rigid", backend="simpleitk")
    tre = target_registration_errors(result.transform, sitk.Euler3DTransform(), reference, head_mask)
    assert tre.mean() <= 0.3


def test_large_offset_between_scanners_is_found(aligned, head_mask):
    """The moving scan's coordinates are 70 mm off (another scanner's origin), fields of view
    still intersect: the centre-of-mass start brings the head within reach."""
    reference, mr = aligned
    offset = (70.0, -45.0, 30.0)
    moving = sitk.Image(mr)
    moving.SetOrigin(tuple(o + d for o, d in zip(mr.GetOrigin(), offset)))
    result = register(reference, moving, preset="rigid", backend="simpleitk")
    tre = target_registration_errors(result.transform, sitk.TranslationTransform(3, offset), reference, head_mask)
    assert tre.mean() <= 0.5


def test_no_overlap_raises_registration_error_with_advice(aligned):
    reference, mr = aligned
    far_away = sitk.Image(mr)
    far_away.SetOrigin(tuple(o + 1000.0 for o in mr.GetOrigin()))
    with pytest.raises(RegistrationError, match="share no physical space") as caught:
        register(reference, far_away, preset="rigid", backend="simpleitk")
    assert "initial transform" in str(caught.value)


def test_no_overlap_without_initialisation_raises(aligned):
    reference, mr = aligned
    far_away = sitk.Image(mr)
    far_away.SetOrigin(tuple(o + 1000.0 for o in mr.GetOrigin()))
    with pytest.raises(RegistrationError, match="do not overlap"):
        register(reference, far_away, initializer="none", backend="simpleitk")


def test_unrelated_images_raise_instead_of_a_silent_result(aligned):
    reference, _ = aligned
    noise = sitk.GetImageFromArray(
        np.random.default_rng(0).normal(100.0, 20.0, sitk.GetArrayViewFromImage(reference).shape).astype(np.float32)
    )
    noise.CopyInformation(reference)
    with pytest.raises(RegistrationError):
        register(reference, noise, preset="affine", backend="simpleitk")


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_gives_the_same_transform(backend, rigid_pair, head_mask):
    reference, moving, _ = rigid_pair
    first = register(reference, moving, backend=backend, seed=5)
    second = register(reference, moving, backend=backend, seed=5)
    # The same samples, the same start and the same path, up to the order in which ITK's threads
    # add up the metric: last-bit differences that the optimiser may carry a little further,
    # a few hundredths of a millimetre (a fiftieth of a voxel) at most.
    assert target_registration_errors(first.transform, second.transform, reference, head_mask).max() <= 0.05
    assert first.confidence.pose == second.confidence.pose


def test_masks_restrict_the_metric(rigid_pair, head_mask):
    reference, moving, truth = rigid_pair
    # A head mask with a margin of air, so the skin's edge still counts.
    mask = sitk.GetImageFromArray(head_mask.astype(np.uint8))
    mask.CopyInformation(reference)
    mask = sitk.BinaryDilate(mask, [4, 4, 4])
    result = register(reference, moving, backend="simpleitk", reference_mask=mask)
    assert target_registration_errors(result.transform, truth, reference, head_mask).mean() <= 0.5
    with pytest.raises(InputError, match="mask must lie on"):
        register(reference, moving, backend="simpleitk", moving_mask=mask)


def test_progress_is_reported_from_start_to_end(aligned):
    reference, mr = aligned
    fractions: list[float] = []
    register(
        reference,
        mr,
        preset="affine",
        backend="simpleitk",
        progress=lambda fraction, _message: fractions.append(fraction),
    )
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions) and fractions[0] < 0.5


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_saved_transforms_reload_and_apply_identically(suffix, tmp_path, deformed_pair):
    """A rigid + B-spline composite (the shape a bspline registration returns) survives a file."""
    reference, moving, truth = deformed_pair
    path = write_transform(truth, tmp_path / f"moving_to_reference{suffix}")
    reloaded = read_transform(path)
    expected = apply_transform(moving, reference, truth)
    again = apply_transform(moving, reference, reloaded)
    assert np.allclose(sitk.GetArrayViewFromImage(again), sitk.GetArrayViewFromImage(expected), atol=1e-3)
    with pytest.raises(InputError, match=".mat file holds only linear"):
        write_transform(truth, tmp_path / "deformable.mat")
    with pytest.raises(OutputExistsError):
        write_transform(truth, path)


@pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")
def test_elastix_result_converts_exactly_to_simpleitk(deformed_pair, tmp_path):
    """The SimpleITK transform built from elastix's parameter maps moves points exactly as
    elastix's own transformix does (so saved .tfm files mean what elastix found)."""
    import itk

    from MedFusionLib.registration import PRESETS, elastix_backend

    reference, moving, _ = deformed_pair
    start = sitk.TranslationTransform(3, (1.0, -2.0, 0.5))
    fixed, floating = sitk.Cast(reference, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    # Exactness of the conversion does not need convergence: few iterations keep this quick.
    stages = [dataclasses.replace(stage, iterations=40) for stage in PRESETS["bspline"]]
    maps = [elastix_backend._stage_map(fixed, floating, stage, 0, (0.0, 0.0, 0.0)) for stage in stages]
    result_maps = elastix_backend._run_itk_elastix(
        fixed, floating, maps, elastix_backend._affine_map(np.eye(3), np.array([1.0, -2.0, 0.5]), fixed), None, None
    )
    parameters = itk.ParameterObject.New()
    for result_map in result_maps:
        parameters.AddParameterMap(result_map)
    transformix = itk.TransformixFilter.New(elastix_backend._to_itk(floating, sitk.sitkFloat32))
    transformix.SetTransformParameterObject(parameters)
    transformix.SetComputeDeformationField(True)
    transformix.SetOutputDirectory(str(tmp_path))  # it also writes the field to a file
    transformix.SetLogToConsole(False)
    transformix.UpdateLargestPossibleRegion()
    transformix_field = itk.GetArrayFromImage(transformix.GetOutputDeformationField())
    converted = sitk.CompositeTransform([elastix_backend._to_simpleitk(m) for m in result_maps[-3:]][::-1] + [start])
    field = sitk.TransformToDisplacementField(
        converted, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()
    )
    assert np.abs(sitk.GetArrayViewFromImage(field) - transformix_field).max() < 1e-3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda image: image[:, :, 10], "a 3D volume is needed"),
        (lambda image: sitk.Compose(image, image), "components per voxel"),
        (lambda image: image * float("nan"), "NaN"),
    ],
)
def test_unusable_inputs_raise_input_error(change, message, aligned):
    reference, mr = aligned
    with pytest.raises(InputError, match=message):
        register(reference, change(mr), backend="simpleitk")


def test_unknown_preset_backend_and_initializer_are_named(aligned):
    reference, mr = aligned
    with pytest.raises(InputError, match="rigid, affine, bspline"):
        register(reference, mr, preset="demons")
    with pytest.raises(InputError, match="auto, elastix, simpleitk"):
        register(reference, mr, backend="ants")
    with pytest.raises(InputError, match="moments"):
        register(reference, mr, backend="simpleitk", initializer="centre")


def test_cli_register_writes_the_image_and_a_slicer_transform(tmp_path, rigid_pair, head_mask):
    reference, moving, truth = rigid_pair
    sitk.WriteImage(reference, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "mr.nii.gz"))
    output, transform = tmp_path / "mr_on_ct.nii.gz", tmp_path / "mr_to_ct.tfm"
    status = main(
        [
            "register",
            str(tmp_path / "ct.nii.gz"),
            str(tmp_path / "mr.nii.gz"),
            "-o",
            str(output),
            "--backend",
            "simpleitk",
            "--transform",
            str(transform),
        ]
    )
    assert status == 0
    written = sitk.ReadImage(str(output))
    assert written.GetSize() == reference.GetSize() and np.allclose(written.GetOrigin(), reference.GetOrigin())
    assert target_registration_errors(read_transform(transform), truth, reference, head_mask).mean() <= 0.5


def test_cli_register_writes_nothing_for_an_impossible_pair(tmp_path, aligned, capsys):
    reference, mr = aligned
    far_away = sitk.Image(mr)
    far_away.SetOrigin(tuple(o + 1000.0 for o in mr.GetOrigin()))
    sitk.WriteImage(reference, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(far_away, str(tmp_path / "elsewhere.nii.gz"))
    output, transform = tmp_path / "out.nii.gz", tmp_path / "out.tfm"
    status = main(
        [
            "register",
            str(tmp_path / "ct.nii.gz"),
            str(tmp_path / "elsewhere.nii.gz"),
            "-o",
            str(output),
            "--transform",
            str(transform),
        ]
    )
    assert status == 2
    assert "share no physical space" in capsys.readouterr().err
    assert not output.exists() and not transform.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "elsewhere.nii.gz"]


# --- real data: BraTS T1/T2 (co-registered), skipped without ../shared/data ---------------------


@pytest.fixture(scope="module")
def brats() -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    if not BRATS_CASE.is_dir():
        pytest.skip(f"BraTS data not found at {BRATS_CASE}")
    t1 = sitk.ReadImage(str(BRATS_CASE / "t1.nii.gz"))
    t2 = sitk.ReadImage(str(BRATS_CASE / "t2.nii.gz"))
    return t1, t2, sitk.GetArrayFromImage(t1) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_brats_t2_rigidly_moved_is_recovered_onto_t1(backend, brats):
    t1, t2, brain = brats
    centre = foreground_centre(t1, brain)
    truth = random_rigid(np.random.default_rng(11), centre, max_rotation_deg=15.0, max_translation_mm=20.0)
    result = register(t1, warp_with_known_transform(t2, truth), preset="rigid", backend=backend)
    rotation_error, _ = rigid_errors(result.transform, truth, centre)
    tre = target_registration_errors(result.transform, truth, t1, brain)
    assert rotation_error <= 0.5
    assert tre.mean() <= 0.5, f"mean TRE {tre.mean():.3f} mm"
