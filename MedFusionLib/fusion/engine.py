"""Slice-wise fusion of two co-registered stacks with a 2D fusion network: the product's fast path.

:class:`SliceFuser` is handed a runnable network (a
:class:`~MedFusionLib.runtimes.network.RunnableNetwork` from
:func:`~MedFusionLib.runtimes.load_network`, on torch, OpenVINO or ONNX Runtime; or a torch
:class:`~MedFusionLib.models.base.FusionNet`, run by torch) and computes, for each slice, the
network's output inside a box (the slice's foreground, chosen by the pipeline) and nothing else.
The engine itself needs only numpy: boxes, windows, batches and slices side by side are the same
whatever runs the network. What makes it fast, each step measured by ``medfusion benchmark``
against a naive whole-slice loop (README, "Performance"):

- **Only the box is computed**, from an input window that adds the network's receptive radius of
  real image around it (the :class:`~MedFusionLib.models.base.FusionNet` contract:
  ``receptive_radius``, ``size_multiple``, ``window_step``); the result inside the box therefore
  equals a whole-slice pass up to float rounding. Networks without a bounded radius get whole slices.
- **Batches** of consecutive slices share one window (the union of their boxes). The CPU default
  is one slice per pass, since a single slice's features stay in cache, with as many slices side
  by side in threads as the runtime asks for (about one per core, each in its own window),
  sharing the cores; CUDA batches 32.
- The runtime's own speed-ups: :mod:`~MedFusionLib.runtimes.torch_network` (inference form,
  autocast, channels-last), OpenVINO's and ONNX Runtime's compiled graphs.
- On out-of-memory the batch is halved, and at one slice a CUDA run moves to the CPU (logged).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from MedFusionLib.core.errors import FusionCancelled, InputError
from MedFusionLib.runtimes.network import RunnableNetwork

log = logging.getLogger("MedFusionLib")

ProgressCallback = Callable[[int, int], None]  # (slices done, slices total)
CancelCallback = Callable[[], bool]  # returns True to stop
# A slice's box, (row_start, row_stop, column_start, column_stop), or None: not fused.
Box = tuple[int, int, int, int]

class SliceFuser:
    """Fuses stacks of 2D slices with one fusion network.

    Args:
        network: a :class:`~MedFusionLib.runtimes.network.RunnableNetwork`
            (:func:`~MedFusionLib.runtimes.load_network`), or a torch
            :class:`~MedFusionLib.models.base.FusionNet` (e.g. from
            :func:`~MedFusionLib.models.create_model`), which is then run by
            :class:`~MedFusionLib.runtimes.torch_network.TorchNetwork` with ``device``,
            ``precision``, ``channels_last`` and ``compile`` (torch's settings; a runnable network
            was given its own when it was loaded).
        batch_size: slices per pass; the network's ``default_batch_size`` when ``None`` (one on the
            CPU, 32 on CUDA).
        threads: the runtime's thread count while :meth:`fuse_stack` runs, for torch (restored
            after); ``None`` keeps the process's setting.
    """

    def __init__(
        self,
        network,
        device: str = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        if not isinstance(network, RunnableNetwork):
            from MedFusionLib.runtimes.torch_network import TorchNetwork  # a torch module: torch is here already

            network = TorchNetwork(network, device, precision, channels_last, compile)
        self.network = network
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.batch_size = batch_size or network.default_batch_size
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N``: where the network runs (a CUDA run may move to the CPU)."""
        return self.network.device

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what this fuser computes in."""
        return self.network.precision

    @property
    def runtime(self) -> str:
        """``torch``, ``openvino`` or ``onnxruntime``: what runs the network."""
        return self.network.runtime

    @property
    def parallel_slices(self) -> int:
        """How many slices run side by side (1: one pass at a time), as the runtime decides."""
        with self.network.running(self.threads):
            return self.network.parallel_slices(self.batch_size)

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
        default the whole slice for every slice that is not entirely zero. The network's output
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
        with self.network.running(self.threads):
            workers = self.network.parallel_slices(self.batch_size)  # under the run's thread count
            if workers > 1:
                self._fuse_side_by_side(a, b, boxes, todo, out, progress, cancel, workers)
            else:
                self._fuse_in_batches(a, b, boxes, todo, out, progress, cancel)
        return out

    def _fuse_in_batches(self, a, b, boxes, todo, out, progress, cancel) -> None:
        """:meth:`fuse_stack`'s batched path: consecutive slices share one window per pass."""
        done, total = 0, len(todo)
        while done < total:
            if cancel is not None and cancel():
                raise FusionCancelled("fusion was cancelled before it finished")
            indices = todo[done : done + self.batch_size]
            box = _union([boxes[i] for i in indices])
            try:
                fused = self._fuse_batch(a, b, indices, box)
            except self.network.out_of_memory_errors:
                if not self._back_off():
                    raise
                continue  # the same slices again, fewer at a time or on the CPU
            _store(out, fused, indices, boxes, box)
            done += len(indices)
            if progress:
                progress(done, total)

    def _fuse_side_by_side(self, a, b, boxes, todo, out, progress, cancel, workers: int) -> None:
        """:meth:`fuse_stack`'s CPU path: single slices in a thread pool, the cores shared out."""
        pending: deque[Future] = deque()
        done = 0

        def collect_oldest() -> None:
            nonlocal done
            pending.popleft().result()  # re-raises a worker's error here
            done += 1
            if progress:
                progress(done, len(todo))

        pool = ThreadPoolExecutor(workers, thread_name_prefix="medfusion-slice")
        with self.network.side_by_side(workers):
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
        _store(out, self._fuse_batch(a, b, [index], boxes[index]), [index], boxes, boxes[index])

    def input_window(self, box: Box, height: int, width: int) -> Box:
        """The input region that determines the output inside ``box`` of an ``H × W`` slice.

        ``box`` grown by the receptive radius (clipped to the slice), its start moved down to a
        multiple of ``size_multiple`` so strided layers sample the same grid as on the whole
        slice. The whole slice for networks without a declared radius.
        """
        network = self.network
        radius = network.receptive_radius
        if radius is None:
            return 0, height, 0, width
        step = math.lcm(network.size_multiple, network.window_step)
        row_start = max(box[0] - radius, 0) // step * step
        column_start = max(box[2] - radius, 0) // step * step
        row_stop = min(-(-(box[1] + radius) // step) * step, height)
        column_stop = min(-(-(box[3] + radius) // step) * step, width)
        return row_start, row_stop, column_start, column_stop

    def _fuse_batch(self, a: np.ndarray, b: np.ndarray, indices: list[int], box: Box) -> np.ndarray:
        """The network's output inside ``box`` for slices ``indices``: ``(n, box rows, box columns)``."""
        window = self.input_window(box, *a.shape[1:])
        rows, columns = slice(window[0], window[1]), slice(window[2], window[3])
        fused = self.network.fuse(a[indices, rows, columns], b[indices, rows, columns])
        return fused[:, box[0] - window[0] : box[1] - window[0], box[2] - window[2] : box[3] - window[2]]

    def _back_off(self) -> bool:
        """After an out-of-memory error: halve the batch; at one slice, leave the GPU for the CPU.

        Says what it did on the ``MedFusionLib`` logger (the CLI prints it), so a slower run is
        never a silent surprise. Returns False when there is nothing left to try (one slice, CPU).
        """
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory on %s; retrying with %d slices per batch", self.device, self.batch_size)
            return True
        device = self.device
        if self.network.leave_gpu():
            log.warning("out of memory on %s even with one slice per batch; continuing on the CPU", device)
            self.batch_size = self.network.default_batch_size
            return True
        return False


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
