"""Tests of MedFusionLib.io: formats, geometry, DICOM series, atomic output, colour."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from MedFusionLib.core.errors import InputError, OutputExistsError
from MedFusionLib.core.files import atomic_output, atomic_output_directory
from MedFusionLib.imaging.colour import rgb_to_ycbcr, ycbcr_to_rgb
from MedFusionLib.io import read_image, write_image
from MedFusionLib.io.dicom import list_dicom_series, write_dicom_series

SPACING = (0.8, 1.1, 2.5)
ORIGIN = (12.5, -40.25, 33.0)


def rotation(about_x: float, about_y: float, about_z: float) -> np.ndarray:
    """A proper rotation matrix (det +1), angles in radians."""
    cx, sx, cy, sy, cz, sz = (np.cos(about_x), np.sin(about_x), np.cos(about_y), np.sin(about_y),
                              np.cos(about_z), np.sin(about_z))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_volume(array: np.ndarray, direction: np.ndarray | None = None) -> sitk.Image:
    """``array`` (z, y, x) as an image with oblique direction, anisotropic spacing, offset origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(tuple((rotation(0.3, -0.2, 0.5) if direction is None else direction).ravel()))
    return image


def random_volume(dtype=np.float32, seed: int = 0) -> sitk.Image:
    values = np.random.default_rng(seed).normal(100.0, 40.0, size=(7, 20, 30))
    return oblique_volume(values.astype(dtype))


def assert_same_geometry(actual: sitk.Image, expected: sitk.Image, tolerance: float) -> None:
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=tolerance)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=tolerance)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=tolerance)


def entries(directory: Path) -> list[str]:
    """Everything in ``directory``, hidden entries (temporaries) included."""
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------
# Volumes


@pytest.mark.parametrize(
    ("name", "expected_files"),
    [
        ("F.nii", ["F.nii"]),
        ("F.nii.gz", ["F.nii.gz"]),
        ("F.nrrd", ["F.nrrd"]),
        ("F.nhdr", ["F.nhdr", "F.raw.gz"]),
        ("F.mha", ["F.mha"]),
        ("F.mhd", ["F.mhd", "F.zraw"]),
    ],
)
def test_volume_round_trip_keeps_oblique_geometry_and_values(tmp_path, name, expected_files):
    image = random_volume()
    write_image(image, tmp_path / name)
    back = read_image(tmp_path / name)
    assert_same_geometry(back, image, tolerance=1e-4)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # Detached headers travel with their data file, and no temporary is left behind.
    assert entries(tmp_path) == expected_files


def test_extension_is_case_insensitive(tmp_path):
    image = random_volume(np.int16)
    write_image(image, tmp_path / "UPPER.NII.GZ")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(tmp_path / "UPPER.NII.GZ")), sitk.GetArrayFromImage(image)
    )


def test_uncompressed_write_differs_from_compressed(tmp_path):
    image = oblique_volume(np.zeros((7, 20, 30), np.float32))
    write_image(image, tmp_path / "small.nrrd", compress=True)
    write_image(image, tmp_path / "large.nrrd", compress=False)
    assert (tmp_path / "small.nrrd").stat().st_size < (tmp_path / "large.nrrd").stat().st_size


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_series_round_trip_of_float_volume(tmp_path):
    image = random_volume(np.float32)
    write_dicom_series(image, tmp_path / "series", modality="MR", series_description="fused T1+T2")
    files = sorted((tmp_path / "series").iterdir())
    assert len(files) == image.GetSize()[2]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({h.StudyInstanceUID for h in headers}) == 1
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == len(files)

    back = read_image(tmp_path / "series")
    assert_same_geometry(back, image, tolerance=1e-3)
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    bound = (values.max() - values.min()) / 65534 / 2  # half a quantisation step
    error = np.abs(sitk.GetArrayFromImage(back) - values).max()
    assert error <= bound * 1.001
    assert error > 0  # floats really went through the 16-bit rescale

    # pydicom, independently of ITK, decodes the same real values from the first file.
    first = pydicom.dcmread(files[0])
    decoded = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.abs(decoded - values[0]).max() <= bound * 1.001

    (info,) = list_dicom_series(tmp_path / "series")
    assert (info.modality, info.description, len(info.files)) == ("MR", "fused T1+T2", len(files))


