"""The fused series as DICOM in the reference's study (MedFusionLib.io.dicom_export, medfusion fuse --format dicom).

The reference is a synthetic CT written as a scanner writes it (Testing/dicom_phantoms.py), straight
and oblique; every written file is checked by dciodvfy (dicom3tools) where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_phantoms import write_ct_series

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError, OutputExistsError
from MedFusionLib.io import read_image
from MedFusionLib.io.dicom_export import (
    CT_IMAGE_STORAGE,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    PatientAttributes,
    target_study,
    write_derived_series,
)

pytest.importorskip("highdicom")
DCIODVFY = shutil.which("dciodvfy")
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "abdomen_ct_dicom"
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")  # fmt: skip
# An oblique reference: rows turned 20 degrees about the patient's S axis, then columns tilted 15 degrees.
_A, _B = np.radians(20), np.radians(15)
OBLIQUE_ROW = (np.cos(_A), np.sin(_A), 0.0)
OBLIQUE_COLUMN = tuple(np.cos(_B) * np.array([-np.sin(_A), np.cos(_A), 0.0]) + np.sin(_B) * np.array([0, 0, 1.0]))


def headers(directory: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(directory.iterdir())]


def fused_like(reference: sitk.Image) -> sitk.Image:
    """A float32 [0, 1] volume on the reference grid, as fusion returns it."""
    fused = sitk.RescaleIntensity(sitk.Cast(reference, sitk.sitkFloat32), 0.0, 1.0)
    return sitk.Cast(fused, sitk.sitkFloat32)


def assert_same_grid(image: sitk.Image, reference: sitk.Image, tolerance: float = 1e-3) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=tolerance)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=tolerance)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
    corner = [s - 1 for s in reference.GetSize()]
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint(corner), reference.TransformIndexToPhysicalPoint(corner), atol=tolerance
    )


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for one file."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_fused_series_joins_the_reference_study_on_its_grid(tmp_path, oblique):
    orientation = {"row_cosines": OBLIQUE_ROW, "column_cosines": OBLIQUE_COLUMN} if oblique else {}
    ct = write_ct_series(tmp_path / "ct", **orientation)
    reference = read_image(tmp_path / "ct")
    fused = fused_like(reference)
    study = target_study(tmp_path / "ct")
    assert study.from_reference and study.notes == ()

    series = write_derived_series(
        fused, tmp_path / "fused", study, series_description="MedFusion fused", derivation_description="test"
    )

    written = headers(tmp_path / "fused")
    assert len(written) == reference.GetSize()[2] and series.sop_class_uid == CT_IMAGE_STORAGE
    reference_positions, reference_uids = np.array(_positions(tmp_path / "ct")), _uids(tmp_path / "ct")
    for header in written:
        for keyword in COPIED:
            assert str(header.get(keyword)) == str(ct[keyword]), keyword
        assert header.FrameOfReferenceUID == ct["FrameOfReferenceUID"]
        assert header.SeriesInstanceUID not in (ct["SeriesInstanceUID"], "") and header.SeriesNumber != 3
        assert list(header.ImageType)[:2] == ["DERIVED", "SECONDARY"] and header.BurnedInAnnotation == "NO"
        assert header.SOPClassUID == CT_IMAGE_STORAGE and header.RescaleType == "US"
        assert "MedFusion" in header.SoftwareVersions
        # Each slice names the reference slice it lies on (files were written in reverse name order).
        (source,) = header.SourceImageSequence
        distances = np.linalg.norm(reference_positions - [float(v) for v in header.ImagePositionPatient], axis=1)
        assert distances.min() < 1e-3
        assert source.ReferencedSOPInstanceUID == reference_uids[int(distances.argmin())]
        assert source.ReferencedSOPClassUID == CT_IMAGE_STORAGE
    assert len({h.SeriesInstanceUID for h in written}) == 1 and len({h.SOPInstanceUID for h in written}) == len(written)

    back = read_image(tmp_path / "fused")
    assert_same_grid(back, reference)
    slope = float(written[0].RescaleSlope)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(fused), atol=slope / 2 + 1e-7)


def _positions(directory: Path) -> list[np.ndarray]:
    return [np.array([float(v) for v in h.ImagePositionPatient]) for h in headers(directory)]


def _uids(directory: Path) -> list[str]:
    return [h.SOPInstanceUID for h in headers(directory)]


def test_rgb_functional_fusion_is_a_colour_series_on_the_grid(tmp_path):
    write_ct_series(tmp_path / "ct", row_cosines=OBLIQUE_ROW, column_cosines=OBLIQUE_COLUMN)
    reference = read_image(tmp_path / "ct")
    grey = sitk.GetArrayFromImage(fused_like(reference))
    rgb_array = np.stack([grey * 255, grey[::-1] * 128, 255 - grey * 255], axis=-1).round().astype(np.uint8)
    rgb = sitk.GetImageFromArray(rgb_array, isVector=True)
    rgb.CopyInformation(reference)
    study = target_study(tmp_path / "ct")

    series = write_derived_series(rgb, tmp_path / "rgb", study, series_description="colour", derivation_description="t")

    assert series.sop_class_uid == SECONDARY_CAPTURE_IMAGE_STORAGE
    header = headers(tmp_path / "rgb")[0]
    assert header.PhotometricInterpretation == "RGB" and header.SamplesPerPixel == 3
    assert header.StudyInstanceUID == study.attributes["StudyInstanceUID"]
    assert header.FrameOfReferenceUID == study.frame_of_reference_uid and header.SourceImageSequence
    back = read_image(tmp_path / "rgb")
    assert back.GetNumberOfComponentsPerPixel() == 3
    assert_same_grid(back, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), rgb_array)


def test_series_numbers_do_not_collide(tmp_path):
    write_ct_series(tmp_path / "ct")
    study = target_study(tmp_path / "ct")
    image = fused_like(read_image(tmp_path / "ct"))
    numbers = [
        write_derived_series(image, tmp_path / name, study, series_description=name, derivation_description="t")
        for name in ("a", "b")
    ]
    numbers = [series.series_number for series in numbers]
    assert numbers == [4, 5]  # the reference is series 3


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_every_written_file_passes_dciodvfy(tmp_path):
    """CT grey, MR grey, Secondary Capture grey (PT) and RGB: no errors in any file."""
    write_ct_series(tmp_path / "ct", row_cosines=OBLIQUE_ROW, column_cosines=OBLIQUE_COLUMN)
    reference = read_image(tmp_path / "ct")
    study = target_study(tmp_path / "ct")
    fused = fused_like(reference)
    rgb = sitk.Compose([sitk.Cast(fused * 255, sitk.sitkUInt8)] * 3)
    cases = (("ct", fused, None), ("mr", fused, "MR"), ("pt", reference, "PT"), ("rgb", rgb, None))
    for name, image, modality in cases:
        write_derived_series(image, tmp_path / name / "series", study, series_description=name,
                             derivation_description="dciodvfy test", modality=modality)  # fmt: skip
        for path in sorted((tmp_path / name / "series").iterdir()):
            errors, _ = dciodvfy(path)
            assert errors == [], f"{name} {path.name}: {errors}"


def test_reference_without_study_or_frame_of_reference_gets_new_ones_and_says_so(tmp_path):
    ct = write_ct_series(tmp_path / "ct", drop=("StudyInstanceUID", "FrameOfReferenceUID"))
    study = target_study(tmp_path / "ct")
    assert len(study.notes) == 2
    assert "no Study Instance UID" in study.notes[0] and "new study" in study.notes[0]
    assert "no Frame of Reference UID" in study.notes[1]
    write_derived_series(fused_like(read_image(tmp_path / "ct")), tmp_path / "fused", study,
                         series_description="f", derivation_description="t")  # fmt: skip
    header = headers(tmp_path / "fused")[0]
    assert header.StudyInstanceUID and header.FrameOfReferenceUID
    assert header.PatientID == ct["PatientID"]  # the patient is still the reference's


def test_reference_that_is_not_dicom_makes_a_new_study_with_the_given_patient(tmp_path):
    write_ct_series(tmp_path / "ct")
    reference = read_image(tmp_path / "ct")
    sitk.WriteImage(reference, str(tmp_path / "ct.nii.gz"))
    patient = PatientAttributes(name="Roe^Richard", id="P-7", birth_date="19800101", sex="M")
    study = target_study(tmp_path / "ct.nii.gz", patient=patient)
    assert not study.from_reference and "not read from DICOM" in study.notes[0]
    write_derived_series(fused_like(reference), tmp_path / "fused", study, series_description="f",
                         derivation_description="t")  # fmt: skip
    header = headers(tmp_path / "fused")[0]
    assert (header.PatientName, header.PatientID, header.PatientSex) == ("Roe^Richard", "P-7", "M")
    assert "SourceImageSequence" not in header
    with pytest.raises(InputError, match="YYYYMMDD"):
        PatientAttributes(birth_date="1.1.1980")


def test_existing_series_is_kept_without_overwrite_and_a_failure_leaves_nothing(tmp_path):
    write_ct_series(tmp_path / "ct")
    study = target_study(tmp_path / "ct")
    image = fused_like(read_image(tmp_path / "ct"))
    write_derived_series(image, tmp_path / "fused", study, series_description="first", derivation_description="t")
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_derived_series(image, tmp_path / "fused", study, series_description="second", derivation_description="t")
    assert headers(tmp_path / "fused")[0].SeriesDescription == "first"

    broken = sitk.GetArrayFromImage(image)
    broken[-1, 0, 0] = np.nan  # found only after the first slices are encoded
    bad = sitk.GetImageFromArray(broken)
    bad.CopyInformation(image)
    with pytest.raises(InputError, match="NaN"):
        write_derived_series(bad, tmp_path / "fused", study, series_description="bad", derivation_description="t",
                             overwrite=True)  # fmt: skip
    assert headers(tmp_path / "fused")[0].SeriesDescription == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "fused"]  # no staging directory left


def _moving_on_reference_grid(reference: sitk.Image, path: Path) -> None:
    """An MR-like volume on the CT's grid (bright soft tissue, dark bone), written as NIfTI."""
    hu = sitk.GetArrayFromImage(reference).astype(np.float32)
    mr = sitk.GetImageFromArray(np.where(hu > -500, 900 - np.abs(hu - 200), 0).astype(np.float32))
    mr.CopyInformation(reference)
    sitk.WriteImage(mr, str(path))


