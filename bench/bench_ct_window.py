"""Which CT window shows a CT the way the fusion networks saw CT in training?

The shipped networks learned from the Harvard CT-MRI pictures (8-bit head CTs). For each CT
below, every candidate display window is applied inside the body (``imaging.ct.body_mask``) and
the grey levels are compared with those inside the heads of the Harvard CT pictures: the mean
absolute difference of the 5 %..95 % quantiles (a discrete Wasserstein-1 distance, grey levels
0..1; 0 = the same distribution). ``--reference-window auto`` picks the smallest per image. The
script also recomputes the Harvard quantiles that ``imaging/ct.py`` stores. Usage::

    python bench/bench_ct_window.py
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from MedFusionLib.imaging.ct import AUTO_WINDOW_CANDIDATES, TRAINING_CT_QUANTILES, body_mask, window_distances
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
    print("| CT | " + " | ".join(AUTO_WINDOW_CANDIDATES) + " | chosen |")
    print("|---|" + "---|" * (len(AUTO_WINDOW_CANDIDATES) + 1))
    for name, image in images.items():
        distances = window_distances(image, body_mask(image))
        chosen = min(distances, key=distances.get)
        print(f"| {name} | " + " | ".join(f"{distances[w]:.3f}" for w in AUTO_WINDOW_CANDIDATES) + f" | {chosen} |")


if __name__ == "__main__":
    main()
