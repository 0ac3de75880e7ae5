"""The orientation-robust start: accuracy on turned scans, its cost on a clinical-size pair, backends.

1. BraTS T2 (``../shared/data/brats``) turned 180° about each axis and 90° about the vertical,
   each shifted 30 mm (put into the T2's origin and direction, as a scanner records a patient who
   lay differently: exact truth, nothing cut off), registered onto T1 with the defaults. TRE over
   every brain voxel before and after, wall and CPU seconds of ``register``, of which the search,
   the winning pose and the confidence figures.
2. The cost the start adds on a 512×512×400 CT (int16 HU, -2048 padding, a table) and a
   512×512×80 MR (``bench/bench_clinical.py`` writes the pair): CT recognition, padding, body
   mask and the search, against the old start (a float copy and the two centres of mass).
3. With ``--backends simpleitk,elastix``: the rigid registration of case 1's z-turn by each
   backend (TRE, seconds; itk-elastix's one-off load apart).

Usage::

    python bench/bench_clinical.py --pairs large     # once: writes /tmp/medfusion-clinical/large_*.nii
    python bench/bench_orientation.py [--large /tmp/medfusion-clinical] [--backends simpleitk,elastix]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.devtools.registration_accuracy import target_registration_errors
from MedFusionLib.io.gate import prepare_input
from MedFusionLib.registration import checks, register
from MedFusionLib.registration.orientation import rotation_label, search_orientations

BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats" / "TCGA-DU-7294"
SHIFT_MM = (18.0, -19.2, 14.4)  # 30 mm
TURNS = {
    "180° about x": np.diag([1.0, -1.0, -1.0]),
    "180° about y": np.diag([-1.0, 1.0, -1.0]),
    "180° about z": np.diag([-1.0, -1.0, 1.0]),
    "90° about z": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}


def turned(image: sitk.Image, rotation: np.ndarray, centre) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    truth = sitk.Euler3DTransform()
    truth.SetCenter(tuple(centre))
    truth.SetMatrix(tuple(rotation.ravel()), 1e-6)
    truth.SetTranslation(SHIFT_MM)
    moved = sitk.Image(image)
    moved.SetOrigin(truth.TransformPoint(image.GetOrigin()))
    moved.SetDirection(tuple((rotation @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return moved, truth


def clocked(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def rotated_brats(backends: list[str]) -> None:
    t1 = sitk.ReadImage(str(BRATS / "t1.nii.gz"))
    t2 = sitk.ReadImage(str(BRATS / "t2.nii.gz"))
    brain = sitk.GetArrayFromImage(t1) > 0
    centre = t1.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(brain).mean(axis=0)[::-1]])
    print(f"BraTS {BRATS.name}: T2 turned and shifted 30 mm, registered onto T1 with the defaults (rigid, --init auto)")
    print(
        "| turn | backend | TRE before mm | TRE after mm (max) | wall s | CPU s | search s | winning pose | MI "
        "| margin | overlap | doubtful |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rotation in TURNS.items():
        moving, truth = turned(t2, rotation, centre)
        before = target_registration_errors(sitk.Euler3DTransform(), truth, t1, brain).mean()
        for backend in backends if name == "180° about z" else backends[:1]:
            result, wall, cpu = clocked(register, t1, moving, backend=backend)
            tre = target_registration_errors(result.transform, truth, t1, brain)
            c = result.confidence
            margin = f"{c.margin:.1%}" if c.margin is not None else "-"
            print(
                f"| {name} | {result.backend} | {before:.1f} | {tre.mean():.2f} ({tre.max():.2f}) | {wall:.1f} "
                f"| {cpu:.1f} | {result.search_seconds:.1f} | {c.pose} | {c.mutual_information:.2f} | {margin} "
                f"| {c.overlap:.2f} | {c.doubtful} |",
                flush=True,
            )
            assert c.pose == rotation_label(rotation) or print(f"  wrong pose: {c.pose}")


def large_start(folder: Path) -> None:
    ct_path, mr_path = folder / "large_ct.nii", folder / "large_mr.nii"
    if not mr_path.exists():
        print(f"\n(no {mr_path}: run bench/bench_clinical.py --pairs large first)")
        return
    ct, mr = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(mr_path))
    print(f"\nstart on CT {ct.GetSize()} {ct.GetPixelIDTypeAsString()} and MR {mr.GetSize()} (best of 2 runs)")

    def old_start():
        fixed, moving = sitk.Cast(ct, sitk.sitkFloat32), sitk.Cast(mr, sitk.sitkFloat32)
        return checks.foreground(fixed).centroid, checks.foreground(moving).centroid

    def new_start():
        fixed, moving = prepare_input(ct, "reference"), prepare_input(mr, "moving")
        fixed_region = checks.foreground(fixed.image, fixed.body_mask())
        moving_region = checks.foreground(moving.image, moving.body_mask())
        return search_orientations(fixed.image, moving.image, fixed_region, moving_region)

    rows = {}
    for label, function in (
        ("old: float copies + centres of mass", old_start),
        ("new: CT prep + body mask + 24-pose search", new_start),
    ):
        runs = [clocked(function) for _ in range(2)]
        rows[label] = min(runs, key=lambda run: run[1])
    print("| start | wall s | CPU s |")
    print("|---|---|---|")
    for label, (_, wall, cpu) in rows.items():
        print(f"| {label} | {wall:.2f} | {cpu:.2f} |")
    search = rows["new: CT prep + body mask + 24-pose search"][0]
    print(
        f"search alone {search.seconds:.2f} s; winner {search.best.label} (MI {search.best.metric:.3f}), "
        f"runner-up {search.runner_up.label} ({search.runner_up.metric:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-clinical")
    parser.add_argument("--backends", default="simpleitk")
    args = parser.parse_args()
    if BRATS.is_dir():
        rotated_brats(args.backends.split(","))
    large_start(args.large)


if __name__ == "__main__":
    main()
