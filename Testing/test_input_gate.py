"""The input gate (MedFusionLib.io.gate): one table of what scans readers can hand over, and every
entry point run on them.

:data:`CASES` is the one table: a case turns a valid scan into another (or writes a file), and
says what must happen: ``None`` (accepted: a correct result is written) or a regular expression
the one error must match (exit 2 at the command line, nothing written). ``registered`` is the
outcome where a registration is asked for (``fuse --registration rigid``, ``register``), when it
differs. Adding a case is one line.

The property test draws a case, an entry point (``medfusion fuse`` with each registration mode,
``medfusion register``, ``medfusion batch``, ``fuse_volumes``, and the Slicer logic's and worker's
``MedFusionSlicer.server.fuse``) and a geometry (spacing, origin, rotation) for the phantom pair,
and checks that each run writes a correct result or gives that one error: never a traceback,
never a partial file, never a hang.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError, MedFusionError
from MedFusionLib.fusion.options import FusionOptions
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.imaging.phantom import make_head_phantom
from MedFusionLib.io import write_image
from MedFusionLib.io.gate import prepare_input

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "MedFusion"))

from MedFusionSlicer import server  # noqa: E402  (the Slicer worker's and logic's fusion call)

# The fastest options that still run every step: a training-free model, the default registration.
MODEL = "average"
SECONDS_PER_RUN = 120  # a run that takes longer counts as a hang


def _like(values: np.ndarray, image: sitk.Image, vector: bool = False) -> sitk.Image:
    """``values`` (numpy ``[z, y, x]``, or ``[z, y, x, c]`` with ``vector``) on ``image``'s grid."""
    result = sitk.GetImageFromArray(values, isVector=vector)
    result.CopyInformation(image)
    return result


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def _with(image: sitk.Image, spacing=None, direction=None) -> sitk.Image:
    copy = sitk.Image(image)
    if spacing is not None:
        copy.SetSpacing(spacing)
    if direction is not None:
        copy.SetDirection(direction)
    return copy


def _nifti(image: sitk.Image, path: Path, **header) -> Path:
    """``image`` as NIfTI with raw header fields replaced (what ITK's reader would quietly change)."""
    sitk.WriteImage(image, str(path))
    loaded = nibabel.load(path)
    data = np.asarray(loaded.dataobj)
    patched = nibabel.Nifti1Image(data, None, loaded.header.copy())
    for key, value in header.items():
        if key == "pixdim_y":
            patched.header["pixdim"][2] = value
        elif key == "sform":
            patched.header.set_sform(value, code=1)
            patched.header.set_qform(None, code=0)
        else:
            patched.header[key] = value
    path.unlink()
    nibabel.save(patched, path)
    return path


def _raw_nifti_datatype(image: sitk.Image, path: Path, datatype: int, bitpix: int) -> Path:
    """A NIfTI whose datatype field says ``datatype`` (e.g. 1: 1-bit), written byte by byte."""
    sitk.WriteImage(sitk.Cast(image > 0, sitk.sitkUInt8), str(path))
    raw = bytearray(path.read_bytes())
    raw[70:74] = struct.pack("<hh", datatype, bitpix)
    path.write_bytes(bytes(raw))
    return path


def _truncated(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    return path


def _half_float_tiff(image: sitk.Image, path: Path) -> Path:
    """The middle slice as a TIFF of 16-bit floating-point samples (built by hand: Pillow writes none)."""
    values = _array(image)[image.GetSize()[2] // 2].astype("<f2")
    height, width = values.shape
    tags = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, values.nbytes), (339, 3, 3)]  # fmt: skip
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    ifd_offset = 8 + values.nbytes
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", ifd_offset) + values.tobytes()
        + struct.pack("<H", len(tags)) + entries + b"\x00\x00\x00\x00"
    )  # fmt: skip
    return path


