"""What MedFusionLib.io's safety costs: atomic writes, NIfTI completeness check, DICOM series.

Each row times one operation on a BraTS-sized volume (240 x 240 x 155) and divides by the
plain SimpleITK call measured in the same process. Best of ``--repeats`` runs.

    python bench/bench_io.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from functools import partial
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
            image, kind = brats_sized_volume(dtype), np.dtype(dtype).name
            # (row, plain SimpleITK call, MedFusionLib.io call), timed in this order: reads follow writes.
            operations = []
            for extension in (".nii.gz", ".nrrd"):
                plain, ours = work / f"plain{extension}", work / f"ours{extension}"
                operations += [
                    (f"write {extension} {kind}", partial(sitk.WriteImage, image, str(plain), True),
                     partial(write_image, image, ours, overwrite=True)),
                    (f"read {extension} {kind}", partial(sitk.ReadImage, str(plain)), partial(read_image, ours)),
                ]
            nifti, series = work / "ours.nii.gz", work / "series"
            operations += [
                (f"write DICOM series {kind} (vs .nii.gz)", partial(sitk.WriteImage, image, str(nifti), True),
                 partial(write_dicom_series, image, series, overwrite=True)),
                (f"read DICOM series {kind} (vs .nii.gz)", partial(sitk.ReadImage, str(nifti)),
                 partial(read_image, series)),
            ]
            rows += [(row, best_seconds(baseline, repeats), best_seconds(ours, repeats))
                     for row, baseline, ours in operations]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'operation (240x240x155)':<44} {'SimpleITK s':>11} {'io s':>8} {'ratio':>6}")
    for name, baseline, ours in rows:
        print(f"{name:<44} {baseline:>11.3f} {ours:>8.3f} {ours / baseline:>6.2f}")


if __name__ == "__main__":
    main()