def test_cli_fuse_format_dicom_writes_fused_registered_and_source_map_series(tmp_path, capsys):
    ct = write_ct_series(tmp_path / "ct")
    _moving_on_reference_grid(read_image(tmp_path / "ct"), tmp_path / "mr.nii.gz")
    command = ["fuse", str(tmp_path / "ct"), str(tmp_path / "mr.nii.gz"), "-o", str(tmp_path / "out"),
               "--format", "dicom", "--model", "average", "--registration", "none", "--progress", "none"]  # fmt: skip
    extra = ["--save-registered", str(tmp_path / "reg"), "--source-map", str(tmp_path / "map")]

    assert main([*command, *extra]) == 0

    fused, registered, source_map = (headers(tmp_path / name)[0] for name in ("out", "reg", "map"))
    assert {h.StudyInstanceUID for h in (fused, registered, source_map)} == {ct["StudyInstanceUID"]}
    assert [h.SeriesNumber for h in (fused, registered, source_map)] == [4, 5, 6]
    assert "average" in fused.DerivationDescription and ct["SeriesInstanceUID"] in fused.DerivationDescription
    assert "mr.nii.gz" in fused.DerivationDescription and "registration none" in fused.DerivationDescription
    assert "reference's study" in capsys.readouterr().err
    # Again without --overwrite: refused before fusing (exit 2), the first series kept.
    assert main(command) == 2
    assert "already exists" in capsys.readouterr().err
    assert headers(tmp_path / "out")[0].SOPInstanceUID == fused.SOPInstanceUID
    # Patient options are for a reference without a patient, not to rename the CT's.
    assert main([*command, "--overwrite", "--patient-id", "X"]) == 2
    assert "not DICOM" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"shared data absent: {REAL_CT}")
