"""Registration accuracy, time and memory per preset and backend, on real BraTS volumes.

The T2 volume of a BraTS case is moved through a *known* transform and registered back onto the
T1 volume of the same case (co-registered by BraTS, so the known transform is the answer):

* rigid: ``--draws`` random motions, rotations uniform in ±15° per axis, translations uniform in
  ±20 mm per axis; rotation error (°), translation error at the brain centre (mm), TRE.
* deformation: a small rigid motion (±4°, ±5 mm) plus a smooth B-spline deformation (control
  points every 40 mm, up to ±6 mm each), registered with every preset; TRE, and the B-spline's
  TRE relative to rigid alone.

TRE: |found(x) − truth(x)| over every brain voxel (T1 > 0), mean and max, mm. Time: wall-clock
seconds of ``register`` (elastix's one-off library load per process excluded and shown apart)
and the process CPU seconds it used. Peak memory: the largest resident-set growth above the level
before the call, sampled every 5 ms. Usage::

    python bench/bench_registration.py                      # both backends, all presets, 3 rigid draws
    python bench/bench_registration.py --backends simpleitk --presets rigid --draws 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import RegistrationError
from MedFusionLib.devtools.benchmark import PeakMemory
from MedFusionLib.devtools.registration_accuracy import (
    random_rigid,
    rigid_errors,
    smooth_deformation,
    target_registration_errors,
    warp_with_known_transform,
)
from MedFusionLib.registration import available_backends, register
from MedFusionLib.registration.elastix_backend import (
    load_itk_elastix,
    simpleitk_has_elastix,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"


def timed_register(reference, moving, preset, backend):
    """``(result or error message, wall s, cpu s, peak MiB)``."""
    with PeakMemory() as memory:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            result = register(reference, moving, preset=preset, backend=backend)
        except RegistrationError as error:
            result = f"RegistrationError: {error}"
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, wall, cpu, memory.growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="TCGA-DU-7294", help="BraTS case folder under ../shared/data/brats")
    parser.add_argument("--backends", default=",".join(available_backends()))
    parser.add_argument("--presets", default="rigid,affine,bspline")
    parser.add_argument("--draws", type=int, default=3, help="random rigid motions")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    backends, presets = args.backends.split(","), args.presets.split(",")
    case = DATA / args.case
    if not case.is_dir():
        raise SystemExit(f"no BraTS case at {case}")

    t1 = sitk.ReadImage(str(case / "t1.nii.gz"))
    t2 = sitk.ReadImage(str(case / "t2.nii.gz"))
    brain = sitk.GetArrayFromImage(t1) > 0
    centre = t1.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(brain).mean(axis=0)[::-1]])
    print(
        f"case {args.case}: T2 moved onto T1, {t1.GetSize()} voxels of {t1.GetSpacing()} mm, {brain.sum()} brain voxels"
    )
    print(f"ITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    if "elastix" in backends and not simpleitk_has_elastix():
        started = time.perf_counter()
        load_itk_elastix()
        print(f"itk-elastix first load (once per process): {time.perf_counter() - started:.1f} s")

    rng = np.random.default_rng(args.seed)
    if "rigid" in presets:
        print("\nrigid recovery: rotations up to 15° per axis, translations up to 20 mm per axis")
        header = (
            f"{'draw':>4} {'truth rot (°)':>22} {'truth shift (mm)':>22} {'backend':>9} {'rot err °':>9} "
            f"{'shift err':>9} {'TRE mean':>8} {'TRE max':>7} {'wall s':>6} {'cpu s':>6} {'peak MiB':>8}"
        )
        print(header)
        for draw in range(args.draws):
            truth = random_rigid(rng, centre, 15.0, 20.0)
            moving = warp_with_known_transform(t2, truth)
            angles = np.degrees(truth.GetParameters()[:3])
            shift = truth.GetParameters()[3:]
            for backend in backends:
                result, wall, cpu, peak = timed_register(t1, moving, "rigid", backend)
                prefix = (
                    f"{draw:>4} {np.array2string(angles, precision=1):>22} "
                    f"{np.array2string(np.asarray(shift), precision=1):>22} {backend:>9}"
                )
                if isinstance(result, str):
                    print(f"{prefix} {result}")
                    continue
                rotation, translation = rigid_errors(result.transform, truth, centre)
                tre = target_registration_errors(result.transform, truth, t1, brain)
                print(
                    f"{prefix} {rotation:>9.3f} {translation:>9.3f} {tre.mean():>8.3f} {tre.max():>7.3f} "
                    f"{wall:>6.2f} {cpu:>6.2f} {peak:>8.0f}"
                )

    if presets == ["rigid"]:
        return
    print("\nsmooth deformation: rigid ±4°/±5 mm plus B-spline (40 mm control points, up to ±6 mm)")
    truth = sitk.CompositeTransform([random_rigid(rng, centre, 4.0, 5.0), smooth_deformation(t2, rng, 40.0, 6.0)])
    moving = warp_with_known_transform(t2, truth)
    print(
        f"{'preset':>8} {'backend':>9} {'TRE mean':>8} {'TRE max':>7} {'vs rigid':>8} {'MI before':>9} "
        f"{'MI after':>8} {'wall s':>6} {'cpu s':>6} {'peak MiB':>8}"
    )
    for backend in backends:
        rigid_mean = None
        for preset in presets:
            result, wall, cpu, peak = timed_register(t1, moving, preset, backend)
            if isinstance(result, str):
                print(f"{preset:>8} {backend:>9} {result}")
                continue
            tre = target_registration_errors(result.transform, truth, t1, brain)
            rigid_mean = tre.mean() if preset == "rigid" else rigid_mean
            relative = f"{tre.mean() / rigid_mean:>7.0%}" if rigid_mean else f"{'':>8}"
            print(
                f"{preset:>8} {backend:>9} {tre.mean():>8.3f} {tre.max():>7.3f} {relative:>8} "
                f"{-result.metric_before:>9.3f} "
                f"{-result.metric_after:>8.3f} {wall:>6.2f} {cpu:>6.2f} {peak:>8.0f}"
            )


if __name__ == "__main__":
    main()
