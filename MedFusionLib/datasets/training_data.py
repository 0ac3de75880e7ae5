"""Training data: co-registered image pairs, random crops and paired augmentation.

Two sources of pairs, both held in memory as ``(N, 2, H, W)`` uint8 tensors (channel 0: source A,
channel 1: source B, 8-bit levels as the metrics score them):

* :func:`load_harvard_pairs_array`: the Harvard 2D pairs (``pairs.csv``), MRI as A and CT, or the
  Y channel of colour PET/SPECT, as B; the split is the table's, which is by case.
* :func:`load_volume_slices`: co-registered volumes (e.g. BraTS T1/T2), each volume normalised by
  :func:`~MedFusionLib.imaging.normalization.normalize_intensity`, sampled as axial slices that hold
  foreground in both.

:class:`PairDataset` serves whole pairs as ``(2, H, W)`` float32 in [0, 1]; the random crops and
augmentation are done batch-wise by :class:`PairAugmentation` with an explicit
``torch.Generator``, so that a run is reproducible from its seed and resumable exactly. The
geometric part (rotation, flips, elastic deformation, crop) is one sampling grid applied
identically to both sources; gamma and occlusion are drawn per source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from MedFusionLib.core.errors import InputError
from MedFusionLib.evaluation.scoring import HARVARD_TASKS, load_harvard_pairs, load_pair_images
from MedFusionLib.io import read_image
from MedFusionLib.imaging.normalization import normalize_intensity

# On the [0, 1] intensity scale of normalised images: a pixel above it is anatomy, not air (slice
# selection and foreground crops).
ANATOMY_THRESHOLD = 0.1


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
    :func:`MedFusionLib.evaluation.scoring.load_harvard_pairs`).
    """
    pairs = load_harvard_pairs(data_dir, list(tasks), split)
    stacked, pair_tasks = [], []
    for pair in pairs:
        images = load_pair_images(pair)
        stacked.append(np.stack([images.source_a, images.source_b]).astype(np.uint8))
        pair_tasks.append(pair.task)
    shapes = {array.shape for array in stacked}
    if len(shapes) != 1:
        raise InputError(f"Harvard pairs in {data_dir} differ in size ({sorted(shapes)}); all must be one size to batch.")
    return torch.from_numpy(np.stack(stacked)), pair_tasks


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


class PairDataset(Dataset):
    """Whole pairs as ``(2, H, W)`` float32 in [0, 1] from an ``(N, 2, H, W)`` uint8 tensor."""

    def __init__(self, pairs: torch.Tensor) -> None:
        if pairs.dim() != 4 or pairs.shape[1] != 2 or pairs.dtype != torch.uint8:
            raise InputError(f"pairs must be an (N, 2, H, W) uint8 tensor, got {tuple(pairs.shape)} {pairs.dtype}")
        if pairs.shape[0] == 0:
            raise InputError("no training pairs: the selected data is empty.")
        self.pairs = pairs

    def __len__(self) -> int:
        return self.pairs.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pairs[index].float() / 255.0


