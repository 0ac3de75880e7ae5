"""Functional (PET/SPECT) colour fusion: colour maps, the functional phantom, ``--registration
resample``, the pipeline's colour path and the CLI; with the shared data, the Harvard pictures
against the fitted maps and the 2D round trip through them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.core.choices import FUNCTIONAL_COLOUR_MAPS
from MedFusionLib.core.errors import InputError
from MedFusionLib.fusion.functional import colourise, functional_bounds, resample_by_coordinates
from MedFusionLib.fusion.options import FusionOptions, OptionsError
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.imaging.colour import (
    COLOUR_MAPS,
    apply_colour_map,
    colour_map_luminance,
    rgb_to_ycbcr,
    scalar_from_colour,
)
from MedFusionLib.imaging.functional_phantom import HOT_SPOTS, make_functional_phantom
from MedFusionLib.imaging.normalization import normalize_intensity
from MedFusionLib.io import read_image, write_image

LESION_MM = (26.0, -22.0, 24.0)  # the head phantom's lesion (imaging/phantom.py)
VENTRICLE_MM = (-9.0, 4.0, 12.0)


@pytest.fixture(scope="module")
def pet() -> sitk.Image:
    return make_functional_phantom("pet", seed=2)


def value_at(image: sitk.Image, point_mm) -> np.ndarray:
    """The voxel of ``image`` at a physical point (scalar or RGB)."""
    return np.asarray(image[image.TransformPhysicalPointToIndex(point_mm)])


# -- colour maps --------------------------------------------------------------------------


def test_colour_maps_are_the_named_choices_and_start_black():
    assert tuple(COLOUR_MAPS) == FUNCTIONAL_COLOUR_MAPS
    for name, points in COLOUR_MAPS.items():
        points = np.asarray(points)
        assert points[0, 0] == 0.0 and points[-1, 0] == 1.0 and np.all(np.diff(points[:, 0]) > 0), name
        assert np.all(points[0, 1:] == 0), f"{name}: no uptake must be black (no chroma over the anatomy)"
        assert points[:, 1:].min() >= 0 and points[:, 1:].max() <= 255, name


@pytest.mark.parametrize("name", FUNCTIONAL_COLOUR_MAPS)
def test_a_colour_map_is_inverted_by_scalar_from_colour(name):
    values = np.linspace(0.0, 1.0, 1001)
    recovered, distance = scalar_from_colour(apply_colour_map(values, name), name)
    assert recovered.shape == values.shape and distance.max() < 4.0  # half a table step at most
    # Quantised to the inverse's 256 steps; a map that crossed itself would fail by far more.
    assert np.abs(recovered - values).max() <= 1.0 / 255.0 + 1e-6
    np.testing.assert_allclose(
        colour_map_luminance(values, name), rgb_to_ycbcr(apply_colour_map(values, name))[..., 0] / 255.0, atol=1e-5
    )


def test_unknown_colour_map_names_the_choices():
    with pytest.raises(InputError, match="harvard-pet"):
        apply_colour_map(np.zeros(3), "viridis")
    with pytest.raises(OptionsError, match="harvard-spect"):
        FusionOptions(functional="viridis")


def test_functional_options_round_trip_and_checks():
    options = FusionOptions(functional="hot", functional_range="0,12.5", registration="resample")
    assert FusionOptions.from_argv(options.to_argv()) == options
    assert FusionOptions.from_dict(options.to_dict()) == options
    assert options.functional_range_value == (0.0, 12.5)
    assert FusionOptions.from_argv(["--functional"]).functional == "harvard-pet"  # the flag alone
    with pytest.raises(OptionsError, match="needs --functional"):
        FusionOptions(functional_range="0,10")
    with pytest.raises(OptionsError, match="LOW < HIGH"):
        FusionOptions(functional="hot", functional_range="10,2")


# -- the functional phantom --------------------------------------------------------------


def test_functional_phantom_has_its_own_coarse_grid_and_the_head_in_place(pet, phantom_pair):
    assert pet.GetSpacing() == (4.0, 4.0, 4.0) and pet.GetPixelID() == sitk.sitkFloat32
    # Its own grid: the voxel centres do not coincide with the CT's.
    offset = (np.asarray(pet.GetOrigin()) - np.asarray(phantom_pair.ct.GetOrigin())) / np.asarray(
        phantom_pair.ct.GetSpacing()
    )
    assert np.any(np.abs(offset - np.round(offset)) > 0.1)
    values = sitk.GetArrayFromImage(pet)
    assert values.min() >= 0.0 and values[0, 0, 0] == 0.0  # no uptake in air
    # Same frame of reference: the lesion and a hot focus are where the anatomy has them.
    assert value_at(pet, LESION_MM) > 10.0 and value_at(pet, HOT_SPOTS[0][0]) > 10.0
    assert value_at(pet, VENTRICLE_MM) < 2.0  # CSF takes up almost nothing
    spect = make_functional_phantom("spect", seed=2)
    assert value_at(spect, LESION_MM) > value_at(spect, VENTRICLE_MM) + 3.0
    with pytest.raises(InputError, match="pet, spect"):
        make_functional_phantom("mri")


# -- resample by coordinates -------------------------------------------------------------


def test_resample_puts_the_functional_volume_on_the_reference_grid(pet, phantom_pair):
    resampled = resample_by_coordinates(phantom_pair.mr, pet)
    assert resampled.GetSize() == phantom_pair.mr.GetSize() and resampled.GetSpacing() == phantom_pair.mr.GetSpacing()
    # Each reference voxel holds the functional volume interpolated at that voxel's physical point.
    for index in [(5, 7, 9), (24, 30, 25), (30, 20, 12), tuple(resampled.TransformPhysicalPointToIndex(LESION_MM))]:
        point = resampled.TransformIndexToPhysicalPoint(index)
        assert resampled[index] == pytest.approx(pet.EvaluateAtPhysicalPoint(point, sitk.sitkLinear), abs=1e-4)
    assert value_at(resampled, LESION_MM) > 10.0


def test_resample_refuses_volumes_that_do_not_overlap(pet, phantom_pair):
    elsewhere = sitk.Image(pet)
    elsewhere.SetOrigin(tuple(o + 900.0 for o in pet.GetOrigin()))  # another patient position entirely
    with pytest.raises(InputError, match="not in one frame of reference.*--registration rigid"):
        resample_by_coordinates(phantom_pair.mr, elsewhere)
    with pytest.raises(InputError, match="frame of reference"):
        fuse_volumes(
            phantom_pair.mr, elsewhere, registration="resample", functional="harvard-pet", model="average", device="cpu"
        )


# -- the colour fusion ---------------------------------------------------------------------


def test_functional_fusion_is_rgb_on_the_reference_grid_with_uptake_in_colour(pet, phantom_pair):
    mr = phantom_pair.mr
    result = fuse_volumes(mr, pet, model="average", registration="resample", functional="harvard-pet", device="cpu")
    fused = result.fused
    assert fused.GetPixelID() == sitk.sitkVectorUInt8 and fused.GetNumberOfComponentsPerPixel() == 3
    assert (fused.GetSize(), fused.GetSpacing(), fused.GetOrigin(), fused.GetDirection()) == (
        mr.GetSize(),
        mr.GetSpacing(),
        mr.GetOrigin(),
        mr.GetDirection(),
    )
    assert "harvard-pet" in result.windows["moving"]
    # The hot lesion is red-magenta (the top of the map); without uptake (air in the corner of the
    # grid) the result is the fused anatomy in grey; low uptake (a ventricle, blurred) is blue.
    red, green, blue = value_at(fused, LESION_MM).astype(int)
    assert red > green + 80 and red >= blue  # red to magenta: green is what is missing
    assert np.ptp(np.asarray(fused[0, 0, 0]).astype(int)) <= 1
    red, green, blue = value_at(fused, VENTRICLE_MM).astype(int)
    assert blue > red + 40
    # With the average rule the luminance is exactly the mean of the MR and the colour's Y,
    # and the chroma is the colour's: check where the colour stayed in gamut.
    low, high = functional_bounds(sitk.GetArrayViewFromImage(pet))
    functional = sitk.GetArrayFromImage(resample_by_coordinates(mr, pet))
    colour_y = colour_map_luminance(np.clip(functional / high, 0, 1), "harvard-pet")
    mr_values = normalize_intensity(sitk.GetArrayFromImage(mr))
    ycbcr = rgb_to_ycbcr(sitk.GetArrayFromImage(fused).astype(np.float32))
    expected_colour = rgb_to_ycbcr(apply_colour_map(np.clip(functional / high, 0, 1), "harvard-pet"))
    in_gamut = np.all((sitk.GetArrayFromImage(fused) > 2) & (sitk.GetArrayFromImage(fused) < 253), axis=-1)
    assert in_gamut.mean() > 0.3
    np.testing.assert_allclose(ycbcr[..., 0][in_gamut], (255 * (mr_values + colour_y) / 2)[in_gamut], atol=2.0)
    np.testing.assert_allclose(ycbcr[..., 1:][in_gamut], expected_colour[..., 1:][in_gamut], atol=2.5)


def test_functional_range_sets_the_scale(pet, phantom_pair):
    """An SUV range twice the lesion's uptake puts the lesion mid-map (yellow-green), not at its top."""
    wide = fuse_volumes(
        phantom_pair.mr,
        pet,
        model="average",
        registration="resample",
        functional="harvard-pet",
        functional_range="0,30",
        device="cpu",
    )
    red, green, _blue = value_at(wide.fused, LESION_MM).astype(int)
    assert green > red - 60 and green > 120


