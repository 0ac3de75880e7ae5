"""Inputs that must be refused with a clear message, through the CLI, leaving no output file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.io import write_image


def _huge_nrrd(folder):
    """A detached NRRD header that claims 60000×60000×2000 float32 (~27 TiB) over a tiny file."""
    (folder / "tiny.raw").write_bytes(b"\0" * 64)
    header = folder / "huge.nhdr"
    header.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
        "sizes: 60000 60000 2000\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        "encoding: raw\nendian: little\nspace origin: (0,0,0)\ndata file: tiny.raw\n"
    )
    return header


def _write(folder, name, values, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing[: image.GetDimension()])
    write_image(image, folder / name)
    return folder / name


@pytest.fixture()
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = _write(folder, "good.nii.gz", rng.random((12, 20, 20)).astype(np.float32))
    paths = {
        "good": good,
        "huge": _huge_nrrd(folder),
        "nan": _write(folder, "nan.nii.gz", np.where(rng.random((12, 20, 20)) > 0.99, np.nan, 1.0).astype(np.float32)),
        "constant": _write(folder, "constant.nii.gz", np.zeros((12, 20, 20), np.float32)),
        "2d": _write(folder, "slice.nii.gz", rng.random((20, 20)).astype(np.float32)),
        "not_an_image": folder / "notes.nii.gz",
        "no_dicom": folder / "empty_dir",
    }
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(rng.random((12, 20, 20)).astype(np.float32))] * 2)
    write_image(four_d, folder / "four_d.nii.gz")
    paths["4d"] = folder / "four_d.nii.gz"
    rgb_volume = sitk.GetImageFromArray((rng.random((12, 20, 20, 3)) * 255).astype(np.uint8), isVector=True)
    write_image(rgb_volume, folder / "rgb_volume.nrrd")
    paths["rgb_volume"] = folder / "rgb_volume.nrrd"
    shifted = sitk.ReadImage(str(good))
    shifted.SetOrigin((5.0, 0.0, 0.0))
    write_image(shifted, folder / "shifted.nii.gz")
    paths["shifted"] = folder / "shifted.nii.gz"
    paths["not_an_image"].write_text("this is not an image")
    paths["no_dicom"].mkdir()
    (paths["no_dicom"] / "readme.txt").write_text("no DICOM here")
    return paths


# Every case runs with --registration none: with the default (auto) a grid mismatch is registered.
CASES = [
    ("missing path", "missing", "no such file"),
    ("beyond the memory budget", "huge", "GiB of memory"),
    ("NaN voxels", "nan", "NaN"),
    ("constant volume", "constant", "constant"),
    ("2D vs 3D", "2d", "2D"),
    ("not an image", "not_an_image", "not_an_image|could not read|Could not read"),
    ("directory without DICOM", "no_dicom", "DICOM"),
    ("4D volume", "4d", "4D"),
    ("RGB volume", "rgb_volume", "colour (RGB) volume"),
    ("mismatched grids without registration", "shifted", "--registration rigid"),
]


@pytest.mark.parametrize("label, key, message", CASES, ids=[case[0] for case in CASES])
def test_bad_moving_input_exits_2_with_message_and_no_output(inputs, tmp_path, capsys, label, key, message):
    moving = inputs.get(key, tmp_path / "does-not-exist.nii.gz")
    output = tmp_path / "out" / "fused.nii.gz"
    assert (
        main(
            [
                "fuse",
                str(inputs["good"]),
                str(moving),
                "-o",
                str(output),
                "--progress",
                "none",
                "--registration",
                "none",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("medfusion: error:")
    assert any(part.lower() in error.lower() for part in message.split("|")), error
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_inputs_are_never_modified(inputs, tmp_path):
    before = {path: path.read_bytes() for path in (inputs["good"],)}
    assert (
        main(["fuse", str(inputs["good"]), str(inputs["good"]), "-o", str(tmp_path / "f.nii.gz"), "--progress", "none"])
        == 0
    )
    assert all(path.read_bytes() == data for path, data in before.items())


def test_unknown_model_exits_2_and_writes_nothing(inputs, tmp_path, capsys):
    output = tmp_path / "f.nii.gz"
    assert main(["fuse", str(inputs["good"]), str(inputs["good"]), "-o", str(output), "--model", "densfuse"]) == 2
    assert "unknown model 'densfuse'" in capsys.readouterr().err and not output.exists()


def test_a_single_slice_volume_is_fused(tmp_path):
    rng = np.random.default_rng(1)
    a = _write(tmp_path, "a.nii.gz", rng.random((1, 30, 30)).astype(np.float32), spacing=(0.5, 0.5, 3.0))
    b = _write(tmp_path, "b.nii.gz", rng.random((1, 30, 30)).astype(np.float32), spacing=(0.5, 0.5, 3.0))
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.nii.gz"), "--progress", "none"]) == 0
    assert sitk.ReadImage(str(tmp_path / "f.nii.gz")).GetSize() == (30, 30, 1)


def test_several_dicom_series_must_be_chosen_then_fuse(inputs, tmp_path, capsys):
    from MedFusionLib.io.dicom import list_dicom_series, write_dicom_series

    good = sitk.ReadImage(str(inputs["good"]))
    other = sitk.Image(good)
    other.SetOrigin((0.0, 0.0, 40.0))
    write_dicom_series(good, tmp_path / "a", modality="MR", series_description="good")
    write_dicom_series(other, tmp_path / "b", modality="MR", series_description="other")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for folder in (tmp_path / "a", tmp_path / "b"):
        for index, file in enumerate(sorted(folder.iterdir())):
            file.rename(mixed / f"{folder.name}{index:03d}.dcm")
    output = tmp_path / "f.nii.gz"
    assert main(["fuse", str(inputs["good"]), str(mixed), "-o", str(output), "--progress", "none"]) == 2
    error = capsys.readouterr().err
    assert "--moving-series" in error and "good" in error and "other" in error and not output.exists()
    uid = next(series.uid for series in list_dicom_series(mixed) if series.description == "good")
    assert (
        main(["fuse", str(inputs["good"]), str(mixed), "-o", str(output), "--moving-series", uid, "--progress", "none"])
        == 0
    )
    assert sitk.ReadImage(str(output)).GetSize() == good.GetSize()


def test_no_physical_overlap_is_a_registration_error_without_output(inputs, tmp_path, capsys):
    far = sitk.ReadImage(str(inputs["good"]))
    far.SetOrigin((1000.0, 1000.0, 1000.0))
    write_image(far, tmp_path / "far.nii.gz")
    output = tmp_path / "f.nii.gz"
    code = main(
        [
            "fuse",
            str(inputs["good"]),
            str(tmp_path / "far.nii.gz"),
            "-o",
            str(output),
            "--registration",
            "rigid",
            "--progress",
            "none",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "share no physical space" in error and "--init" in error and not output.exists()


def test_the_advised_geometry_initialisation_registers_far_apart_scans(phantom_pair, tmp_path):
    """Following the no-overlap message's advice (--init geometry) works for a scan 1 m away."""
    far = sitk.Image(phantom_pair.mr)
    far.SetOrigin([o + 1000.0 for o in far.GetOrigin()])
    write_image(phantom_pair.ct, tmp_path / "ct.nii.gz")
    write_image(far, tmp_path / "far.nii.gz")
    output, registered = tmp_path / "f.nii.gz", tmp_path / "r.nii.gz"
    arguments = [
        "fuse",
        str(tmp_path / "ct.nii.gz"),
        str(tmp_path / "far.nii.gz"),
        "-o",
        str(output),
        "--registration",
        "rigid",
        "--init",
        "geometry",
        "--save-registered",
        str(registered),
        "--model",
        "average",
        "--progress",
        "none",
    ]
    assert main(arguments) == 0
    aligned = sitk.GetArrayFromImage(phantom_pair.mr)
    assert np.corrcoef(sitk.GetArrayFromImage(sitk.ReadImage(str(registered))).ravel(), aligned.ravel())[0, 1] > 0.95
