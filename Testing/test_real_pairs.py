"""Real clinical pairs: the patient lies differently in the two scanners, and a wrong alignment is
never silent.

* Orientation: the moving scan turned 180° about each axis, or 90° about the vertical, plus a
  30 mm shift, registered with the defaults: mean TRE at most 1 mm. Always on the CT/MR head
  phantom (HU with padding and a table); on BraTS T2 -> T1 when ``../shared/data`` is present.
  The rotation is put into the moving image's geometry (origin and direction), not resampled, so
  the truth is exact and nothing is cut off.
* Confidence: an unrelated moving image (noise with the MR's histogram; another subject's MR
  against a CT) gives a doubtful result: a warning, a JSON event, and with ``--strict`` exit 2
  and no file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.core.errors import RegistrationError
from MedFusionLib.devtools.registration_accuracy import target_registration_errors
from MedFusionLib.imaging.phantom import make_clinical_pair, rigid_motion
from MedFusionLib.registration import register
from MedFusionLib.registration.orientation import axis_rotations, rotation_label

SHIFT_MM = (18.0, -19.2, 14.4)  # 30 mm
TURNS = {
    "180 about x": np.diag([1.0, -1.0, -1.0]),
    "180 about y": np.diag([-1.0, 1.0, -1.0]),
    "180 about z": np.diag([-1.0, -1.0, 1.0]),
    "90 about z": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}


def turned(image: sitk.Image, rotation: np.ndarray, shift, centre) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """``image``'s voxels with the patient turned by ``rotation`` about ``centre`` and shifted,
    as a scanner would record them, and the reference -> moving transform that undoes it."""
    truth = sitk.Euler3DTransform()
    truth.SetCenter(tuple(centre))
    truth.SetMatrix(tuple(rotation.ravel()), 1e-6)
    truth.SetTranslation(tuple(shift))
    moved = sitk.Image(image)
    moved.SetOrigin(truth.TransformPoint(image.GetOrigin()))
    moved.SetDirection(tuple((rotation @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return moved, truth


@pytest.fixture(scope="module")
def phantom():
    """Phantom CT (HU, -2048 circle, table) and its MR on the same anatomy, 3 mm grids."""
    pair = make_clinical_pair(
        size=(80, 80, 64), spacing=(3.0, 3.0, 3.0), misalignment=None, moving_spacing=(3.0, 3.0, 3.0), seed=5
    )
    head = sitk.GetArrayFromImage(pair.ct) > -500
    y_mm = (np.arange(80) - 79 / 2.0) * 3.0
    head &= y_mm[None, :, None] < 94.0  # not the table, which starts 106 mm behind the head's centre
    return pair.ct, pair.mr, head


def test_there_are_24_proper_axis_rotations():
    rotations = axis_rotations()
    assert len(rotations) == 24
    assert all(np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0) for r in rotations)
    assert len({r.tobytes() for r in rotations}) == 24
    assert rotation_label(rotations[0]) == "identity" and rotation_label(TURNS["90 about z"]) == "90° about z"


@pytest.mark.parametrize("turn", TURNS)
def test_phantom_mr_turned_and_shifted_is_found(turn, phantom):
    ct, mr, head = phantom
    moving, truth = turned(mr, TURNS[turn], SHIFT_MM, centre=(0.0, 0.0, 0.0))
    result = register(ct, moving)
    tre = target_registration_errors(result.transform, truth, ct, head)
    assert tre.mean() <= 1.0, f"mean TRE {tre.mean():.2f} mm (3 mm voxels); pose {result.confidence.pose}"
    assert result.confidence is not None and not result.confidence.doubtful, result.confidence.summary
    assert result.confidence.pose == rotation_label(TURNS[turn])


def test_a_start_that_keeps_the_wrong_orientation_is_doubtful(phantom):
    """--init moments (centres of mass, no search) cannot turn a head by 180°: the result is wrong,
    and the search that checks it finds the other orientation better."""
    ct, mr, head = phantom
    moving, truth = turned(mr, TURNS["180 about z"], SHIFT_MM, centre=(0.0, 0.0, 0.0))
    result = register(ct, moving, initializer="moments")
    assert target_registration_errors(result.transform, truth, ct, head).mean() > 20.0
    assert result.confidence.doubtful and result.confidence.margin < 0
    assert "fits better than" in result.confidence.summary


@pytest.fixture(scope="module")
def brats(shared_data):
    case = shared_data / "brats" / "TCGA-DU-7294"
    t1 = sitk.ReadImage(str(case / "t1.nii.gz"))
    t2 = sitk.ReadImage(str(case / "t2.nii.gz"))
    brain = sitk.GetArrayFromImage(t1) > 0
    centre = t1.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(brain).mean(axis=0)[::-1]])
    return t1, t2, brain, centre


@pytest.mark.parametrize("turn", TURNS)
def test_brats_t2_turned_and_shifted_is_registered_onto_t1(turn, brats):
    t1, t2, brain, centre = brats
    moving, truth = turned(t2, TURNS[turn], SHIFT_MM, centre)
    result = register(t1, moving)
    tre = target_registration_errors(result.transform, truth, t1, brain)
    assert tre.mean() <= 1.0, f"mean TRE {tre.mean():.2f} mm; pose {result.confidence.pose}"
    assert not result.confidence.doubtful, result.confidence.summary
    assert result.confidence.pose == rotation_label(TURNS[turn])


# Between the axes: the search's short optimisations must carry a pose up to 45° from an axis
# rotation (here about 40° from 180° about z and from 90° about z).
OBLIQUE = {
    "(35, 17.5, 180)": rigid_motion((35.0, 17.5, 180.0), (0.0, 0.0, 0.0)),
    "(40, 20, 90)": rigid_motion((40.0, 20.0, 90.0), (0.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("turn", OBLIQUE)
def test_oblique_turns_are_found_on_the_phantom(turn, phantom):
    ct, mr, head = phantom
    rotation = np.asarray(OBLIQUE[turn].GetMatrix()).reshape(3, 3)
    moving, truth = turned(mr, rotation, SHIFT_MM, centre=(0.0, 0.0, 0.0))
    result = register(ct, moving)
    tre = target_registration_errors(result.transform, truth, ct, head)
    assert tre.mean() <= 1.0, f"mean TRE {tre.mean():.2f} mm; {result.confidence.summary}"
    assert not result.confidence.doubtful, result.confidence.summary


@pytest.mark.parametrize("turn", OBLIQUE)
def test_brats_t2_turned_obliquely_is_registered_onto_t1(turn, brats):
    t1, t2, brain, centre = brats
    rotation = np.asarray(OBLIQUE[turn].GetMatrix()).reshape(3, 3)
    moving, truth = turned(t2, rotation, SHIFT_MM, centre)
    result = register(t1, moving)
    tre = target_registration_errors(result.transform, truth, t1, brain)
    assert tre.mean() <= 1.0, f"mean TRE {tre.mean():.2f} mm; {result.confidence.summary}"
    assert not result.confidence.doubtful, result.confidence.summary


# --- an unrelated moving image ------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_like_mr(phantom):
    """Smooth noise (24 mm blobs) carrying exactly the MR's histogram: no anatomy, same values."""
    _, mr, _ = phantom
    values = sitk.GetArrayFromImage(mr)
    field = sitk.GetImageFromArray(np.random.default_rng(3).normal(size=values.shape).astype(np.float32))
    field.CopyInformation(mr)
    order = np.argsort(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(field, 24.0)).ravel())
    shuffled = np.empty(values.size, dtype=values.dtype)
    shuffled[order] = np.sort(values.ravel())
    noise = sitk.GetImageFromArray(shuffled.reshape(values.shape))
    noise.CopyInformation(mr)
    return noise