def test_emfusion_functional_fusion_keeps_the_hot_focus_in_colour(pet, phantom_pair):
    result = fuse_volumes(
        phantom_pair.mr,
        pet,
        model="emfusion",
        registration="resample",
        functional="harvard-pet",
        device="cpu",
        source_map=True,
    )
    red, green, _ = value_at(result.fused, HOT_SPOTS[0][0]).astype(int)
    assert red > green + 50  # a hot focus the MR does not show stays red, not bright grey anatomy
    share = sitk.GetArrayFromImage(result.source_map)
    assert share.shape == sitk.GetArrayViewFromImage(phantom_pair.mr).shape and 0.0 <= share.min() <= share.max() <= 1.0


def test_colourise_keeps_luminance_and_black_is_grey():
    fused = np.linspace(0.0, 1.0, 60, dtype=np.float32).reshape(3, 4, 5)
    rgb = colourise(fused, np.zeros_like(fused), (0.0, 1.0), "hot")  # no uptake: grey levels
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 5, 3)
    assert np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])
    np.testing.assert_allclose(rgb[..., 0], np.rint(fused * 255), atol=1)


def test_functional_refuses_a_colour_moving_image_and_an_empty_volume(phantom_pair):
    picture = sitk.GetImageFromArray(
        np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), isVector=True
    )
    gray = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match="already in colour"):
        fuse_volumes(gray, picture, functional="harvard-pet", model="average", device="cpu")
    with pytest.raises(InputError, match="--functional-range"):
        functional_bounds(-np.ones((4, 4, 4)))