def test_dicom_series_stores_integer_volume_exactly(tmp_path):
    ct_like = np.random.default_rng(1).integers(-1024, 3000, size=(7, 20, 30)).astype(np.int16)
    image = oblique_volume(ct_like)
    write_dicom_series(image, tmp_path / "ct", modality="CT")
    back = read_image(tmp_path / "ct")
    assert_same_geometry(back, image, tolerance=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), ct_like)


def test_dicom_series_of_left_handed_volume_describes_the_same_voxels(tmp_path):
    mirrored = rotation(0.1, 0.2, -0.4) @ np.diag([1.0, 1.0, -1.0])  # det -1
    image = oblique_volume(np.arange(7 * 20 * 30, dtype=np.int16).reshape(7, 20, 30), mirrored)
    write_dicom_series(image, tmp_path / "series")
    back = read_image(tmp_path / "series")
    # Same physical grid, indexed from the other end: resampling onto it changes nothing.
    on_original_grid = sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_original_grid), sitk.GetArrayFromImage(image))


def test_dicom_series_refuses_sheared_grid_and_vector_images(tmp_path):
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetDirection(tuple(sheared.ravel()))
    with pytest.raises(InputError, match="orthonormal"):
        write_dicom_series(image, tmp_path / "sheared")
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    with pytest.raises(InputError, match="3D scalar"):
        write_dicom_series(rgb, tmp_path / "rgb")
    assert entries(tmp_path) == []


def test_dicom_slices_are_ordered_by_position_not_file_name(tmp_path):
    image = oblique_volume(np.arange(7 * 20 * 30, dtype=np.int16).reshape(7, 20, 30))
    write_dicom_series(image, tmp_path / "series")
    files = sorted((tmp_path / "series").iterdir())
    for file, new_name in zip(files, [f"z{9 - i}.dcm" for i in range(len(files))]):
        file.rename(file.with_name(new_name))  # names now sort in reverse slice order
    back = read_image(tmp_path / "series")
    assert_same_geometry(back, image, tolerance=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_dicom_file_without_extension_reads_its_series(tmp_path):
    image = random_volume(np.int16)
    write_dicom_series(image, tmp_path / "series")
    first = sorted((tmp_path / "series").iterdir())[0]
    first.rename(first.with_name("IM0001"))
    back = read_image(tmp_path / "series" / "IM0001")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_dicom_series_with_a_missing_slice_is_an_error(tmp_path, damage):
    write_dicom_series(random_volume(np.int16), tmp_path / "series")
    middle = sorted((tmp_path / "series").iterdir())[3]
    if damage == "delete":
        middle.unlink()
    else:
        middle.write_bytes(middle.read_bytes()[:-500])
    with pytest.raises(InputError, match="not evenly spaced.*missing or damaged"):
        read_image(tmp_path / "series")


def two_series_directory(tmp_path: Path) -> tuple[Path, sitk.Image, sitk.Image]:
    """One directory holding a CT-like and an MR-like series of different sizes."""
    ct = oblique_volume(np.full((5, 20, 30), 7, np.int16))
    mr = sitk.GetImageFromArray(np.full((4, 10, 12), 300, np.int16))
    write_dicom_series(ct, tmp_path / "a", modality="CT", series_description="head CT")
    write_dicom_series(mr, tmp_path / "b", modality="MR", series_description="T1 axial")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for prefix in ("a", "b"):
        for file in (tmp_path / prefix).iterdir():
            shutil.move(file, mixed / f"{prefix}_{file.name}")
    return mixed, ct, mr


def test_directory_with_two_series_lists_them_and_series_uid_picks_one(tmp_path):
    mixed, ct, mr = two_series_directory(tmp_path)
    series = {info.modality: info for info in list_dicom_series(mixed)}
    assert set(series) == {"CT", "MR"}
    with pytest.raises(InputError) as caught:
        read_image(mixed)
    message = str(caught.value)
    for info in series.values():
        assert info.uid in message
        assert info.description in message
        assert f"{len(info.files)} files" in message
    assert "series_uid=" in message and "--reference-series" in message

    picked = read_image(mixed, series_uid=series["MR"].uid)
    assert picked.GetSize() == mr.GetSize()
    assert np.all(sitk.GetArrayFromImage(picked) == 300)
    picked = read_image(mixed, series_uid=series["CT"].uid)
    assert_same_geometry(picked, ct, tolerance=1e-3)
    # One file stands for its own series.
    one_file = series["CT"].files[2]
    assert read_image(one_file).GetSize() == ct.GetSize()

    with pytest.raises(InputError, match="no DICOM series with UID 1.2.3") as caught:
        read_image(mixed, series_uid="1.2.3")
    assert series["CT"].uid in str(caught.value)


def test_directory_without_dicom_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "patient1").mkdir()
    with pytest.raises(InputError, match="no DICOM series") as caught:
        read_image(tmp_path)
    assert "patient1" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# 2D pictures


