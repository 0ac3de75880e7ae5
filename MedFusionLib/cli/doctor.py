"""``medfusion doctor``: what this installation has (versions, devices, elastix, weights)."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform

import torch

from MedFusionLib import __version__
from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.precision import cpu_has_native_bf16, measure_cpu_bf16_ratio
from MedFusionLib.models import list_models, model_spec
from MedFusionLib.models.pretrained import weights_status

_PACKAGES = ("torch", "SimpleITK", "numpy", "nibabel", "pydicom", "safetensors", "tqdm", "Pillow", "itk-elastix")


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        "doctor",
        help=COMMANDS["doctor"],
        description="Diagnose this installation. Exit status 1 if a shipped weights file is corrupt.",
    )


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> int:
    print(f"medfusion {__version__} on Python {platform.python_version()} ({platform.platform()})")
    print("packages:")
    for name in _PACKAGES:
        print(f"  {name:<12} {_version(name)}")
    print("compute:")
    print(f"  torch build  {'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only'}")
    print(f"  CPU threads  {torch.get_num_threads()} (CPU capability {torch.backends.cpu.get_cpu_capability()})")
    # Measured, not inferred from CPU flags: AVX512-BF16 without AMX has run bf16 slower than fp32.
    ratio = measure_cpu_bf16_ratio()
    hardware = "AMX/AVX512-BF16 present" if cpu_has_native_bf16() else "no AMX/AVX512-BF16: emulated"
    verdict = "faster" if ratio < 1 else "slower"
    print(f"  bf16 on CPU  {hardware}; measured now on a conv stack: {ratio:.2f}× fp32 time ({verdict}). "
          "fp32 stays the CPU default: bf16 also exceeds the one-grey-level budget on the shipped networks "
          "(`medfusion benchmark --precisions bf16` measures both)")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            print(f"  cuda:{index}       {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
                  f"compute {properties.major}.{properties.minor}")
    else:
        reason = "CPU-only torch build" if torch.version.cuda is None else "no GPU visible to this CUDA build"
        print(f"  CUDA         not available ({reason}); fusion runs on the CPU")
    elastix = importlib.util.find_spec("itk") is not None and _version("itk-elastix") != "not installed"
    backend = "elastix (itk-elastix)" if elastix else "SimpleITK only (pip install 'medfusion[elastix]' for elastix)"
    print(f"registration   {backend}")
    print("weights:")
    corrupt = False
    for name in list_models():
        if model_spec(name).learned:
            status = weights_status(name)
            corrupt |= status == "corrupt"
            print(f"  {name:<12} {status}")
    return 1 if corrupt else 0
