"""Choosing the compute device: ``auto``, ``cpu`` or ``cuda`` (optionally ``cuda:N``).

torch is imported only where a device needs it: :func:`resolve_device_name` settles ``cpu``, and
``auto`` on a computer without an NVIDIA driver, without it, so a CPU run on a deployment runtime
never pays torch's import.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from MedFusionLib.core.choices import DEVICE_CHOICES
from MedFusionLib.core.errors import DeviceUnavailableError

if TYPE_CHECKING:
    import torch


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is installed here (the one thing CUDA cannot run without); a cheap
    look at the driver's files, no torch."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version")
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None
    return False  # macOS: no CUDA


def resolve_device_name(device: str = "auto") -> str:
    """``cpu`` or ``cuda:N`` for a user's choice, importing torch only when CUDA is possible.

    ``auto`` is ``cpu`` without torch or without an NVIDIA driver, else as :func:`resolve_device`.
    """
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto" and (importlib.util.find_spec("torch") is None or not nvidia_driver_present()):
        return "cpu"
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise DeviceUnavailableError(
            f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)"
        )
    if importlib.util.find_spec("torch") is None:
        raise DeviceUnavailableError(
            f"device {device!r} needs torch with CUDA, which is not installed: install a CUDA build of torch and "
            "then `pip install medfusion[torch]` (README, 'CPU or CUDA'), or use --device cpu"
        )
    resolved = resolve_device(name)
    return "cpu" if resolved.type == "cpu" else f"cuda:{resolved.index or 0}"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for a user's choice.

    ``auto`` is the first CUDA GPU when torch can use one, else the CPU. Asking for CUDA where it
    is not usable raises :class:`DeviceUnavailableError` that says why (a CPU-only torch build, or
    no GPU/driver visible) and what to do, instead of silently running on the CPU.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if torch.version.cuda is None:
            raise DeviceUnavailableError(
                f"CUDA was requested but the installed torch {torch.__version__} is a CPU-only build. "
                "Install a CUDA build of torch (see README, 'CPU or CUDA'), or use --device cpu / auto."
            )
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"CUDA was requested but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: "
                "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu / auto."
            )
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"CUDA device {index} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    raise DeviceUnavailableError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (``None``: left as it is) and restored after.

    The count is process-wide, so library code sets it only for the work it does.
    """
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def describe_device(device: torch.device) -> str:
    """A short human description, e.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu (2 threads)"``."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