def test_cli_writes_rgb_nifti_and_the_source_map(pet, phantom_pair, tmp_path, capsys):
    mr_path, pet_path = tmp_path / "mr.nii.gz", tmp_path / "pet.nii.gz"
    write_image(phantom_pair.mr, mr_path)
    write_image(pet, pet_path)
    output, share = tmp_path / "fused.nii.gz", tmp_path / "share.nrrd"
    argv = [
        "fuse",
        str(mr_path),
        str(pet_path),
        "-o",
        str(output),
        "--functional",
        "--registration",
        "resample",
        "--model",
        "average",
        "--source-map",
        str(share),
        "--progress",
        "none",
    ]
    assert main(argv) == 0
    assert "functional, colour map harvard-pet" in capsys.readouterr().out
    fused = read_image(output)
    assert fused.GetNumberOfComponentsPerPixel() == 3 and fused.GetSize() == phantom_pair.mr.GetSize()
    values = sitk.GetArrayFromImage(read_image(share))
    np.testing.assert_allclose(values, 0.5, atol=1e-5)  # the average rule
    # A transform needs a registration; resample is none.
    assert main(argv[:-2] + ["--overwrite", "--save-transform", str(tmp_path / "t.tfm"), "--progress", "none"]) == 2
    assert "needs a registration" in capsys.readouterr().err


