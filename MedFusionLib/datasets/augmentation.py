"""Paired augmentation for training: random crops, rotation, flips, elastic deformation, gamma, occlusion.

Done batch-wise by :class:`PairAugmentation` with an explicit ``torch.Generator``, so that a run is
reproducible from its seed and resumable exactly. The geometric part (rotation, flips, elastic
deformation, crop) is one sampling grid applied identically to both sources; gamma and occlusion
are drawn per source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.settings import reject_unknown_settings
from MedFusionLib.datasets.pairs import ANATOMY_THRESHOLD


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
    def from_dict(cls, values: dict) -> AugmentationConfig:
        reject_unknown_settings(cls, values, "augmentation")
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
            centres = torch.stack([low_x + uniform[:, 0] * (high_x - low_x), low_y + uniform[:, 1] * (high_y - low_y)],
                                  1)
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