def test_real_anonymised_ct_keeps_its_frame_of_reference_and_says_what_it_lacks(tmp_path):
    """The shared real CT was anonymised down to no Study, Series or SOP Instance UIDs but kept its
    Frame of Reference: the fused series gets a new study, the CT's frame, and no source references."""
    reference = read_image(REAL_CT)
    study = target_study(REAL_CT)
    first = pydicom.dcmread(sorted(REAL_CT.iterdir())[0], stop_before_pixels=True)
    assert any("no Study Instance UID" in note for note in study.notes)
    assert any("no SOP Class/Instance UID" in note for note in study.notes)
    write_derived_series(fused_like(reference), tmp_path / "fused", study, series_description="f",
                         derivation_description="t")  # fmt: skip
    written = headers(tmp_path / "fused")
    assert len({h.StudyInstanceUID for h in written}) == 1 and written[0].StudyInstanceUID
    assert all(h.FrameOfReferenceUID == first.FrameOfReferenceUID for h in written)
    assert all("SourceImageSequence" not in h for h in written)
    assert written[0].PatientPosition == "" and written[0].Manufacturer == "MedFusion"
    assert_same_grid(read_image(tmp_path / "fused"), reference)
    if DCIODVFY is not None:
        assert dciodvfy(sorted((tmp_path / "fused").iterdir())[0])[0] == []


def test_batch_format_dicom_writes_each_case_as_a_series_of_its_reference_study(tmp_path):
    ct = write_ct_series(tmp_path / "ct")
    _moving_on_reference_grid(read_image(tmp_path / "ct"), tmp_path / "mr.nii.gz")
    (tmp_path / "cases.csv").write_text("reference,moving,output\nct,mr.nii.gz,case1.nii.gz\n")
    command = ["batch", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "out"), "--model", "average",
               "--registration", "none", "--format", "dicom"]  # fmt: skip

    assert main(command) == 0

    series = headers(tmp_path / "out" / "case1_dicom")
    assert len(series) == 6 and {h.StudyInstanceUID for h in series} == {ct["StudyInstanceUID"]}
    assert (tmp_path / "out" / "case1.nii.gz").is_file()
    # Resumed: the case is complete and nothing is rewritten.
    assert main([*command, "--resume"]) == 0
    assert headers(tmp_path / "out" / "case1_dicom")[0].SOPInstanceUID == series[0].SOPInstanceUID