@pytest.mark.parametrize("name", ["gray.png", "gray.bmp", "gray.tif"])
def test_grayscale_picture_round_trip(tmp_path, name):
    array = np.random.default_rng(2).integers(0, 256, size=(17, 23), dtype=np.uint8)
    write_image(sitk.GetImageFromArray(array), tmp_path / name)
    back = read_image(tmp_path / name)
    assert back.GetDimension() == 2 and back.GetNumberOfComponentsPerPixel() == 1
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)


def test_rgb_png_round_trip(tmp_path):
    array = np.random.default_rng(3).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    write_image(sitk.GetImageFromArray(array, isVector=True), tmp_path / "colour.png")
    back = read_image(tmp_path / "colour.png")
    assert back.GetNumberOfComponentsPerPixel() == 3 and back.GetPixelID() == sitk.sitkVectorUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.add.outer(np.arange(32), np.arange(40)).astype(np.uint8) * 3
    write_image(sitk.GetImageFromArray(smooth), tmp_path / "smooth.jpg")
    back = sitk.GetArrayFromImage(read_image(tmp_path / "smooth.jpg")).astype(float)
    assert np.abs(back - smooth).mean() < 2.0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_tiff_keeps_wide_scalar_types(tmp_path, dtype):
    array = (np.random.default_rng(4).random((9, 11)) * 60000).astype(dtype)
    write_image(sitk.GetImageFromArray(array), tmp_path / "wide.tiff")
    back = sitk.GetArrayFromImage(read_image(tmp_path / "wide.tiff"))
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


def test_rgb_picture_with_equal_channels_reads_as_scalar(tmp_path):
    gray = np.random.default_rng(5).integers(0, 256, size=(12, 14), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "gray_as_rgb.png")
    back = read_image(tmp_path / "gray_as_rgb.png")
    assert back.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), gray)


def test_rgba_drops_alpha_and_palette_becomes_rgb_or_gray(tmp_path):
    rgba = np.random.default_rng(6).integers(0, 256, size=(8, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    back = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), rgba[..., :3])

    indices = np.arange(8 * 9, dtype=np.uint8).reshape(8, 9) % 4
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 30]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette(colours.ravel().tolist())
    palette.save(tmp_path / "palette.png")
    back = read_image(tmp_path / "palette.png")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), colours[indices])

    grays = np.array([[v, v, v] for v in (0, 50, 100, 250)], np.uint8)
    palette.putpalette(grays.ravel().tolist())
    palette.save(tmp_path / "gray_palette.png")
    back = read_image(tmp_path / "gray_palette.png")
    assert back.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), grays[indices, 0])


def test_float_picture_is_scaled_from_unit_range_rounded_and_clipped(tmp_path):
    values = np.array([[-0.2, 0.0, 0.5, 0.4 / 255, 1.0, 1.3]], np.float32)
    write_image(sitk.GetImageFromArray(values), tmp_path / "unit.png")
    back = sitk.GetArrayFromImage(read_image(tmp_path / "unit.png"))
    np.testing.assert_array_equal(back, [[0, 0, 128, 0, 255, 255]])


def test_integer_picture_outside_8_bits_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.array([[0, 300]], np.int16))
    with pytest.raises(InputError, match=r"0\.\.300.*0\.\.255"):
        write_image(image, tmp_path / "wide.png")
    assert entries(tmp_path) == []