def _dicom(image: sitk.Image, folder: Path, damage: str) -> Path:
    """``image`` as a DICOM series, then damaged: ``missing`` (a middle slice deleted),
    ``duplicated`` (a slice copied under another SOP instance), ``size`` or ``orientation``
    (one slice of another size or orientation), or ``""`` (left whole)."""
    from MedFusionLib.io.dicom import write_dicom_series

    values = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    write_dicom_series(values, folder, modality="MR")
    files = sorted(folder.iterdir())
    middle = files[len(files) // 2]
    if damage == "missing":
        middle.unlink()
    elif damage == "duplicated":
        copy = pydicom.dcmread(middle)
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copy.save_as(folder / "copy.dcm")
    elif damage == "size":
        odd = pydicom.dcmread(middle)
        odd.Rows = int(odd.Rows) - 2
        odd.PixelData = np.zeros((odd.Rows, odd.Columns), np.int16).tobytes()
        odd.save_as(middle)
    elif damage == "orientation":
        odd = pydicom.dcmread(middle)
        odd.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        odd.save_as(middle)
    return folder


def _picture(image: sitk.Image, path: Path, colour: bool) -> Path:
    middle = _array(image)[image.GetSize()[2] // 2]
    grey = np.clip(255 * (middle - middle.min()) / (np.ptp(middle) or 1), 0, 255).astype(np.uint8)
    values = np.stack([grey, 255 - grey, grey // 2], axis=-1) if colour else grey
    write_image(sitk.GetImageFromArray(values, isVector=colour), path)
    return path


# A case makes one input from a valid scan: a SimpleITK image (written as a file for the command
# line) or a file it writes itself at the path it is given (without an extension).
Make = Callable[[sitk.Image, Path], "sitk.Image | Path"]
SINGULAR = np.diag([1.0, 0.0, 1.0, 1.0])


@dataclass(frozen=True)
class Case:
    label: str
    make: Make
    fused: str | None  # None: accepted; else a regular expression the one error matches
    registered: str | None | type(...) = ...  # where a registration is asked for (... = as ``fused``)
    suffix: str = ".nrrd"  # the file format an image-making case is written in

    def outcome(self, registers: bool) -> str | None:
        return self.fused if not registers or self.registered is ... else self.registered


CASES = [
    Case("float32 volume", lambda im, p: sitk.Cast(im, sitk.sitkFloat32), None),
    Case("int16 volume", lambda im, p: sitk.Cast(im, sitk.sitkInt16), None),
    Case("uint8 volume", lambda im, p: sitk.Cast(sitk.RescaleIntensity(im, 0, 255), sitk.sitkUInt8), None),
    Case("float64 volume", lambda im, p: sitk.Cast(im, sitk.sitkFloat64), None),
    Case("int64 within float32's exact range", lambda im, p: sitk.Cast(im, sitk.sitkInt64), None),
    Case("int64 beyond float32's exact range", lambda im, p: _like(_array(im).astype(np.int64) * 2**26, im),
         r"beyond ±2\*\*24"),  # fmt: skip
    Case("complex64", lambda im, p: _like((_array(im) * (1 + 1j)).astype(np.complex64), im), "complex voxels",
         suffix=".nii.gz"),  # fmt: skip
    Case("vector of 2", lambda im, p: _like(np.stack([_array(im)] * 2, -1), im, True), "2 components"),
    Case("vector of 4", lambda im, p: _like(np.stack([_array(im)] * 4, -1), im, True), "4 components"),
    Case("RGB volume", lambda im, p: _like(np.stack([_array(im).clip(0, 255).astype(np.uint8)] * 3, -1), im, True),
         r"colour \(RGB\) volume"),  # fmt: skip
    Case("4D, two frames", lambda im, p: sitk.JoinSeries([im, im]), "4D with 2 frames", suffix=".nii.gz"),
    Case("4D, one frame", lambda im, p: sitk.JoinSeries([im]), None, suffix=".nii.gz"),
    Case("5D", lambda im, p: sitk.JoinSeries([sitk.JoinSeries([im])] * 2), "5D", suffix=".nii.gz"),
    Case("grey 2D picture", lambda im, p: _picture(im, p.with_suffix(".png"), False), None, "3D volume is needed"),
    Case("RGB 2D picture", lambda im, p: _picture(im, p.with_suffix(".png"), True), None, "3D volume is needed"),
    Case("single slice", lambda im, p: im[:, :, im.GetSize()[2] // 2 : im.GetSize()[2] // 2 + 1], None,
         "a single slice"),  # fmt: skip
    Case("size 1 along two axes", lambda im, p: im[:, :1, :1], "only one voxel along y, z"),
    Case("spacing not finite", lambda im, p: _with(im, spacing=(float("nan"), 1.0, 1.0)),
         "spacing|voxel size|no direction"),  # fmt: skip
    Case("spacing zero", lambda im, p: _nifti(im, p.with_suffix(".nii"), pixdim_y=0.0), "voxel size"),
    Case("spacing negative", lambda im, p: _nifti(im, p.with_suffix(".nii"), pixdim_y=-2.0), "voxel size"),
    Case("spacing in metres", lambda im, p: _with(im, spacing=(0.001, 0.001, 0.001)), "unit error"),
    Case("spacing absurdly large", lambda im, p: _with(im, spacing=(1000.0, 1000.0, 1000.0)), "unit error"),
    Case("sheared direction", lambda im, p: _with(im, direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1)), "sheared"),
    Case("singular sform", lambda im, p: _nifti(im, p.with_suffix(".nii"), sform=SINGULAR), "singular"),
    Case("NaN voxels", lambda im, p: _like(np.where(_array(im) > 50, np.nan, _array(im)), im), "NaN or infinite"),
    Case("infinite voxels", lambda im, p: _like(np.where(_array(im) > 50, np.inf, _array(im)), im), "NaN or infinite"),
    Case("constant", lambda im, p: _like(np.full(_array(im).shape, 7, np.float32), im), "constant"),
    Case("empty file", lambda im, p: (p.with_suffix(".nii.gz").write_bytes(b""), p.with_suffix(".nii.gz"))[1],
         r"empty \(0 bytes\)"),  # fmt: skip
    Case("truncated NIfTI", lambda im, p: _truncated(im, p.with_suffix(".nii")), "truncated"),
    Case("truncated NRRD", lambda im, p: _truncated(im, p.with_suffix(".nrrd")), "Could not read .* as NRRD"),
    Case("NIfTI slope infinite", lambda im, p: _nifti(im, p.with_suffix(".nii"), scl_slope=np.inf), "scale slope"),
    Case("NIfTI slope 0 beside an intercept", lambda im, p: _nifti(im, p.with_suffix(".nii"), scl_slope=0.0,
                                                                    scl_inter=100.0), "scale slope"),  # fmt: skip
    Case("NIfTI slope 0 alone (unscaled)", lambda im, p: _nifti(im, p.with_suffix(".nii"), scl_slope=0.0), None),
    Case("NIfTI 1-bit (bool)", lambda im, p: _raw_nifti_datatype(im, p.with_suffix(".nii"), 1, 1), "1-bit"),
    Case("float16 TIFF", lambda im, p: _half_float_tiff(im, p.with_suffix(".tif")), "16-bit floating-point"),
    Case("DICOM series", lambda im, p: _dicom(im, p, ""), None),
    Case("DICOM slice missing", lambda im, p: _dicom(im, p, "missing"), "not evenly spaced"),
    Case("DICOM slice duplicated", lambda im, p: _dicom(im, p, "duplicated"), "duplicated"),
    Case("DICOM slices of mixed sizes", lambda im, p: _dicom(im, p, "size"), "mixes slices of different sizes"),
    Case("DICOM slices of mixed orientations", lambda im, p: _dicom(im, p, "orientation"),
         "mixes slices of different orientations"),  # fmt: skip
]

# Entry points: (name, whether it registers, whether it takes SimpleITK images as the Slicer side does).
ENTRIES = ["fuse none", "fuse auto", "fuse resample", "fuse rigid", "register", "batch", "python", "slicer"]
REGISTERING = {"fuse rigid", "register"}


@pytest.fixture(scope="module")
def phantom():
    """An aligned CT/MR phantom pair on a small grid (64×64 in plane: every runtime takes it), with
    a face: a nearly symmetric head lets a rigid registration settle 180° off and refuse, which is
    the registration's answer, not the gate's."""
    pair = make_head_phantom(size=(64, 64, 16), spacing=(3.5, 3.5, 4.5), seed=3, face=True)
    return pair.ct, pair.mr


def _inputs(case: Case, pair, folder: Path) -> list[tuple[Path, object]]:
    """Per input: (a path for the command line, what the Python and Slicer callers get)."""
    made = []
    for role, image in zip(("reference", "moving"), pair):
        result = case.make(image, folder / role)
        if isinstance(result, sitk.Image):
            path = folder / f"{role}{case.suffix}"
            sitk.WriteImage(result, str(path))  # as it is: no check of ours in between
            made.append((path, result))
        else:
            made.append((result, result))
    return made


@contextlib.contextmanager
def _time_limit(seconds: int):
    def hang(*_):
        raise TimeoutError(f"a run took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run(entry: str, inputs, out: Path) -> tuple[str | None, Path]:
    """Run ``entry``; returns (its one error, or None on success; the file it writes)."""
    (reference_path, reference), (moving_path, moving) = inputs
    output = out / "result.nii.gz"
    stderr = io.StringIO()
    with _time_limit(SECONDS_PER_RUN), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        if entry.startswith("fuse "):
            mode = entry.split()[1]
            argv = ["fuse", str(reference_path), str(moving_path), "-o", str(output), "--registration", mode]
            status = main([*argv, "--model", MODEL, "--progress", "none"])
        elif entry == "register":
            status = main(["register", str(reference_path), str(moving_path), "-o", str(output)])
        elif entry == "batch":
            manifest = out.parent / "manifest.csv"
            manifest.write_text(f"reference,moving,output\n{reference_path},{moving_path},result.nii.gz\n")
            status = main(["batch", str(manifest), "--out", str(out), "--model", MODEL])
            report = list(csv.DictReader(open(out / "batch_report.csv")))[0]
            (out / "batch_report.csv").unlink()
            assert status in (0, 1) and not report["error"].startswith("unexpected error"), report["error"]
            return (report["error"] or None), output
        else:
            try:
                if entry == "python":
                    result = fuse_volumes(reference, moving, model=MODEL)
                else:
                    result = server.fuse(reference, moving, FusionOptions(model=MODEL).to_dict(), lambda *_: None)
            except MedFusionError as error:  # anything else is a traceback: the test fails
                return str(error), output
            write_image(result.fused, output)
            return None, output
    lines = stderr.getvalue().strip().splitlines()
    if status == 0:
        return None, output
    assert status == 2, stderr.getvalue()
    errors = [line for line in lines if line.startswith("medfusion: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr.getvalue()  # one error, then nothing
    return errors[0], output


def _check(case: Case, entry: str, error: str | None, output: Path, reference_grid: sitk.Image | None) -> None:
    expected = case.outcome(entry in REGISTERING)
    if expected is None:
        assert error is None, f"{case.label} through {entry}: refused: {error}"
        written = sitk.ReadImage(str(output))
        assert written.GetSize() == reference_grid.GetSize()
        assert np.allclose(written.GetSpacing(), reference_grid.GetSpacing(), rtol=1e-5)
        assert np.allclose(written.GetOrigin(), reference_grid.GetOrigin(), atol=1e-3)
        assert np.allclose(written.GetDirection(), reference_grid.GetDirection(), atol=1e-5)
        values = sitk.GetArrayViewFromImage(written)
        assert np.isfinite(values).all()
        if entry != "register" and written.GetNumberOfComponentsPerPixel() == 1:
            assert values.min() >= 0.0 and values.max() <= 1.0
    else:
        assert error is not None, f"{case.label} through {entry}: accepted, expected /{expected}/"
        assert re.search(expected, error), f"{case.label} through {entry}: {error}"
        leftovers = [p for p in output.parent.iterdir() if not p.name.startswith(".")] if output.parent.exists() else []
        assert not leftovers, f"{case.label} through {entry} left {leftovers}"


@settings(
    max_examples=40,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": minutes of reruns
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.sampled_from(CASES),
    entry=st.sampled_from(ENTRIES),
    scale=st.floats(0.6, 1.4),
    origin=st.tuples(*[st.floats(-200.0, 200.0)] * 3),
    angles=st.tuples(*[st.floats(-0.6, 0.6)] * 3),
)
# Found by this test: the face-less phantom, turned, registered 180° off and was refused.
@example(case=CASES[0], entry="fuse rigid", scale=0.890625, origin=(0.0, 0.0, 0.0), angles=(0.5, 0.375, 0.0))
def test_every_entry_point_writes_a_correct_result_or_gives_the_one_error(
    phantom, tmp_path_factory, case, entry, scale, origin, angles
):
    folder = tmp_path_factory.mktemp("case")
    pair = []
    for image in phantom:
        placed = sitk.Image(image)
        placed.SetSpacing(tuple(s * scale for s in image.GetSpacing()))
        placed.SetOrigin(origin)
        rotation = sitk.Euler3DTransform()
        rotation.SetRotation(*angles)
        placed.SetDirection(rotation.GetMatrix())
        pair.append(placed)
    inputs = _inputs(case, pair, folder)
    takes_images = isinstance(inputs[0][1], sitk.Image)
    assume(entry != "slicer" or takes_images)  # the Slicer side hands over images read by Slicer
    out = folder / "out"
    out.mkdir()
    error, output = _run(entry, inputs, out)
    expected = case.outcome(entry in REGISTERING)
    reference_grid = None if expected is not None else prepare_input(inputs[0][0], "reference").image
    _check(case, entry, error, output, reference_grid)
    shutil.rmtree(folder)


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_each_case_gets_its_one_message_from_the_gate(phantom, tmp_path, case):
    """Every row of the table through ``prepare_input`` (paths as the command line reads them,
    with and without the requirements of a registration)."""
    (reference_path, _), _ = _inputs(case, phantom, tmp_path)
    for registers in (False, True):
        expected = case.outcome(registers)
        if expected is None:
            scan = prepare_input(reference_path, "reference", volume=registers, scalar=registers)
            assert scan.image.GetPixelID() == sitk.sitkFloat32 and scan.image.GetDimension() in (2, 3)
        else:
            with pytest.raises(InputError, match=expected):
                prepare_input(reference_path, "reference", volume=registers, scalar=registers)