# Noise has no anatomy, so its centre of mass means nothing and the orientation search may start it
# anywhere (often outside the head, which the overlap check then refuses outright); these tests
# start from the image centres to exercise the confidence of a registration that runs to the end.


def test_noise_with_the_mr_histogram_is_doubtful_and_strict_refuses(phantom, noise_like_mr):
    ct, _, _ = phantom
    result = register(ct, noise_like_mr, initializer="geometry")
    assert result.confidence.doubtful
    assert "share little structure" in result.confidence.summary
    with pytest.raises(RegistrationError, match="doubtful"):
        register(ct, noise_like_mr, initializer="geometry", strict=True)


def test_cli_fuse_warns_reports_json_and_strict_writes_nothing(tmp_path, phantom, noise_like_mr, capsys):
    ct, _, _ = phantom
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(noise_like_mr, str(tmp_path / "noise.nrrd"))
    output = tmp_path / "fused.nrrd"
    common = [
        "fuse",
        str(tmp_path / "ct.nrrd"),
        str(tmp_path / "noise.nrrd"),
        "-o",
        str(output),
        "--model",
        "average",
        "--registration",
        "rigid",
        "--init",
        "geometry",
    ]

    assert main([*common, "--strict"]) == 2
    assert "doubtful" in capsys.readouterr().err
    assert not output.exists()

    assert main([*common, "--progress", "json", "--qa", str(tmp_path / "qa")]) == 0
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines() if line.startswith('{"event"')]
    registration = next(event for event in events if event["event"] == "registration")
    assert registration["doubtful"] is True and "doubtful" in registration["summary"]
    assert "registration doubtful" in err  # the warning line, for people
    assert output.exists()
    figures = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert figures["confidence"]["doubtful"] is True
    assert (tmp_path / "qa" / "qa.png").stat().st_size > 10_000


