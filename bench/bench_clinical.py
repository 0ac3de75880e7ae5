"""Whole-command time and peak memory of ``medfusion fuse --registration rigid`` on clinical-like pairs.

Two pairs, written once into ``--data`` (never into the repository):

* ``brats``: BraTS T1 (reference) and T2 of the same case with the patient turned 180° about the
  head-foot axis and shifted 30 mm (put into the T2's origin and direction, as a scanner would
  record it), from ``../shared/data/brats``.
* ``large``: the clinical phantom (:func:`MedFusionLib.imaging.phantom.make_clinical_pair`) at
  clinical size: CT 512×512×400 (0.45×0.45×0.5 mm, int16 HU, -2048 outside the reconstruction
  circle, a table) and a T2-like MR 512×512×80 (2.5 mm slices) turned 180° and shifted 30 mm;
  ``large400``: the same with an MR of 512×512×400 (0.5 mm slices), two volumes of that size.

Each command runs under ``/usr/bin/time -v`` (wall seconds, peak resident set size); with
``--baseline DIR`` the same command also runs on another checkout (e.g. a ``git worktree`` of an
older commit) for a before/after table. The fused output is written uncompressed (``.nii``) so
that gzip does not dominate the time. Usage::

    python bench/bench_clinical.py --data /tmp/medfusion-clinical
    git worktree add /tmp/base8603 8603e9e
    python bench/bench_clinical.py --data /tmp/medfusion-clinical --baseline /tmp/base8603
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
BRATS = REPO.parent / "shared" / "data" / "brats" / "TCGA-DU-7294"
TURN = np.diag([-1.0, -1.0, 1.0])  # 180° about the head-foot axis
SHIFT_MM = (18.0, -19.2, 14.4)  # 30 mm


def turned(image: sitk.Image, centre) -> sitk.Image:
    """``image``'s voxels with the patient turned by :data:`TURN` about ``centre`` and shifted."""
    truth = sitk.Euler3DTransform()
    truth.SetCenter(tuple(centre))
    truth.SetMatrix(tuple(TURN.ravel()))
    truth.SetTranslation(SHIFT_MM)
    moved = sitk.Image(image)
    moved.SetOrigin(truth.TransformPoint(image.GetOrigin()))
    moved.SetDirection(tuple((TURN @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return moved


def make_pairs(folder: Path, wanted: tuple[str, ...] = ("brats", "large")) -> dict[str, tuple[Path, Path]]:
    from MedFusionLib.imaging.phantom import make_clinical_pair

    folder.mkdir(parents=True, exist_ok=True)
    pairs = {}
    if BRATS.is_dir():
        reference, moving = folder / "brats_t1.nii.gz", folder / "brats_t2_turned.nii.gz"
        if not moving.exists():
            t1 = sitk.ReadImage(str(BRATS / "t1.nii.gz"))
            brain = sitk.GetArrayViewFromImage(t1) > 0
            centre = t1.TransformContinuousIndexToPhysicalPoint(
                [float(v) for v in np.argwhere(brain).mean(axis=0)[::-1]]
            )
            sitk.WriteImage(t1, str(reference))
            sitk.WriteImage(turned(sitk.ReadImage(str(BRATS / "t2.nii.gz")), centre), str(moving))
        pairs["brats"] = (reference, moving)
    for name, slice_mm in (("large", 2.5), ("large400", 0.5)):
        reference, moving = folder / "large_ct.nii", folder / f"{name}_mr.nii"
        if name in wanted and not moving.exists():
            print(f"rendering the 512×512×400 phantom pair ({name}) ...", file=sys.stderr)
            pair = make_clinical_pair(
                size=(512, 512, 400), spacing=(0.45, 0.45, 0.5), moving_spacing=(0.45, 0.45, slice_mm)
            )
            sitk.WriteImage(pair.ct, str(reference))
            sitk.WriteImage(pair.mr, str(moving))
        pairs[name] = (reference, moving)
    return pairs


def timed(command: list[str], checkout: Path) -> tuple[float, float, float, int, str]:
    """``(wall s, CPU s, peak RSS GiB, exit status, last output line)`` of ``command`` run in
    ``checkout``. CPU seconds (user + system) are what a shared machine's load does not inflate."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        completed = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report.name, *command],
            cwd=checkout,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(checkout), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
        )
        text = report.read()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", text)
    seconds = (
        (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))) if wall else float("nan")
    )
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 2**20
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", text).group(1)) for kind in ("User", "System"))
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip() and "\r" not in line]
    return seconds, cpu, peak, completed.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-clinical")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to run the same commands in")
    parser.add_argument("--pairs", default="brats,large", help="brats, large, large400 (comma-separated)")
    parser.add_argument("--extra", default="", help="extra flags for medfusion fuse, e.g. '--backend elastix'")
    args = parser.parse_args()
    pairs = make_pairs(args.data, tuple(args.pairs.split(",")))
    checkouts = [("after", REPO)] + ([("before", args.baseline)] if args.baseline else [])
    print("| pair | code | wall s | CPU s | peak RSS GiB | exit | last line |")
    print("|---|---|---|---|---|---|---|")
    for name in args.pairs.split(","):
        reference, moving = pairs[name]
        for label, checkout in checkouts:
            output = args.data / f"fused_{name}_{label}.nii"
            output.unlink(missing_ok=True)
            command = [
                sys.executable,
                "-m",
                "MedFusionLib",
                "fuse",
                str(reference),
                str(moving),
                "-o",
                str(output),
                "--registration",
                "rigid",
                "--progress",
                "none",
                *args.extra.split(),
            ]
            seconds, cpu, peak, status, last = timed(command, checkout)
            print(
                f"| {name} | {label} | {seconds:.1f} | {cpu:.1f} | {peak:.2f} | {status} | {last[:150]} |", flush=True
            )


if __name__ == "__main__":
    main()
