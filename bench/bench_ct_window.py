"""Which CT window shows a CT the way the fusion networks saw CT in training?

The shipped networks learned from the Harvard CT-MRI pictures (8-bit head CTs). For each CT
below, every candidate display window is applied inside the body (``imaging.ct.body_mask``) and
the grey levels are compared with those inside the heads of the Harvard CT pictures: the mean
absolute difference of the 5 %..95 % quantiles (a discrete Wasserstein-1 distance, grey levels
0..1; 0 = the same distribution), and so are percentiles of raw HU (no window). The window with
the smallest mean over the CTs is the default for a CT (``--reference-window auto``). The script
also recomputes the Harvard quantiles that ``imaging/ct.py`` stores. Usage::

    python bench/bench_ct_window.py
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from MedFusionLib.core.choices import DEFAULT_CT_WINDOW
from MedFusionLib.imaging.ct import AUTO_WINDOW_CANDIDATES, TRAINING_CT_QUANTILES, body_mask, window_distances
from MedFusionLib.imaging.normalization import normalize_intensity
from MedFusionLib.imaging.phantom import make_clinical_pair
from MedFusionLib.io import read_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def harvard_quantiles() -> np.ndarray | None:
    files = sorted(glob.glob(str(DATA / "harvard" / "CT-MRI" / "CT" / "*.png")))
    if not files:
        return None
    values = []
    for file in files:
        picture = np.asarray(Image.open(file).convert("L")).astype(np.float64)
        labels, count = ndimage.label(picture > 10)
        sizes = ndimage.sum(np.ones_like(picture), labels, range(1, count + 1))
        head = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
        values.append(picture[head] / 255.0)
    return np.quantile(np.concatenate(values), np.linspace(0.05, 0.95, 19))


def main() -> None:
    measured = harvard_quantiles()
    if measured is None:
        print("Harvard pictures not found; using the stored quantiles")
    else:
        print(f"Harvard CT quantiles 5..95 %: {np.round(measured, 3).tolist()}")
        print(f"stored in imaging/ct.py:      {list(TRAINING_CT_QUANTILES)}")
    images = {
        "phantom head CT (HU, -2048 padding, table)": make_clinical_pair(
            size=(128, 128, 96), spacing=(1.8, 1.8, 2.0)
        ).ct
    }
    for name, path in (
        ("real abdomen CT (DICOM)", DATA / "ct" / "abdomen_ct_dicom"),
        ("real abdomen CT (3 mm)", DATA / "ct" / "abdomen_ct_3mm.nii.gz"),
    ):
        if path.exists():
            images[name] = read_image(path)
    print()
    columns = (*AUTO_WINDOW_CANDIDATES, "percentiles")
    print("| CT | " + " | ".join(columns) + " | closest |")
    print("|---|" + "---|" * (len(columns) + 1))
    rows = []
    for name, image in images.items():
        mask = body_mask(image)
        distances = window_distances(image, mask)
        distances["percentiles"] = percentile_distance(image, mask)
        rows.append(distances)
        closest = min(distances, key=distances.get)
        print(f"| {name} | " + " | ".join(f"{distances[c]:.3f}" for c in columns) + f" | {closest} |")
    mean = {c: float(np.mean([row[c] for row in rows])) for c in columns}
    print("| mean | " + " | ".join(f"{mean[c]:.3f}" for c in columns) + f" | {min(mean, key=mean.get)} |")
    print(f"\nthe default (core.choices.DEFAULT_CT_WINDOW): {DEFAULT_CT_WINDOW}")


def percentile_distance(image, mask) -> float:
    """The same distance for percentiles of raw HU (the rule without a window, padding included)."""
    values = sitk.GetArrayViewFromImage(image)
    shown = normalize_intensity(values)[sitk.GetArrayViewFromImage(mask) > 0]
    levels = np.linspace(0.05, 0.95, len(TRAINING_CT_QUANTILES))
    return float(np.mean(np.abs(np.quantile(shown, levels) - np.asarray(TRAINING_CT_QUANTILES))))


if __name__ == "__main__":
    main()