def test_cli_register_strict_exit_2_and_qa_of_a_good_pair(tmp_path, phantom, capsys):
    ct, mr, _ = phantom
    moving, _ = turned(mr, TURNS["180 about z"], SHIFT_MM, centre=(0.0, 0.0, 0.0))
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(moving, str(tmp_path / "mr.nrrd"))
    out = tmp_path / "mr_on_ct.nrrd"
    assert (
        main(
            [
                "register",
                str(tmp_path / "ct.nrrd"),
                str(tmp_path / "mr.nrrd"),
                "-o",
                str(out),
                "--strict",
                "--qa",
                str(tmp_path / "qa"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "(simpleitk)" in err and "looks right" in err
    figures = json.loads((tmp_path / "qa" / "qa.json").read_text())
    assert figures["confidence"]["doubtful"] is False and figures["confidence"]["pose"] == "180° about z"
    assert figures["orientation_search"]["best_poses"][0]["pose"] == "180° about z"
    from PIL import Image

    picture = Image.open(tmp_path / "qa" / "qa.png")
    assert picture.width >= 3 * 200 and picture.height >= 2 * 200


def test_another_subjects_mr_against_a_ct_is_doubtful(tmp_path, shared_data, capsys):
    """The abdominal MR of another subject as reference (moved onto the CT's space, as a converter
    with arbitrary origins would leave it), the real abdominal CT as moving image."""
    ct = sitk.ReadImage(str(shared_data / "ct" / "abdomen_ct_3mm.nii.gz"))
    mr = sitk.ReadImage(str(shared_data / "ct" / "abdomen_mr_other_subject_3mm.nii.gz"))

    def centre(image):
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))

    mr.SetOrigin(tuple(np.asarray(mr.GetOrigin()) + centre(ct) - centre(mr)))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "ct_on_mr.nii.gz"
    args = ["register", str(tmp_path / "mr.nii.gz"), str(tmp_path / "ct.nii.gz"), "-o", str(out)]
    assert main([*args, "--strict"]) == 2
    assert "doubtful" in capsys.readouterr().err and not out.exists()
    assert main(args) == 0
    assert "warning: registration doubtful" in capsys.readouterr().err and out.exists()
