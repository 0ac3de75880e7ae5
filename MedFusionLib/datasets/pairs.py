"""The in-memory form of training pairs that every data source produces.

A set of pairs is an ``(N, 2, H, W)`` uint8 tensor: channel 0 is source A, channel 1 source B, in
8-bit levels as the metrics score them (:mod:`~MedFusionLib.datasets.harvard`,
:mod:`~MedFusionLib.datasets.volume_slices`). :class:`PairDataset` serves them as floats.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from MedFusionLib.core.errors import InputError

# On the [0, 1] intensity scale of normalised images: a pixel above it is anatomy, not air (slice
# selection and foreground crops).
ANATOMY_THRESHOLD = 0.1


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
