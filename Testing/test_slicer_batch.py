"""The headless batch script (MedFusion/Resources/Scripts/MedFusionBatch.py), run as a process with
the slicer-core wheel standing in for ``Slicer --no-main-window --python-script``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer_core", reason="the slicer-core wheel (a real MRML scene) is not available for this Python")

from conftest import oblique

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "MedFusion" / "Resources" / "Scripts" / "MedFusionBatch.py"


def run_script(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    # "--" as Slicer passes it after --python-script SCRIPT.
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory, phantom_pair) -> Path:
    """The CT/MR phantom on an oblique grid as NIfTI files."""
    folder = tmp_path_factory.mktemp("pair")
    sitk.WriteImage(oblique(phantom_pair.ct), str(folder / "ct.nii.gz"))
    sitk.WriteImage(oblique(phantom_pair.mr), str(folder / "mr.nii.gz"))
    return folder


def test_one_pair_gives_the_same_volume_as_the_medfusion_command(phantom_files):
    """Slicer's reader, the module's logic and our writer change nothing: the headless result equals
    `medfusion fuse` on the same files, voxel for voxel, on the reference's grid."""
    result = run_script(
        "--reference",
        "ct.nii.gz",
        "--moving",
        "mr.nii.gz",
        "--output",
        "slicer.nii.gz",
        "--registration",
        "none",
        "--model",
        "laplacian",
        "--device",
        "cpu",
        cwd=phantom_files,
    )
    assert result.returncode == 0, result.stderr
    assert "fusing ct.nii.gz + mr.nii.gz" in result.stdout and "done in" in result.stdout
    command = subprocess.run(
        [sys.executable, "-m", "MedFusionLib", "fuse", "ct.nii.gz", "mr.nii.gz", "-o", "cli.nii.gz",
         "--model", "laplacian", "--device", "cpu", "--progress", "none"],
        cwd=phantom_files, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    headless, cli = (
        sitk.ReadImage(str(phantom_files / "slicer.nii.gz")),
        sitk.ReadImage(str(phantom_files / "cli.nii.gz")),
    )
    reference = sitk.ReadImage(str(phantom_files / "ct.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(headless), sitk.GetArrayFromImage(cli))
    for image in (headless, cli):
        assert image.GetSize() == reference.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_case_list_goes_on_after_a_bad_case_and_exits_non_zero(phantom_files, tmp_path):
    cases = tmp_path / "cases.csv"
    cases.write_text(
        f"reference,moving,output\n"
        f"{phantom_files / 'ct.nii.gz'},{phantom_files / 'missing.nii.gz'},bad.nrrd\n"
        f"{phantom_files / 'ct.nii.gz'},{phantom_files / 'mr.nii.gz'},good.nrrd\n"
    )
    result = run_script(
        "--cases",
        str(cases),
        "--output-dir",
        "out",
        "--registration",
        "none",
        "--model",
        "average",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "case 1 failed" in result.stderr and "missing.nii.gz not found" in result.stderr
    assert "1 of 2 cases fused" in result.stdout
    assert (tmp_path / "out" / "good.nrrd").is_file() and not (tmp_path / "out" / "bad.nrrd").exists()


def test_case_list_runs_on_the_librarys_cohort_runner_report_and_resume(phantom_files, tmp_path):
    """The headless list and `medfusion batch` share one runner: report CSV, completion records, --resume."""
    cases = tmp_path / "cases.csv"
    cases.write_text(f"reference,moving,output\n{phantom_files / 'ct.nii.gz'},{phantom_files / 'mr.nii.gz'},a.nrrd\n")
    arguments = ("--cases", str(cases), "--output-dir", "out", "--model", "average", "--device", "cpu")
    first = run_script(*arguments, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = (tmp_path / "out" / "batch_report.csv").read_text()
    assert ",done," in report and (tmp_path / "out" / ".a.nrrd.done.json").is_file()
    fused = (tmp_path / "out" / "a.nrrd").read_bytes()
    again = run_script(*arguments, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "case 1 skipped" in again.stdout and ",skipped," in (tmp_path / "out" / "batch_report.csv").read_text()
    assert (tmp_path / "out" / "a.nrrd").read_bytes() == fused
    other_model = run_script(*arguments[:-4], "--model", "maximum", "--device", "cpu", "--resume", cwd=tmp_path)
    assert other_model.returncode == 0 and "case 1 done" in other_model.stdout  # other options: redone


def test_existing_output_is_kept_without_overwrite(phantom_files, tmp_path):
    output = tmp_path / "fused.nrrd"
    output.write_bytes(b"keep me")
    result = run_script(
        "--reference",
        str(phantom_files / "ct.nii.gz"),
        "--moving",
        str(phantom_files / "mr.nii.gz"),
        "--output",
        str(output),
        "--registration",
        "none",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "already exists. Pass --overwrite" in result.stderr
    assert output.read_bytes() == b"keep me"


def test_registered_pair_prints_the_registration_and_writes_the_checkerboard(tmp_path):
    """Headless gets what the panel shows: the registration summary on standard output, and the
    registered volume and the checkerboard as files on the reference grid."""
    from conftest import SMALL_SIZE, SMALL_SPACING

    from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT, make_head_phantom

    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                                moving_spacing=(3.0, 3.0, 4.0), seed=1)  # fmt: skip
    sitk.WriteImage(phantom.ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(phantom.mr, str(tmp_path / "mr.nrrd"))
    result = run_script(
        *("--reference", "ct.nrrd", "--moving", "mr.nrrd", "--output", "fused.nrrd"),
        *("--registration", "rigid", "--backend", "simpleitk", "--model", "average", "--device", "cpu"),
        *("--save-registered", "registered.nrrd", "--save-checkerboard", "board.nrrd"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "rigid registration (simpleitk" in result.stdout and "metric" in result.stdout
    for name in ("fused.nrrd", "registered.nrrd", "board.nrrd"):
        image = sitk.ReadImage(str(tmp_path / name))
        assert image.GetSize() == phantom.ct.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), phantom.ct.GetOrigin(), atol=1e-4)
    board = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "board.nrrd")))
    assert 0.0 <= board.min() and board.max() <= 1.0 and board.std() > 0.05


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((), "either --reference"),
        (("--reference", "a.nii.gz", "--moving", "b.nii.gz"), "all of --reference, --moving and --output"),
        (("--cases", "cases.csv"), "--cases needs --output-dir"),
        (("--cases", "cases.csv", "--output-dir", "out", "--source-map", "s.nrrd"), "are for one pair"),
    ],
)
def test_unusable_arguments_exit_2_without_a_dialog(arguments, message, tmp_path):
    result = run_script(*arguments, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_brats_t1_t2_fused_headless_on_the_reference_grid(shared_data, tmp_path):
    """Real data: the BraTS T1 (reference) and T2, two .nii.gz files, fused headless."""
    case = shared_data / "brats" / "BraTS-MET-example"
    result = run_script(
        "--reference",
        str(case / "t1.nii.gz"),
        "--moving",
        str(case / "t2.nii.gz"),
        "--output",
        "t1_t2_fused.nii.gz",
        "--registration",
        "none",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    fused, reference = sitk.ReadImage(str(tmp_path / "t1_t2_fused.nii.gz")), sitk.ReadImage(str(case / "t1.nii.gz"))
    assert fused.GetSize() == reference.GetSize()
    np.testing.assert_allclose(fused.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(fused.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(fused.GetDirection(), reference.GetDirection(), atol=1e-6)
    values = sitk.GetArrayFromImage(fused)
    assert values.min() >= 0.0 and values.max() <= 1.0
    t1, t2 = sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(sitk.ReadImage(str(case / "t2.nii.gz")))
    assert values[t1 > 0].mean() > 0.1  # the brain is there
    assert np.percentile(values[(t1 == 0) & (t2 == 0)], 99) < 0.01  # air stays dark


def test_functional_pair_in_colour_with_the_source_map_equals_the_medfusion_command(tmp_path):
    """--functional, --functional-range (FusionOptions' own flags) and --source-map: the RGB volume
    and the source map written headless are `medfusion fuse`'s, voxel for voxel, on the MR's grid."""
    from conftest import SMALL_SIZE, SMALL_SPACING

    from MedFusionLib.imaging.functional_phantom import make_functional_phantom
    from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT, make_head_phantom

    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                                moving_spacing=(3.0, 3.0, 4.0), seed=1)  # fmt: skip
    sitk.WriteImage(phantom.mr, str(tmp_path / "mr.nrrd"))
    sitk.WriteImage(make_functional_phantom("pet", misalignment=DEMO_MISALIGNMENT), str(tmp_path / "pet.nrrd"))
    flags = ["--functional", "hot", "--functional-range", "0,12", "--registration", "resample",
             "--model", "laplacian", "--device", "cpu"]  # fmt: skip
    result = run_script(
        *("--reference", "mr.nrrd", "--moving", "pet.nrrd", "--output", "slicer_rgb.nrrd"),
        *flags,
        *("--source-map", "slicer_share.nrrd"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    command = subprocess.run(
        [sys.executable, "-m", "MedFusionLib", "fuse", "mr.nrrd", "pet.nrrd", "-o", "cli_rgb.nrrd", *flags,
         "--source-map", "cli_share.nrrd", "--progress", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    headless, cli = (sitk.ReadImage(str(tmp_path / name)) for name in ("slicer_rgb.nrrd", "cli_rgb.nrrd"))
    assert headless.GetNumberOfComponentsPerPixel() == 3 and headless.GetPixelID() == sitk.sitkVectorUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(headless), sitk.GetArrayFromImage(cli))
    assert headless.GetSize() == phantom.mr.GetSize()
    np.testing.assert_allclose(headless.GetOrigin(), phantom.mr.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(headless.GetDirection(), phantom.mr.GetDirection(), atol=1e-6)
    share, cli_share = (sitk.ReadImage(str(tmp_path / name)) for name in ("slicer_share.nrrd", "cli_share.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(share), sitk.GetArrayFromImage(cli_share))
    np.testing.assert_allclose(share.GetOrigin(), phantom.mr.GetOrigin(), atol=1e-4)


def test_a_bad_fusion_option_value_exits_2_naming_it(tmp_path):
    result = run_script(
        *("--reference", "mr.nrrd", "--moving", "pet.nrrd", "--output", "rgb.nrrd"),
        *("--functional", "harvard-pet", "--functional-range", "10,0"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "LOW < HIGH" in result.stderr
    result = run_script(
        *("--reference", "mr.nrrd", "--moving", "pet.nrrd", "--output", "rgb.nrrd", "--functional", "jet"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "unknown colour map 'jet'" in result.stderr and "harvard-pet" in result.stderr


def test_a_dicom_reference_gets_the_fused_series_back_in_its_study(tmp_path):
    """Issue 25 in the headless script: a CT series folder as the reference, --dicom-output writes
    the fused volume as a derived series of the CT's patient, study and frame of reference."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from dicom_phantoms import write_ct_series

    identity = write_ct_series(tmp_path / "ct")
    ct = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    mr = sitk.Cast(sitk.InvertIntensity(sitk.Cast(ct, sitk.sitkFloat32), maximum=2000.0), sitk.sitkFloat32)
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    run = run_script("--reference", str(tmp_path / "ct"), "--moving", str(tmp_path / "mr.nii.gz"),
                     "--output", str(tmp_path / "fused.nrrd"), "--dicom-output", str(tmp_path / "fused-dicom"),
                     "--registration", "none", "--model", "average", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    files = sorted((tmp_path / "fused-dicom").glob("*.dcm"))
    assert len(files) == len(identity["instances"]) and (tmp_path / "fused.nrrd").is_file()
    first = pydicom.dcmread(files[0])
    assert first.StudyInstanceUID == identity["StudyInstanceUID"] and first.PatientID == identity["PatientID"]
    assert first.FrameOfReferenceUID == identity["FrameOfReferenceUID"]
    assert first.SeriesInstanceUID != identity["SeriesInstanceUID"] and list(first.ImageType)[:2] == [
        "DERIVED", "SECONDARY"]
    fused = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "fused-dicom")))
    assert fused.GetSize() == ct.GetSize()
    assert np.allclose(fused.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert np.allclose(fused.GetDirection(), ct.GetDirection(), atol=1e-5)
