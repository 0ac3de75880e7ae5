"""Runtime parity on the hard cases, registration taken out of the comparison.

Registers once (on torch), then fuses the registered moving volume onto the reference with
registration none on torch and on OpenVINO, and prints both times and max |torch - OpenVINO|:

1. the clinical phantom at 512×512×400: CT in int16 HU with -2048 padding outside the
   reconstruction circle and a table; MR turned 180° and shifted 30 mm, on 3 mm slices;
2. BraTS TCGA-DU-7294: T2 turned 180° about z and resampled onto T1's grid (needs ../shared/data).

Two whole runs with registration each differ more (about 2e-2 here), because two rigid
registrations of the same pair land a little apart; that is registration, not the runtime.

    python bench/bench_runtime_parity.py
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from MedFusionLib.devtools.shared_data import shared_data_dir
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.imaging.phantom import make_clinical_pair


def compare(label: str, reference: sitk.Image, moving: sitk.Image, registration: str) -> None:
    first = fuse_volumes(reference, moving, runtime="torch", registration=registration)
    print(f"{label}: {first.registration.confidence.summary}", flush=True)
    fused = {}
    for runtime in ("torch", "openvino"):
        started = time.perf_counter()
        result = fuse_volumes(reference, first.registered_moving, runtime=runtime, registration="none")
        fused[runtime] = sitk.GetArrayFromImage(result.fused)
        print(f"  {runtime}: {time.perf_counter() - started:.1f} s (fusion {result.stage_seconds['fuse']:.1f} s), "
              f"{result.fused_slices} slices", flush=True)
    difference = np.abs(fused["torch"] - fused["openvino"])
    print(f"  max |torch - openvino| {difference.max():.2e}, 99.9th percentile {np.percentile(difference, 99.9):.2e}",
          flush=True)


def turned_180_about_z(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    turn = sitk.Euler3DTransform()
    turn.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in image.GetSize()]))
    turn.SetRotation(0.0, 0.0, np.pi)
    return sitk.Resample(image, grid, turn, sitk.sitkLinear, 0.0)


def main() -> None:
    phantom = make_clinical_pair(size=(512, 512, 400), spacing=(0.5, 0.5, 0.5))
    compare("clinical 512×512×400 (CT in HU, padding, table; MR turned 180°, 3 mm slices)", phantom.ct, phantom.mr,
            "rigid")
    data = shared_data_dir()
    if data is None:
        print("BraTS case skipped: ../shared/data not found")
        return
    t1 = sitk.ReadImage(str(data / "brats" / "TCGA-DU-7294" / "t1.nii.gz"))
    t2 = sitk.ReadImage(str(data / "brats" / "TCGA-DU-7294" / "t2.nii.gz"))
    compare("BraTS T2 turned 180° on T1's grid", t1, turned_180_about_z(t2, t1), "auto")


if __name__ == "__main__":
    main()
