"""What MedFusionLib.io's safety costs: atomic writes, NIfTI completeness check, DICOM series.

Each row times one operation on a BraTS-sized volume (240 x 240 x 155) and divides by the
plain SimpleITK call measured in the same process. Best of ``--repeats`` runs.

    python bench/bench_io.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.devtools.timing import best_seconds
from MedFusionLib.io import read_image, write_image
from MedFusionLib.io.dicom import write_dicom_series


def brats_sized_volume(dtype) -> sitk.Image:
    values = np.random.default_rng(0).normal(300, 80, size=(155, 240, 240)).clip(0, None)
    image = sitk.GetImageFromArray(values.astype(dtype))
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    work = Path(tempfile.mkdtemp(prefix="bench_io_"))
    rows = []
    try:
        for dtype in (np.int16, np.float32):
            image = brats_sized_volume(dtype)
            for extension in (".nii.gz", ".nrrd"):
                plain, ours = work / f"plain{extension}", work / f"ours{extension}"
                baseline = best_seconds(lambda: sitk.WriteImage(image, str(plain), True), repeats)
                atomic = best_seconds(
                    lambda: write_image(image, ours, overwrite=True), repeats
                )
                rows.append((f"write {extension} {np.dtype(dtype).name}", baseline, atomic))
                baseline = best_seconds(lambda: sitk.ReadImage(str(plain)), repeats)
                checked = best_seconds(lambda: read_image(ours), repeats)
                rows.append((f"read {extension} {np.dtype(dtype).name}", baseline, checked))
            series = work / "series"
            nifti = work / "ours.nii.gz"
            baseline = best_seconds(lambda: sitk.WriteImage(image, str(nifti), True), repeats)
            dicom = best_seconds(
                lambda: write_dicom_series(image, series, overwrite=True), repeats
            )
            rows.append((f"write DICOM series {np.dtype(dtype).name} (vs .nii.gz)", baseline, dicom))
            baseline = best_seconds(lambda: sitk.ReadImage(str(nifti)), repeats)
            dicom = best_seconds(lambda: read_image(series), repeats)
            rows.append((f"read DICOM series {np.dtype(dtype).name} (vs .nii.gz)", baseline, dicom))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'operation (240x240x155)':<44} {'SimpleITK s':>11} {'io s':>8} {'ratio':>6}")
    for name, baseline, ours in rows:
        print(f"{name:<44} {baseline:>11.3f} {ours:>8.3f} {ours / baseline:>6.2f}")


if __name__ == "__main__":
    main()