# -- the Harvard pictures (shared data) ----------------------------------------------------


def harvard_ids(data, task: str, split: str) -> list[str]:
    with open(data / "harvard" / "pairs.csv", newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle) if row["task"] == task and row["split"] == split]


@pytest.mark.parametrize(
    "name, task, modality", [("harvard-pet", "PET-MRI", "PET"), ("harvard-spect", "SPECT-MRI", "SPECT")]
)
def test_harvard_pictures_follow_the_fitted_maps(shared_data, name, task, modality):
    """Fitted on the train split; the val pictures' colours lie as close to the map (RGB distance,
    0-255 units) as bench/fit_colour_maps.py measured, and far closer than to another map."""
    ids = harvard_ids(shared_data, task, "val")[::4]
    pixels = np.concatenate(
        [
            sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "harvard" / task / modality / f"{i}.png"))).reshape(
                -1, 3
            )
            for i in ids
        ]
    )
    pixels = pixels[pixels.astype(int).sum(axis=1) > 24]
    _, distance = scalar_from_colour(pixels, name)
    _, other = scalar_from_colour(pixels, "hot")
    assert distance.mean() < 12.0 and np.percentile(distance, 95) < 45.0
    assert other.mean() > 2 * distance.mean()


def test_harvard_pet_pair_fused_through_the_map_matches_the_picture_fusion(shared_data):
    """A Harvard PET picture's uptake, recovered through harvard-pet and fused with --functional,
    gives the literature's YCbCr fusion of the picture itself."""
    case = harvard_ids(shared_data, "PET-MRI", "val")[2]
    root = shared_data / "harvard" / "PET-MRI"
    mri, picture = read_image(root / "MRI" / f"{case}.png"), read_image(root / "PET" / f"{case}.png")
    uptake, _ = scalar_from_colour(sitk.GetArrayFromImage(picture)[..., :3], "harvard-pet")
    uptake_image = sitk.GetImageFromArray(uptake)
    uptake_image.CopyInformation(mri)
    for model in ("average", "emfusion"):
        standard = sitk.GetArrayFromImage(fuse_volumes(mri, picture, model=model, device="cpu").fused).astype(int)
        through_map = fuse_volumes(
            mri, uptake_image, model=model, device="cpu", functional="harvard-pet", functional_range="0,1"
        )
        assert through_map.fused.GetSize() == mri.GetSize()
        difference = np.abs(standard - sitk.GetArrayFromImage(through_map.fused).astype(int))
        assert difference.mean() < 1.0 and np.percentile(difference, 99) < 16, model


# -- the hard cases: real HU, oblique grids, a reference stored turned 180°, another session ------


def test_pet_ct_in_raw_hu_with_padding_and_table_through_resample():
    """A hybrid PET/CT: int16 HU with -2048 padding and a table, PET on its own oblique 4 mm grid."""
    from MedFusionLib.imaging.phantom import make_clinical_pair, rigid_motion

    pair = make_clinical_pair(size=(64, 64, 48), spacing=(3.75, 3.75, 3.75))
    oblique = rigid_motion((20.0, -10.0, 30.0), (0.0, 0.0, 0.0)).GetMatrix()
    pet = make_functional_phantom("pet", direction=oblique, seed=4)
    result = fuse_volumes(
        pair.ct, pet, registration="resample", functional="harvard-pet", model="emfusion", device="cpu"
    )
    for point in (LESION_MM, HOT_SPOTS[0][0]):
        red, green, blue = value_at(result.fused, point).astype(int)
        assert red > green + 80 and red >= blue, (point, red, green, blue)
    # Outside the reconstruction circle (padding) and on the table there is no uptake: no colour.
    corner = np.asarray(result.fused[0, 0, 24]).astype(int)
    assert np.ptp(corner) <= 1
    table = value_at(result.fused, (0.0, 108.0, 0.0)).astype(int)
    assert np.ptp(table) <= 1


