"""Memory budget: refuse work that cannot fit *before* allocating it, with a message that says so."""

from __future__ import annotations

import os

from MedFusionLib.core.errors import InputError

# Fraction of the currently available memory a single run may plan to use; the rest is left to
# the OS, the viewer (Slicer) and estimation error.
USABLE_FRACTION = 0.8


def available_memory_bytes() -> int | None:
    """Memory the OS can give this process now (Linux ``MemAvailable``), ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(required_bytes: int, what: str) -> None:
    """Raise :class:`InputError` when ``required_bytes`` exceeds the usable share of free memory.

    ``what`` describes the work (e.g. "reading big.nii.gz (2048×2048×1200 float32)").
    """
    available = available_memory_bytes()
    if available is None or required_bytes <= USABLE_FRACTION * available:
        return
    raise InputError(
        f"{what} needs about {required_bytes / 2**30:.1f} GiB of memory, but only "
        f"{available / 2**30:.1f} GiB is available. Crop or downsample the image first "
        "(e.g. in 3D Slicer's Crop Volume module), or run on a machine with more memory."
    )
