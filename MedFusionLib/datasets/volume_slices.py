"""Training pairs from co-registered volumes (e.g. BraTS T1/T2): their axial slices that hold anatomy.

Each volume is normalised on its own by
:func:`~MedFusionLib.imaging.normalization.normalize_intensity` and quantised to 8 bits, giving the
``(S, 2, Y, X)`` uint8 pairs of :mod:`~MedFusionLib.datasets.pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedFusionLib.core.errors import InputError
from MedFusionLib.datasets.pairs import ANATOMY_THRESHOLD
from MedFusionLib.imaging.normalization import normalize_intensity
from MedFusionLib.io import read_image


def load_volume_slices(
    volume_a: str | Path | sitk.Image,
    volume_b: str | Path | sitk.Image,
    *,
    min_foreground: float = 0.05,
) -> torch.Tensor:
    """Axial slices of two co-registered volumes as ``(S, 2, Y, X)`` uint8.

    Each volume is normalised to [0, 1] on its own (99th-percentile clip, min-max) and quantised
    to 8 bits; slices where either source has less than ``min_foreground`` of its pixels above
    :data:`ANATOMY_THRESHOLD` are dropped (empty slices teach nothing). Raises
    :class:`InputError` if the volumes are not 3D on one grid, or no slice qualifies.
    """
    images = [v if isinstance(v, sitk.Image) else read_image(v) for v in (volume_a, volume_b)]
    names = [str(v) if not isinstance(v, sitk.Image) else f"volume {i}" for i, v in enumerate((volume_a, volume_b))]
    for image, name in zip(images, names):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{name}: expected a 3D scalar volume, got {image.GetDimension()}D with "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s).")
    if images[0].GetSize() != images[1].GetSize():
        raise InputError(
            f"{names[0]} {images[0].GetSize()} and {names[1]} {images[1].GetSize()} are not on one grid; "
            "register and resample them first (`medfusion fuse --registration ...` or a co-registered dataset)."
        )
    arrays = [normalize_intensity(sitk.GetArrayFromImage(image).astype(np.float32)) for image in images]
    levels = np.stack([np.round(a * 255.0) for a in arrays], axis=1).astype(np.uint8)  # (Z, 2, Y, X)
    foreground = (levels > ANATOMY_THRESHOLD * 255).mean(axis=(2, 3))  # (Z, 2)
    keep = np.all(foreground >= min_foreground, axis=1)
    if not keep.any():
        raise InputError(f"no axial slice of {names[0]} / {names[1]} has {min_foreground:.0%} foreground in both.")
    return torch.from_numpy(levels[keep])


def find_volume_cases(data_dir: str | Path, modalities: Sequence[str]) -> list[tuple[Path, Path]]:
    """Case folders under ``data_dir`` holding ``<m>.nii.gz`` (or ``.nii``) for both ``modalities``.

    Returns ``[(path_a, path_b), ...]`` sorted by case name; raises :class:`InputError` if none.
    """
    data_dir = Path(data_dir)
    if len(modalities) != 2:
        raise InputError(f"volume training needs two modalities (e.g. t1,t2), got {list(modalities)}")
    cases = []
    for case in sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []:
        found = []
        for modality in modalities:
            candidates = [case / f"{modality}.nii.gz", case / f"{modality}.nii"]
            found.append(next((c for c in candidates if c.is_file()), None))
        if all(found):
            cases.append((found[0], found[1]))
    if not cases:
        raise InputError(
            f"{data_dir}: no case folder holds both {modalities[0]}.nii.gz and {modalities[1]}.nii.gz; "
            "--data must be a Harvard folder (with pairs.csv) or a folder of co-registered case folders."
        )
    return cases