def test_reference_stored_turned_180_degrees_keeps_uptake_on_its_anatomy(pet, phantom_pair):
    """The same physical space stored with a direction matrix turned 180° about the head-foot axis:
    resampling by coordinates must put the hot lesion where it is, not mirrored."""
    mr = phantom_pair.mr
    turned = sitk.Image(mr.GetSize(), mr.GetPixelID())
    turned.SetSpacing(mr.GetSpacing())
    direction = np.diag([-1.0, -1.0, 1.0])
    turned.SetDirection(direction.ravel().tolist())
    turned.SetOrigin((direction @ (-(np.asarray(mr.GetSize()) - 1) * np.asarray(mr.GetSpacing()) / 2.0)).tolist())
    turned = sitk.Resample(mr, turned, sitk.Transform(), sitk.sitkLinear, 0.0)
    result = fuse_volumes(turned, pet, registration="resample", functional="harvard-pet", model="average", device="cpu")
    red, green, _ = value_at(result.fused, LESION_MM).astype(int)
    assert red > green + 80
    mirrored = (-LESION_MM[0], -LESION_MM[1], LESION_MM[2])  # where a lost flip would put it
    red, green, _ = value_at(result.fused, mirrored).astype(int)
    assert not red > green + 80


def test_pet_from_another_session_registers_rigidly_onto_the_mr(phantom_pair):
    from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT

    moved = make_functional_phantom("pet", misalignment=DEMO_MISALIGNMENT, seed=4)
    result = fuse_volumes(
        phantom_pair.mr, moved, registration="rigid", functional="harvard-pet", model="average", device="cpu"
    )
    found = np.asarray(result.registration.transform.TransformPoint(LESION_MM))
    assert (
        np.linalg.norm(found - np.asarray(DEMO_MISALIGNMENT.TransformPoint(LESION_MM))) < 3.0
    )  # mm, under a PET voxel
    red, green, _ = value_at(result.fused, LESION_MM).astype(int)
    assert red > green + 80


def test_batch_fuses_functional_cases_in_colour_and_records_a_refused_one(pet, phantom_pair, tmp_path):
    """`medfusion batch` takes the same options: an RGB output per case; a PET that does not overlap
    its MR is that case's error, and the other case is still done."""
    from MedFusionLib.fusion.batch import run_batch

    write_image(phantom_pair.mr, tmp_path / "mr.nii.gz")
    write_image(pet, tmp_path / "pet.nii.gz")
    elsewhere = sitk.Image(pet)
    elsewhere.SetOrigin(tuple(o + 900.0 for o in pet.GetOrigin()))
    write_image(elsewhere, tmp_path / "pet_elsewhere.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("reference,moving,output\nmr.nii.gz,pet.nii.gz,a.nrrd\nmr.nii.gz,pet_elsewhere.nii.gz,b.nrrd\n")
    options = FusionOptions(functional="hot", registration="resample", model="average", device="cpu")
    summary = run_batch(manifest, tmp_path / "out", options)
    statuses = {outcome.case.output.name: (outcome.status, outcome.error) for outcome in summary.outcomes}
    assert statuses["a.nrrd"][0] == "done"
    assert statuses["b.nrrd"][0] == "failed" and "frame of reference" in statuses["b.nrrd"][1]
    fused = read_image(tmp_path / "out" / "a.nrrd")
    assert fused.GetNumberOfComponentsPerPixel() == 3 and fused.GetSize() == phantom_pair.mr.GetSize()
    assert not (tmp_path / "out" / "b.nrrd").exists()