def test_volume_to_png_is_refused_with_advice(tmp_path):
    with pytest.raises(InputError) as caught:
        write_image(random_volume(), tmp_path / "volume.png")
    assert "3D" in str(caught.value) and ".nii.gz" in str(caught.value)
    assert entries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Errors on reading


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputError, match="no such file") as caught:
        read_image(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(caught.value)


def test_unsupported_extension_lists_supported_ones(tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"\0" * 200)
    with pytest.raises(InputError, match="unsupported") as caught:
        read_image(tmp_path / "scan.xyz")
    for extension in (".nii.gz", ".nrrd", ".mha", ".png", "DICOM"):
        assert extension in str(caught.value)
    with pytest.raises(InputError, match="unsupported"):
        write_image(random_volume(), tmp_path / "out.xyz")


def test_corrupt_file_is_an_input_error(tmp_path):
    write_image(random_volume(), tmp_path / "whole.nii.gz")
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 3])
    # ITK alone would return zeros for the missing voxels; this must be an error.
    with pytest.raises(InputError, match="broken.nii.gz as NIfTI: the file is truncated"):
        read_image(tmp_path / "broken.nii.gz")
    write_image(random_volume(), tmp_path / "whole.nii")
    data = (tmp_path / "whole.nii").read_bytes()
    (tmp_path / "broken.nii").write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match="broken.nii as NIfTI: the file is truncated"):
        read_image(tmp_path / "broken.nii")
    (tmp_path / "header.nii").write_bytes(data[:100])
    with pytest.raises(InputError, match="header.nii as NIfTI"):
        read_image(tmp_path / "header.nii")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="Could not read .*broken.png as PNG"):
        read_image(tmp_path / "broken.png")


def test_series_uid_for_a_non_dicom_file_is_an_error(tmp_path):
    write_image(random_volume(), tmp_path / "v.nrrd")
    with pytest.raises(InputError, match="not a DICOM"):
        read_image(tmp_path / "v.nrrd", series_uid="1.2.3")


def test_write_image_points_dicom_to_write_dicom_series(tmp_path):
    with pytest.raises(InputError, match="write_dicom_series"):
        write_image(random_volume(), tmp_path / "slice.dcm")


# ---------------------------------------------------------------------------------------------
# Atomic output


@pytest.mark.parametrize("interruption", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_failed_write_leaves_neither_target_nor_temporary(tmp_path, interruption):
    target = tmp_path / "out" / "F.nii.gz"
    with pytest.raises(type(interruption)):
        with atomic_output(target) as temporary:
            assert temporary.name.endswith(".nii.gz") and temporary != target
            assert tmp_path / "out" in temporary.parents
            sitk.WriteImage(random_volume(), str(temporary))
            raise interruption
    assert entries(tmp_path / "out") == []


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "F.nrrd"
    write_image(random_volume(seed=1), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("cancelled")
    assert target.read_bytes() == before
    assert entries(tmp_path) == ["F.nrrd"]


def test_overwrite_is_refused_without_flag_and_done_with_it(tmp_path):
    target = tmp_path / "F.nii.gz"
    write_image(random_volume(seed=1), target)
    before = target.read_bytes()
    with pytest.raises(OutputExistsError) as caught:
        write_image(random_volume(seed=2), target)
    assert "--overwrite" in str(caught.value) and "overwrite=True" in str(caught.value)
    assert target.read_bytes() == before
    write_image(random_volume(seed=2), target, overwrite=True)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(target)), sitk.GetArrayFromImage(random_volume(seed=2))
    )
    assert entries(tmp_path) == ["F.nii.gz"]


def test_existing_companion_data_file_is_not_overwritten(tmp_path):
    (tmp_path / "F.zraw").write_bytes(b"someone else's data")
    with pytest.raises(OutputExistsError, match="F.zraw"):
        write_image(random_volume(), tmp_path / "F.mhd")
    assert entries(tmp_path) == ["F.zraw"]
    assert (tmp_path / "F.zraw").read_bytes() == b"someone else's data"


