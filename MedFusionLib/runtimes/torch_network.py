"""A :class:`~MedFusionLib.models.base.FusionNet` run by torch: CUDA, training, and the CPU fallback.

What makes it fast, each part measured by ``medfusion benchmark`` (README, "Performance"):

- **Inference form** (:func:`~MedFusionLib.models.optimize.prepare_for_inference`): BatchNorms
  folded into convolutions, channels-last layout, ``torch.inference_mode``.
- **Precision** from :mod:`MedFusionLib.core.precision` (fp16 autocast on CUDA, fp32 on the CPU by
  default); optional ``torch.compile`` (off by default: slow to compile, and no faster on small CPUs).
- **Slices side by side** on the CPU with one slice per pass: as many as torch has threads (at
  most :data:`MAX_SLICES_SIDE_BY_SIDE`), each with its share of the threads (measured faster than
  splitting every small convolution over the cores, which synchronises them once per layer).
- CUDA inputs are copied from pinned host memory without blocking; after running out of memory
  with one slice a CUDA run moves to the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch

from MedFusionLib.core.devices import resolve_device, torch_threads
from MedFusionLib.core.precision import autocast_dtype, precision_name
from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.optimize import has_convolutions, prepare_for_inference
from MedFusionLib.runtimes.network import RunnableNetwork

# At most this many CPU slices in flight at once: each holds its features (a fraction of a GB for
# a 512×512 EMFusion slice), so memory stays bounded on many-core machines; cores beyond it are
# shared out as threads per slice.
MAX_SLICES_SIDE_BY_SIDE = 8


class TorchNetwork(RunnableNetwork):
    """``model`` on ``device`` in its inference form.

    Args:
        model: the network (e.g. from :func:`~MedFusionLib.models.create_model`): copied before
            its BatchNorms are folded; otherwise moved to the device and layout in place, as
            ``Module.to`` does.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`~MedFusionLib.core.devices.resolve_device`).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:func:`~MedFusionLib.core.precision.autocast_dtype`).
        channels_last: ``None`` decides by the model (networks with convolutions: yes).
        compile: wrap the model in ``torch.compile`` (first call compiles; dynamic shapes).
        model_name: the name to report (default: the class name).
    """

    runtime = "torch"
    out_of_memory_errors = (torch.OutOfMemoryError,)

    def __init__(self, model: FusionNet, device: str | torch.device = "auto", precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False, model_name: str | None = None) -> None:
        if not isinstance(model, FusionNet):
            raise TypeError(
                f"the slice engine needs a MedFusionLib.models.FusionNet, got {type(model).__name__}; build one with "
                "MedFusionLib.models.create_model(name), or subclass FusionNet and declare its receptive_radius"
            )
        self.torch_device = resolve_device(device)
        self.autocast_dtype = autocast_dtype(precision, self.torch_device)
        self.channels_last = has_convolutions(model) if channels_last is None else channels_last
        # The crop geometry, read before torch.compile may wrap the module.
        super().__init__(model_name or type(model).__name__, str(self.torch_device),
                         precision_name(self.autocast_dtype), model.receptive_radius, model.size_multiple,
                         model.window_step)
        self.model = prepare_for_inference(model, self.torch_device, self.channels_last)
        self.compiled = compile
        if compile:
            self.model = torch.compile(self.model, dynamic=True)

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # The network pads to its size multiple itself (blocks.pad_to_multiple).
        with torch.inference_mode():  # thread-local, so entered on the calling thread
            batch_a, batch_b = self._to_device(a), self._to_device(b)
            autocast = (torch.autocast(self.torch_device.type, dtype=self.autocast_dtype)
                        if self.autocast_dtype is not None else nullcontext())
            with autocast:
                fused = self.model(batch_a, batch_b)
            return fused[:, 0].float().clamp_(0.0, 1.0).cpu().numpy()

    def _to_device(self, stack: np.ndarray) -> torch.Tensor:
        """``(n, h, w)`` float32 host array -> ``(n, 1, h, w)`` tensor on the device, in the model's layout."""
        tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
        if self.torch_device.type == "cuda":
            # Page-locked memory lets the copy run asynchronously with the GPU's queue.
            tensor = tensor.pin_memory().to(self.torch_device, non_blocking=True)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def parallel_slices(self, batch_size: int) -> int:
        if self.torch_device.type != "cpu" or batch_size != 1 or self.compiled:
            return 1
        return min(torch.get_num_threads(), MAX_SLICES_SIDE_BY_SIDE)

    @contextlib.contextmanager
    def running(self, threads: int | None) -> Iterator[None]:
        with torch_threads(threads):
            yield

    @contextlib.contextmanager
    def side_by_side(self, workers: int) -> Iterator[None]:
        with torch_threads(max(1, torch.get_num_threads() // workers)):  # each slice its share
            yield

    def leave_gpu(self) -> bool:
        if self.torch_device.type != "cuda":
            return False
        torch.cuda.empty_cache()
        self.torch_device = torch.device("cpu")
        self.device = "cpu"
        self.model = self.model.to(self.torch_device)
        if self.autocast_dtype is torch.float16:  # fp16 is a CUDA-only choice
            self.autocast_dtype = None
            self.precision = "fp32"
        return True

    def describe(self) -> str:
        return f"torch {torch.__version__.split('+')[0]} on {self.device}, {self.precision}"
