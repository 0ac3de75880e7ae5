"""Numeric precision: which autocast dtype a fusion (or training) run uses, and why.

Reduced precision is only worth it where the hardware computes it natively, and only acceptable
while the fused image stays within :data:`ACCURACY_BUDGET` of the fp32 result.

On the shipped networks fp16 stays within the budget and bf16 does not (``medfusion benchmark``
measures both on every run; figures in README "Performance"). So ``auto`` is fp16 on CUDA and
fp32 on the CPU. bf16 stays an explicit option, worth it on CPUs with native bf16 (AMX,
AVX512-BF16); elsewhere it is emulated, much slower than fp32, and a warning says so.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from MedFusionLib.core.choices import PRECISION_CHOICES
from MedFusionLib.core.errors import InputError

log = logging.getLogger("MedFusionLib")

# Largest tolerated |fused(reduced precision) - fused(fp32)| on the [0, 1] output scale: one
# grey level of an 8-bit display, i.e. a difference no viewer can show.
ACCURACY_BUDGET = 1.0 / 255.0
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix arithmetic in hardware (AMX or AVX512-BF16)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(check is not None and check() for check in checks):
        return True
    try:  # older torch without the probes: the kernel's CPU flags
        with open("/proc/cpuinfo") as stream:
            flags = next((line for line in stream if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def measure_cpu_bf16_ratio(repeats: int = 3) -> float:
    """Time of a bf16-autocast pass over fp32 time on this CPU (< 1: bf16 is faster), measured now.

    The probe is a stack of 3×3 convolutions like the fusion networks' on one 192×192 slice, the
    faster of ``repeats`` passes each after a warm-up. A CPU flag is not enough: AVX512-BF16
    without AMX has run bf16 slower than fp32, so advice about bf16 comes from this measurement.
    """
    import time

    layers = [torch.nn.Conv2d(1 if index == 0 else 32, 32, 3, padding=1) for index in range(5)]
    network = torch.nn.Sequential(*[module for layer in layers for module in (layer, torch.nn.ReLU())]).eval()
    sample = torch.rand(1, 1, 192, 192)

    def fastest(dtype: torch.dtype | None) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            network(sample)  # warm-up: oneDNN builds its kernels on the first call
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                network(sample)
                times.append(time.perf_counter() - started)
        return min(times)

    return fastest(torch.bfloat16) / fastest(None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``auto``: fp16 on CUDA (within the budget), fp32 on the CPU (bf16 is not). ``fp16`` needs
    CUDA; ``bf16`` on a CPU without native support works but is logged as slow. Training
    (:mod:`MedFusionLib.training.trainer`) uses the same rule.
    """
    if precision not in PRECISION_CHOICES:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision fp16 needs a CUDA device; on the CPU use fp32 (default) or bf16")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 (no AMX/AVX512-BF16): bf16 is emulated and much slower than fp32")
    return _DTYPES[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a value of :func:`autocast_dtype`."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
