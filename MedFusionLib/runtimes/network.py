"""What the slice engine runs: a fusion network loaded on one runtime, behind one small interface.

:class:`RunnableNetwork` takes and returns numpy arrays, so the engine (boxes, windows, batches,
slices side by side) needs no torch. Each runtime subclasses it: torch
(:mod:`~MedFusionLib.runtimes.torch_network`, for CUDA and training), OpenVINO and ONNX Runtime
(the CPU runtimes, from the exported graphs). Standard library and numpy only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from MedFusionLib.core.errors import InputError


class RunnableNetwork:
    """A fusion network ready to run on one runtime and device.

    Attributes (set by each runtime):

    * ``runtime``: ``torch``, ``openvino`` or ``onnxruntime``; ``model_name``: what it runs.
    * ``device``: ``cpu`` or ``cuda:N``; ``precision``: ``fp32``, ``bf16`` or ``fp16``.
    * ``receptive_radius``, ``size_multiple``, ``window_step``: the crop geometry of the
      :class:`~MedFusionLib.models.base.FusionNet` contract, which the engine's windows rely on.
    * ``min_size``: the smallest slice side the network is exact on (an exported graph of a
      network whose structure depends on the size); smaller slices are refused.
    * ``streams``: how many single slices may run at once, each in its own thread (1: one pass at
      a time).
    * ``out_of_memory_errors``: the exceptions that mean "too many slices at once".
    """

    runtime = ""
    out_of_memory_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, model_name: str, device: str, precision: str, receptive_radius: int | None,
                 size_multiple: int, window_step: int, min_size: int = 1, streams: int = 1) -> None:
        self.model_name = model_name
        self.device = device
        self.precision = precision
        self.receptive_radius = receptive_radius
        self.size_multiple = size_multiple
        self.window_step = window_step
        self.min_size = min_size
        self.streams = streams

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Fuse ``a`` with ``b``: ``(n, h, w)`` float32 in [0, 1] -> ``(n, h, w)`` float32 in [0, 1].

        Slices whose sides are not multiples of ``size_multiple`` are padded here first, bottom
        and right, by reflection (by replication where reflection cannot reach), as
        :func:`~MedFusionLib.models.blocks.pad_to_multiple` pads inside the torch networks, and
        the output is cropped back.
        """
        height, width = a.shape[1:]
        if min(height, width) < self.min_size:
            raise InputError(
                f"{self.model_name} on {self.runtime} needs slices of at least {self.min_size} pixels a side, "
                f"got {height}×{width}; use --runtime torch for smaller images"
            )
        pad_rows, pad_columns = -height % self.size_multiple, -width % self.size_multiple
        stacks = [np.ascontiguousarray(stack, dtype=np.float32)[:, None] for stack in (a, b)]
        if pad_rows or pad_columns:
            mode = "reflect" if pad_rows < height and pad_columns < width else "edge"
            widths = ((0, 0), (0, 0), (0, pad_rows), (0, pad_columns))
            stacks = [np.pad(stack, widths, mode=mode) for stack in stacks]
        fused = self._run(*stacks)[:, 0, :height, :width]
        return np.clip(fused, 0.0, 1.0).astype(np.float32, copy=False)

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The runtime's forward pass: ``(n, 1, H, W)`` float32 pair -> ``(n, 1, H, W)`` float32."""
        raise NotImplementedError

    @property
    def default_batch_size(self) -> int:
        """Slices per pass when the caller gives none: one on the CPU (a slice's features stay in
        cache), 32 on a GPU."""
        return 1 if self.device == "cpu" else 32

    def parallel_slices(self, batch_size: int) -> int:
        """How many single slices the engine should run side by side (1: one pass at a time)."""
        return self.streams if batch_size == 1 else 1

    @contextlib.contextmanager
    def running(self, threads: int | None) -> Iterator[None]:
        """Around a whole stack: e.g. torch's thread count set to ``threads`` and restored after."""
        yield

    @contextlib.contextmanager
    def side_by_side(self, workers: int) -> Iterator[None]:
        """Around a run of ``workers`` slices in parallel threads: each gets its share of the cores."""
        yield

    def leave_gpu(self) -> bool:
        """After running out of memory with one slice: continue on the CPU if this ran on a GPU
        (returns True), else False. Only torch runs on a GPU."""
        return False

    def describe(self) -> str:
        """One line for logs and results, e.g. ``"openvino 2026.4 on cpu, fp32"``."""
        return f"{self.runtime} on {self.device}, {self.precision}"