def test_missing_parents_are_created_and_a_file_in_the_way_is_named(tmp_path):
    write_image(random_volume(), tmp_path / "a" / "b" / "F.mha")
    assert (tmp_path / "a" / "b" / "F.mha").is_file()
    (tmp_path / "blocker").write_text("a file, not a directory")
    with pytest.raises(InputError, match="blocker"):
        write_image(random_volume(), tmp_path / "blocker" / "F.mha")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="locked"):
            write_image(random_volume(), locked / "F.nii.gz")
    finally:
        locked.chmod(0o700)


def test_atomic_output_directory_publishes_only_on_success(tmp_path):
    target = tmp_path / "series"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_directory(target) as staging:
            (staging / "1.dcm").write_bytes(b"x")
            raise KeyboardInterrupt
    assert entries(tmp_path) == []

    with atomic_output_directory(target) as staging:
        (staging / "1.dcm").write_bytes(b"first")
    assert entries(target) == ["1.dcm"]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_output_directory(target) as staging:
            pass
    with atomic_output_directory(target, overwrite=True) as staging:
        (staging / "2.dcm").write_bytes(b"second")
    assert entries(target) == ["2.dcm"]  # the old series is gone, not mixed in
    assert entries(tmp_path) == ["series"]


def test_dicom_series_into_existing_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    write_dicom_series(random_volume(np.int16), tmp_path / "empty")
    assert len(list((tmp_path / "empty").iterdir())) == 7
    with pytest.raises(OutputExistsError):
        write_dicom_series(random_volume(np.int16), tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Colour


def test_ycbcr_round_trip_on_random_colours():
    rgb = np.random.default_rng(7).uniform(0, 255, size=(4, 5, 6, 3))
    ycbcr = rgb_to_ycbcr(rgb)
    assert ycbcr.shape == rgb.shape
    assert np.abs(ycbcr_to_rgb(ycbcr) - rgb).max() < 0.5
    assert np.abs(ycbcr_to_rgb(ycbcr) - rgb).max() < 1e-9  # in fact exact up to rounding


def test_ycbcr_known_values():
    colours = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    ycbcr = rgb_to_ycbcr(colours)
    np.testing.assert_allclose(ycbcr[0], [255, 128, 128], atol=1e-9)
    np.testing.assert_allclose(ycbcr[1], [0, 128, 128], atol=1e-9)
    # The JFIF formulas with their published 4-digit coefficients.
    r, g, b = colours[2:].astype(float).T
    jfif = np.stack([0.299 * r + 0.587 * g + 0.114 * b,
                     128 - 0.1687 * r - 0.3313 * g + 0.5 * b,
                     128 + 0.5 * r - 0.4187 * g - 0.0813 * b], axis=-1)
    np.testing.assert_allclose(ycbcr[2:], jfif, atol=0.02)


def test_ycbcr_keeps_float32_and_checks_shape():
    assert rgb_to_ycbcr(np.zeros((2, 3), np.float32)).dtype == np.float32
    assert ycbcr_to_rgb(np.zeros((2, 3), np.uint8)).dtype == np.float64
    with pytest.raises(InputError, match=r"\(\.\.\., 3\)"):
        rgb_to_ycbcr(np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------
# Real data


def first_pair(harvard: Path, task: str) -> tuple[Path, Path]:
    with open(harvard / "pairs.csv", newline="") as file:
        row = next(r for r in csv.DictReader(file) if r["task"] == task)
    folder = harvard / task
    return folder / "MRI" / f"{row['id']}.png", folder / row["other_modality"] / f"{row['id']}.png"


def test_harvard_pairs_read(shared_data):
    mri, ct = (read_image(p) for p in first_pair(shared_data / "harvard", "CT-MRI"))
    for image in (mri, ct):
        assert image.GetSize() == (256, 256)
        assert image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() == sitk.sitkUInt8
    mri, pet = (read_image(p) for p in first_pair(shared_data / "harvard", "PET-MRI"))
    assert mri.GetNumberOfComponentsPerPixel() == 1
    assert pet.GetSize() == (256, 256) and pet.GetNumberOfComponentsPerPixel() == 3
    luma = rgb_to_ycbcr(sitk.GetArrayFromImage(pet))[..., 0]
    assert 0 <= luma.min() and luma.max() <= 255 and luma.std() > 1  # a real, non-empty picture
