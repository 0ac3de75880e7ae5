"""The Harvard Whole Brain Atlas pairs as collected for the MMIF literature (``pairs.csv``).

``<data>/pairs.csv`` lists each pair's task (CT-MRI, PET-MRI, SPECT-MRI), other modality, id,
case and split (by case); the images are ``<data>/<task>/<modality>/<id>.png``. The MRI is
source A and the CT/PET/SPECT source B. Colour PET/SPECT is used through its Y channel
(full-range BT.601 YCbCr); every image is on the 8-bit scale, as the metrics score it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.imaging.colour import rgb_to_ycbcr
from MedFusionLib.io import read_image

if TYPE_CHECKING:  # training batches are tensors; reading the pairs (evaluation) needs no torch
    import torch

HARVARD_TASKS = ("CT-MRI", "PET-MRI", "SPECT-MRI")
HARVARD_SPLITS = ("train", "val")
SOURCE_A_MODALITY = "MRI"


@dataclass(frozen=True)
class HarvardPair:
    """One row of ``pairs.csv`` with the paths of its two images."""

    task: str
    other_modality: str
    pair_id: str
    case: str
    split: str
    mri_path: Path
    other_path: Path


@dataclass
class PairImages:
    """A pair on the 8-bit scale, as scored.

    ``source_a`` (MRI) and ``source_b`` (CT, or the Y channel of PET/SPECT): ``(H, W)`` float64
    integer levels in [0, 255]. ``other_rgb``: the colour image ``(H, W, 3)`` uint8 for PET/SPECT
    (to show a fused result in colour), ``None`` for CT.
    """

    pair: HarvardPair
    source_a: np.ndarray
    source_b: np.ndarray
    other_rgb: np.ndarray | None


def load_harvard_pairs(data_dir: str | Path, tasks: Sequence[str], split: str) -> list[HarvardPair]:
    """The pairs of ``tasks`` in ``split``, in ``pairs.csv`` order, with their files checked.

    Raises :class:`InputError` for a missing folder, table or image, an unknown task or split,
    or a selection without pairs.
    """
    data_dir = Path(data_dir)
    table = data_dir / "pairs.csv"
    if not table.is_file():
        raise InputError(
            f"{table} not found; --data must be the Harvard folder holding pairs.csv and the "
            "CT-MRI, PET-MRI, SPECT-MRI subfolders (e.g. ../shared/data/harvard)."
        )
    unknown = [task for task in tasks if task not in HARVARD_TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {unknown}; choose from {', '.join(HARVARD_TASKS)} or 'all'.")
    if split not in HARVARD_SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(HARVARD_SPLITS)}.")
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs = []
    for row in rows:
        if row["task"] not in tasks or row["split"] != split:
            continue
        folder = data_dir / row["task"]
        pair = HarvardPair(
            task=row["task"],
            other_modality=row["other_modality"],
            pair_id=row["id"],
            case=row["case"],
            split=row["split"],
            mri_path=folder / SOURCE_A_MODALITY / f"{row['id']}.png",
            other_path=folder / row["other_modality"] / f"{row['id']}.png",
        )
        for path in (pair.mri_path, pair.other_path):
            if not path.is_file():
                raise InputError(f"{path} is listed in {table} but missing; restore the data folder.")
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{table} lists no {split} pairs for {', '.join(tasks)}.")
    return pairs


def luminance_eight_bit(image: sitk.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The gray levels (or the rounded Y of an RGB image) as ``(H, W)`` float64, plus the RGB.

    Returns ``(levels, rgb)`` with ``rgb`` the ``(H, W, 3)`` uint8 array of a colour image, else
    ``None``. Raises :class:`InputError` if the image is not a 2D 8-bit picture.
    """
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() != 2 or array.dtype != np.uint8:
        raise InputError(
            f"{name}: expected a 2D 8-bit picture (gray or RGB), got a {image.GetDimension()}D "
            f"image of {array.dtype}. Save fused results as 8-bit PNG."
        )
    if array.ndim == 2:
        return array.astype(np.float64), None
    luminance = np.clip(np.round(rgb_to_ycbcr(array)[..., 0]), 0, 255)
    return luminance, array


def load_pair_images(pair: HarvardPair) -> PairImages:
    """Read a pair with :func:`~MedFusionLib.io.read_image`; B is the Y channel when in colour."""
    source_a, _ = luminance_eight_bit(read_image(pair.mri_path), str(pair.mri_path))
    source_b, rgb = luminance_eight_bit(read_image(pair.other_path), str(pair.other_path))
    if source_a.shape != source_b.shape:
        raise InputError(
            f"pair {pair.task}/{pair.pair_id}: MRI {source_a.shape} and {pair.other_modality} "
            f"{source_b.shape} differ in size; the pair must be co-registered."
        )
    return PairImages(pair, source_a, source_b, rgb)


def resolve_tasks(task: str) -> list[str]:
    """``"all"`` -> every Harvard task; a task name -> ``[task]``; anything else raises."""
    if task == "all":
        return list(HARVARD_TASKS)
    if task not in HARVARD_TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(HARVARD_TASKS)} or 'all'.")
    return [task]


def load_harvard_pairs_array(data_dir: str | Path, tasks: Sequence[str], split: str) -> tuple[torch.Tensor, list[str]]:
    """The Harvard pairs of ``tasks`` in ``split``: ``(N, 2, 256, 256)`` uint8 and each pair's task.

    Raises :class:`InputError` for a missing folder or file, an unknown task or split (see
    :func:`load_harvard_pairs`).
    """
    pairs = load_harvard_pairs(data_dir, list(tasks), split)
    stacked, pair_tasks = [], []
    for pair in pairs:
        images = load_pair_images(pair)
        stacked.append(np.stack([images.source_a, images.source_b]).astype(np.uint8))
        pair_tasks.append(pair.task)
    shapes = {array.shape for array in stacked}
    if len(shapes) != 1:
        raise InputError(
            f"Harvard pairs in {data_dir} differ in size ({sorted(shapes)}); all must be one size to batch."
        )
    import torch

    return torch.from_numpy(np.stack(stacked)), pair_tasks
