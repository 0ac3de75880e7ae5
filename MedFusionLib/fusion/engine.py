"""Slice-wise fusion of two co-registered stacks with a 2D fusion model: the product's fast path.

:class:`SliceFuser` is handed a network (it never builds one from a name) and computes, for each
slice, the model's output inside a box (the slice's foreground, chosen by the pipeline) and nothing
else. What makes it fast, each step measured by ``medfusion benchmark`` against a naive
whole-slice loop (README, "Performance"):

- **Only the box is computed**, from an input window that adds the model's receptive radius of
  real image around it (the :class:`~MedFusionLib.models.base.FusionNet` contract:
  ``receptive_radius``, ``size_multiple``, ``window_step``); the result inside the box therefore
  equals a whole-slice pass up to float rounding. Models without a bounded radius get whole slices.
- **Inference form** (:func:`~MedFusionLib.models.optimize.prepare_for_inference`): BatchNorms
  folded into convolutions, channels-last layout, ``torch.inference_mode``.
- **Batches** of consecutive slices share one window (the union of their boxes). The CPU default
  is one slice per pass, since a single slice's features stay in cache, with as many slices
  side by side as torch has threads (at most 8), sharing the cores; CUDA batches 32 slices,
  copied from pinned host memory without blocking.
- **Precision** from :mod:`MedFusionLib.core.precision` (fp16 autocast on CUDA, fp32 on the CPU by
  default); optional ``torch.compile`` (off by default: slow to compile, and no faster on small CPUs).
- **Threads**: ``threads`` applies to torch's intra-op pool while a stack is fused and the previous
  count is restored afterwards, so a caller's process keeps its own setting.
- On out-of-memory the batch is halved, and at one slice a CUDA run moves to the CPU (logged).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from MedFusionLib.core.devices import resolve_device, torch_threads
from MedFusionLib.core.errors import FusionCancelled, InputError
from MedFusionLib.core.precision import autocast_dtype, precision_name
from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.optimize import has_convolutions, prepare_for_inference

log = logging.getLogger("MedFusionLib")

ProgressCallback = Callable[[int, int], None]  # (slices done, slices total)
CancelCallback = Callable[[], bool]  # returns True to stop
# A slice's box, (row_start, row_stop, column_start, column_stop), or None: not fused.
Box = tuple[int, int, int, int]

DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 32}
# At most this many CPU slices in flight at once: each holds its features (a fraction of a GB for
# a 512×512 EMFusion slice), so memory stays bounded on many-core machines; cores beyond it are
# shared out as threads per slice.
MAX_SLICES_SIDE_BY_SIDE = 8


class SliceFuser:
    """Fuses stacks of 2D slices with one fusion model.

    Args:
        model: the network (e.g. from :func:`~MedFusionLib.models.create_model`), in the
            inference form of :func:`~MedFusionLib.models.optimize.prepare_for_inference`: copied
            before its BatchNorms are folded; otherwise moved to the device and layout in place,
            as ``Module.to`` does.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`~MedFusionLib.core.devices.resolve_device`).
        batch_size: slices per forward pass; :data:`DEFAULT_BATCH_SIZE` of the device when ``None``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:func:`~MedFusionLib.core.precision.autocast_dtype`).
        channels_last: ``None`` decides by the model (networks with convolutions: yes).
        compile: wrap the model in ``torch.compile`` (first call compiles; dynamic shapes).
        threads: torch's intra-op thread count while :meth:`fuse_stack` runs (restored after);
            ``None`` keeps the process's setting.
    """

    def __init__(
        self,
        model: FusionNet,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        if not isinstance(model, FusionNet):
            raise TypeError(
                f"SliceFuser needs a MedFusionLib.models.FusionNet, got {type(model).__name__}; build one with "
                "MedFusionLib.models.create_model(name), or subclass FusionNet and declare its receptive_radius"
            )
        self.device = resolve_device(device)
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.autocast_dtype = autocast_dtype(precision, self.device)
        self.channels_last = has_convolutions(model) if channels_last is None else channels_last
        # The crop geometry, read before torch.compile may wrap the module.
        self.receptive_radius, self.size_multiple, self.window_step = (
            model.receptive_radius, model.size_multiple, model.window_step)
        self.model = prepare_for_inference(model, self.device, self.channels_last)
        self.compiled = compile
        if compile:
            self.model = torch.compile(self.model, dynamic=True)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[self.device.type]
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what this fuser computes in."""
        return precision_name(self.autocast_dtype)

    def fuse_stack(
        self,
        a: np.ndarray,
        b: np.ndarray,
        boxes: Sequence[Box | None] | None = None,
        out: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> np.ndarray:
        """Fuse slice ``i`` of ``a`` with slice ``i`` of ``b`` inside ``boxes[i]``.

        ``a``, ``b``: ``(N, H, W)`` float32 in [0, 1], same shape. ``boxes``: one
        ``(row_start, row_stop, column_start, column_stop)`` or ``None`` (skip) per slice; by
        default the whole slice for every slice that is not entirely zero. The model's output
        (float32 in [0, 1]) is written into ``out[i]`` inside each box; the rest of ``out`` is
        left as it was (``out`` defaults to zeros). Returns ``out``.

        ``progress(done, total)`` counts fused slices after each batch; when ``cancel()``
        returns True the run stops with :class:`FusionCancelled`. On an out-of-memory error the
        batch is halved and retried, down to one slice, then a CUDA run continues on the CPU.
        """
        if a.shape != b.shape or a.ndim != 3:
            raise ValueError(f"expected two (N, H, W) stacks of one shape, got {a.shape} and {b.shape}")
        height, width = a.shape[1:]
        if boxes is None:
            occupied = a.any(axis=(1, 2)) | b.any(axis=(1, 2))
            boxes = [(0, height, 0, width) if occupied[i] else None for i in range(len(a))]
        if len(boxes) != len(a):
            raise ValueError(f"expected {len(a)} boxes, got {len(boxes)}")
        if out is None:
            out = np.zeros(a.shape, dtype=np.float32)
        todo = [i for i, box in enumerate(boxes) if box is not None]
        if progress:
            progress(0, len(todo))
        with torch_threads(self.threads):
            if self.parallel_slices > 1:
                self._fuse_side_by_side(a, b, boxes, todo, out, progress, cancel)
            else:
                self._fuse_in_batches(a, b, boxes, todo, out, progress, cancel)
        return out

    def _fuse_in_batches(self, a, b, boxes, todo, out, progress, cancel) -> None:
        """:meth:`fuse_stack`'s batched path: consecutive slices share one window per pass."""
        done, total = 0, len(todo)
        with torch.inference_mode():
            while done < total:
                if cancel is not None and cancel():
                    raise FusionCancelled("fusion was cancelled before it finished")
                indices = todo[done : done + self.batch_size]
                box = _union([boxes[i] for i in indices])
                try:
                    fused = self._fuse_batch(a, b, indices, box)
                except torch.OutOfMemoryError:
                    if not self._back_off():
                        raise
                    continue  # the same slices again, fewer at a time or on the CPU
                _store(out, fused, indices, boxes, box)
                done += len(indices)
                if progress:
                    progress(done, total)

    @property
    def parallel_slices(self) -> int:
        """How many slices run side by side: on the CPU with one slice per pass, one per torch
        thread (at most :data:`MAX_SLICES_SIDE_BY_SIDE`), each with its share of the threads
        (measured faster than splitting every small convolution over the cores, which
        synchronises them once per layer); otherwise 1."""
        if self.device.type != "cpu" or self.batch_size != 1 or self.compiled:
            return 1
        return min(self.threads or torch.get_num_threads(), MAX_SLICES_SIDE_BY_SIDE)

    def _fuse_side_by_side(self, a, b, boxes, todo, out, progress, cancel) -> None:
        """:meth:`fuse_stack`'s CPU path: slices in a thread pool, torch single-threaded meanwhile."""
        workers = self.parallel_slices
        pending: deque[Future] = deque()
        done = 0

        def collect_oldest() -> None:
            nonlocal done
            pending.popleft().result()  # re-raises a worker's error here
            done += 1
            if progress:
                progress(done, len(todo))

        pool = ThreadPoolExecutor(workers, thread_name_prefix="medfusion-slice")
        with torch_threads(max(1, torch.get_num_threads() // workers)):  # each slice its share
            try:
                for index in todo:
                    if cancel is not None and cancel():
                        raise FusionCancelled("fusion was cancelled before it finished")
                    pending.append(pool.submit(self._fuse_one_slice, a, b, boxes, index, out))
                    if len(pending) >= 2 * workers:  # bounded queue: progress and cancel stay prompt
                        collect_oldest()
                while pending:
                    collect_oldest()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _fuse_one_slice(self, a: np.ndarray, b: np.ndarray, boxes: Sequence[Box | None], index: int,
                        out: np.ndarray) -> None:
        with torch.inference_mode():  # thread-local, so entered in the worker
            _store(out, self._fuse_batch(a, b, [index], boxes[index]), [index], boxes, boxes[index])

    def input_window(self, box: Box, height: int, width: int) -> Box:
        """The input region that determines the output inside ``box`` of an ``H × W`` slice.

        ``box`` grown by the receptive radius (clipped to the slice), its start moved down to a
        multiple of ``size_multiple`` so strided layers sample the same grid as on the whole
        slice. The whole slice for models without a declared radius.
        """
        radius = self.receptive_radius
        if radius is None:
            return 0, height, 0, width
        step = math.lcm(self.size_multiple, self.window_step)
        row_start = max(box[0] - radius, 0) // step * step
        column_start = max(box[2] - radius, 0) // step * step
        row_stop = min(-(-(box[1] + radius) // step) * step, height)
        column_stop = min(-(-(box[3] + radius) // step) * step, width)
        return row_start, row_stop, column_start, column_stop

    def _fuse_batch(self, a: np.ndarray, b: np.ndarray, indices: list[int], box: Box) -> np.ndarray:
        """The model's output inside ``box`` for slices ``indices``: ``(n, box rows, box columns)``."""
        window = self.input_window(box, *a.shape[1:])
        rows, columns = slice(window[0], window[1]), slice(window[2], window[3])
        batch_a = self._to_device(a[indices, rows, columns])
        batch_b = self._to_device(b[indices, rows, columns])
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            fused = self.model(batch_a, batch_b)
        inner = fused[:, 0, box[0] - window[0] : box[1] - window[0], box[2] - window[2] : box[3] - window[2]]
        return inner.float().clamp_(0.0, 1.0).cpu().numpy()

    def _to_device(self, stack: np.ndarray) -> torch.Tensor:
        """``(n, h, w)`` float32 host array -> ``(n, 1, h, w)`` tensor on the device, in the model's layout."""
        tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
        if self.device.type == "cuda":
            # Page-locked memory lets the copy run asynchronously with the GPU's queue.
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

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
            if self.autocast_dtype is torch.float16:  # fp16 is a CUDA-only choice
                self.autocast_dtype = None
        else:
            return False
        return True


def _store(out: np.ndarray, fused: np.ndarray, indices: list[int], boxes: Sequence[Box | None], union: Box) -> None:
    """Write ``fused`` (the model's output over ``union`` for slices ``indices``) into ``out``.

    Each slice keeps only its own box, so the result does not depend on how slices were batched.
    """
    for fused_slice, index in zip(fused, indices):
        top, bottom, left, right = boxes[index]
        out[index, top:bottom, left:right] = fused_slice[top - union[0] : bottom - union[0],
                                                         left - union[2] : right - union[2]]


def _union(boxes: list[Box]) -> Box:
    """The smallest box containing every box of a batch."""
    return (
        min(box[0] for box in boxes),
        max(box[1] for box in boxes),
        min(box[2] for box in boxes),
        max(box[3] for box in boxes),
    )
