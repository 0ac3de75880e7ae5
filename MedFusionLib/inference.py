"""Slice-wise fusion of two co-registered stacks with a 2D fusion model, in batches on one device."""

from __future__ import annotations

from typing import Callable

import logging

import numpy as np
import torch
from torch import nn

from .devices import resolve_device
from .errors import FusionCancelled
from .models import create_model

log = logging.getLogger("MedFusionLib")

ProgressCallback = Callable[[int, int], None]  # (slices done, slices total)
CancelCallback = Callable[[], bool]  # returns True to stop

DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 32}


class SliceFuser:
    """Fuses stacks of 2D slices with one fusion model.

    Args:
        model: a registry name (built with ``create_model(name, pretrained)``) or a ready module.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`~MedFusionLib.devices.resolve_device`).
        batch_size: slices per forward pass; a device-dependent default when ``None``.
        pretrained: passed to :func:`~MedFusionLib.models.create_model` for a name.
    """

    def __init__(
        self,
        model: str | nn.Module = "laplacian",
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        pretrained: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        if isinstance(model, str):
            self.model_name = model
            self.model = create_model(model, pretrained=pretrained, device=self.device)
        else:
            self.model_name = type(model).__name__
            self.model = model.to(self.device).eval()
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[self.device.type]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def fuse_stack(
        self,
        a: np.ndarray,
        b: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> np.ndarray:
        """Fuse slice ``i`` of ``a`` with slice ``i`` of ``b`` for every ``i``.

        ``a``, ``b``: ``(N, H, W)`` float32 in [0, 1], same shape. Returns ``(N, H, W)`` float32 in
        [0, 1]. Slices where both inputs are entirely zero are not sent to the model; their output
        is zero. ``progress(done, total)`` is called after each batch; when ``cancel()`` returns
        True the run stops with :class:`FusionCancelled`. On an out-of-memory error the batch is
        halved and retried, down to one slice, then a CUDA run continues on the CPU (logged).
        """
        if a.shape != b.shape or a.ndim != 3:
            raise ValueError(f"expected two (N, H, W) stacks of one shape, got {a.shape} and {b.shape}")
        fused = np.zeros(a.shape, dtype=np.float32)
        occupied = np.flatnonzero(a.any(axis=(1, 2)) | b.any(axis=(1, 2)))
        total = len(occupied)
        if progress:
            progress(0, total)
        start = 0
        with torch.inference_mode():
            while start < total:
                if cancel is not None and cancel():
                    raise FusionCancelled("fusion was cancelled before it finished")
                indices = occupied[start : start + self.batch_size]
                try:
                    fused[indices] = self._fuse_batch(a[indices], b[indices])
                except torch.OutOfMemoryError:
                    if not self._back_off():
                        raise
                    continue  # the same slices again, smaller or on the CPU
                start += len(indices)
                if progress:
                    progress(start, total)
        return fused

    def _fuse_batch(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(n, H, W)`` pair -> ``(n, H, W)`` float32 in [0, 1] on the host."""
        batch_a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None].to(self.device)
        batch_b = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[:, None].to(self.device)
        return self.model(batch_a, batch_b)[:, 0].float().clamp_(0.0, 1.0).cpu().numpy()

    def _back_off(self) -> bool:
        """After an out-of-memory error: halve the batch; at one slice, leave the GPU for the CPU.

        Says what it did on the ``MedFusionLib`` logger (the CLI prints it), so a slower run is
        never a silent surprise. Returns False when there is nothing left to try (one slice, CPU).
        """
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory on %s; retrying with %d slices per batch", self.device, self.batch_size)
        elif self.device.type == "cuda":
            log.warning("out of memory on %s even with one slice per batch; continuing on the CPU", self.device)
            self.device = torch.device("cpu")
            self.model = self.model.to(self.device)
            self.batch_size = DEFAULT_BATCH_SIZE["cpu"]
        else:
            return False
        return True