@dataclass
class AugmentationConfig:
    """Random crop and augmentation settings (``augmentation`` in a training config).

    ``crop``: side of the square training crop in pixels. ``rotation_deg``: rotation drawn
    uniformly in ±that. ``flip_probability``: each of horizontal/vertical flips. ``gamma``:
    ``[low, high]``, one gamma per source drawn log-uniformly. ``elastic_alpha``: peak
    displacement of the elastic field in pixels (0: off), ``elastic_grid``: its control points
    per side. ``occlusion_probability``/``occlusion_size``: a zeroed square (fraction of the
    crop side) in one source. ``foreground_crops``: centre crops on anatomy rather than
    uniformly (the Harvard pictures are mostly black background).
    """

    crop: int = 128
    rotation_deg: float = 15.0
    flip_probability: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.3)
    elastic_alpha: float = 4.0
    elastic_grid: int = 4
    occlusion_probability: float = 0.2
    occlusion_size: float = 0.25
    foreground_crops: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentationConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown augmentation setting(s) {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.gamma = tuple(config.gamma)
        if config.crop < 16:
            raise InputError(f"augmentation crop must be >= 16 pixels, got {config.crop}")
        if not 0 < config.gamma[0] <= config.gamma[1]:
            raise InputError(f"augmentation gamma must be [low, high] with 0 < low <= high, got {list(config.gamma)}")
        return config

    def to_dict(self) -> dict:
        values = asdict(self)
        values["gamma"] = list(self.gamma)
        return values


class PairAugmentation:
    """``(B, 2, H, W)`` pairs in [0, 1] -> ``(B, 2, crop, crop)`` augmented crops in [0, 1].

    All randomness comes from the ``generator`` passed to :meth:`__call__` (a CPU generator; the
    random numbers are moved to the batch's device), so equal generator states give equal crops.
    """

    def __init__(self, config: AugmentationConfig) -> None:
        self.config = config

    def _crop_centres(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, 2)`` crop centres (x, y) in pixels."""
        size_b, _, height, width = batch.shape
        half = self.config.crop / 2.0
        if self.config.foreground_crops:
            # Draw a centre among the anatomy pixels (plus a small floor, so an empty image still
            # works), restricted to where the crop stays mostly inside the image.
            weights = (batch.amax(dim=1) > ANATOMY_THRESHOLD).float().cpu() + 1e-3
            margin_y, margin_x = min(int(half), height // 2), min(int(half), width // 2)
            inside = torch.zeros_like(weights)
            inside[:, margin_y : height - margin_y or None, margin_x : width - margin_x or None] = 1
            flat = (weights * inside + 1e-9).flatten(1)
            index = torch.multinomial(flat, 1, generator=generator).squeeze(1)
            centres = torch.stack([index % width, index // width], dim=1).float()
        else:
            uniform = torch.rand(size_b, 2, generator=generator)
            low_x, high_x = min(half, width / 2), max(width - half, width / 2)
            low_y, high_y = min(half, height / 2), max(height - half, height / 2)
            centres = torch.stack([low_x + uniform[:, 0] * (high_x - low_x), low_y + uniform[:, 1] * (high_y - low_y)], 1)
        return centres

    def _sampling_grid(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, crop, crop, 2)`` grid in normalised input coordinates for ``grid_sample``."""
        config = self.config
        size_b, _, height, width = batch.shape
        crop = config.crop
        centres = self._crop_centres(batch, generator)
        angles = (torch.rand(size_b, generator=generator) * 2 - 1) * math.radians(config.rotation_deg)
        flips = torch.where(torch.rand(size_b, 2, generator=generator) < config.flip_probability, -1.0, 1.0)
        # Local pixel offsets of the crop, flipped, rotated, then shifted to the centre.
        offsets = torch.arange(crop, dtype=torch.float32) - (crop - 1) / 2.0
        local_y, local_x = torch.meshgrid(offsets, offsets, indexing="ij")
        local = torch.stack([local_x, local_y], dim=-1).expand(size_b, crop, crop, 2) * flips.view(size_b, 1, 1, 2)
        cos, sin = torch.cos(angles).view(-1, 1, 1), torch.sin(angles).view(-1, 1, 1)
        x = cos * local[..., 0] - sin * local[..., 1]
        y = sin * local[..., 0] + cos * local[..., 1]
        points = torch.stack([x, y], dim=-1)
        if config.elastic_alpha > 0:
            # Smooth random displacement: a coarse grid of uniform offsets, bicubically upsampled.
            coarse = torch.rand(size_b, 2, config.elastic_grid, config.elastic_grid, generator=generator) * 2 - 1
            field = F.interpolate(coarse, size=(crop, crop), mode="bicubic", align_corners=True)
            points = points + config.elastic_alpha * field.permute(0, 2, 3, 1)
        points = points + centres.view(size_b, 1, 1, 2)
        # Pixel centres -> [-1, 1] with align_corners=False.
        scale = torch.tensor([2.0 / width, 2.0 / height])
        return (points + 0.5) * scale - 1.0

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        config = self.config
        if batch.dim() != 4 or batch.shape[1] != 2:
            raise InputError(f"augmentation expects (B, 2, H, W) pairs, got {tuple(batch.shape)}")
        size_b = batch.shape[0]
        grid = self._sampling_grid(batch, generator).to(batch.device, batch.dtype)
        crops = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        low, high = config.gamma
        gammas = torch.exp(
            math.log(low) + torch.rand(size_b, 2, generator=generator) * (math.log(high) - math.log(low))
        )
        crops = crops.clamp(0, 1).pow(gammas.to(crops.device).view(size_b, 2, 1, 1))
        if config.occlusion_probability > 0:
            side = max(1, round(config.occlusion_size * config.crop))
            occlude = torch.rand(size_b, generator=generator) < config.occlusion_probability
            which = torch.randint(0, 2, (size_b,), generator=generator)
            corners = torch.randint(0, config.crop - side + 1, (size_b, 2), generator=generator)
            mask = torch.ones_like(crops)
            for index in torch.nonzero(occlude).flatten().tolist():
                y0, x0 = corners[index].tolist()
                mask[index, which[index], y0 : y0 + side, x0 : x0 + side] = 0
            crops = crops * mask
        return crops
