"""``medfusion doctor``: what this installation has (versions, runtimes, devices, elastix, weights).

Imports torch only where it is installed: a torch-free CPU installation is diagnosed as it is.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform

from MedFusionLib import __version__
from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import AUTO_MODEL, MODEL_CHOICES
from MedFusionLib.core.devices import resolve_device_name
from MedFusionLib.core.errors import MedFusionError
from MedFusionLib.core.model_files import is_learned, onnx_status, weights_status
from MedFusionLib.runtimes import choose_runtime, installed_runtimes

_PACKAGES = ("SimpleITK", "numpy", "nibabel", "pydicom", "safetensors", "tqdm", "Pillow", "itk-elastix", "highdicom")


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


def _torch_report() -> None:
    import torch

    from MedFusionLib.core.precision import cpu_has_native_bf16, measure_cpu_bf16_ratio

    print(f"  torch build  {'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only'}")
    print(f"  CPU threads  {torch.get_num_threads()} (CPU capability {torch.backends.cpu.get_cpu_capability()})")
    # Measured, not inferred from CPU flags: AVX512-BF16 without AMX has run bf16 slower than fp32.
    ratio = measure_cpu_bf16_ratio()
    hardware = "AMX/AVX512-BF16 present" if cpu_has_native_bf16() else "no AMX/AVX512-BF16: emulated"
    verdict = "faster" if ratio < 1 else "slower"
    print(f"  bf16 (torch) {hardware}; measured now on a conv stack: {ratio:.2f}× fp32 time ({verdict}). "
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


def run(args: argparse.Namespace) -> int:
    print(f"medfusion {__version__} on Python {platform.python_version()} ({platform.platform()})")
    print("packages:")
    for name in _PACKAGES:
        print(f"  {name:<12} {_version(name)}")
    print("runtimes:")
    for runtime, version in installed_runtimes().items():
        print(f"  {runtime:<12} {version or 'not installed'}")
    device = resolve_device_name("auto")
    try:
        picked = choose_runtime("auto", device)
    except MedFusionError as error:
        picked = f"none ({error})"
    print(f"  auto         {picked} (device auto: {device})")
    print("compute:")
    if installed_runtimes()["torch"]:
        _torch_report()
    else:
        print("  torch        not installed: fusion runs on the CPU runtime; CUDA and training need "
              "pip install 'medfusion[torch]'")
    elastix = importlib.util.find_spec("itk") is not None and _version("itk-elastix") != "not installed"
    backend = "elastix (itk-elastix)" if elastix else "SimpleITK only (pip install 'medfusion[elastix]' for elastix)"
    print(f"registration   {backend}")
    print("weights:        safetensors (torch)  onnx (CPU runtimes)")
    corrupt = False
    for name in MODEL_CHOICES:
        if name == AUTO_MODEL:
            continue
        statuses = (weights_status(name) if is_learned(name) else "-", onnx_status(name))
        corrupt |= "corrupt" in statuses
        print(f"  {name:<14}{statuses[0]:<21}{statuses[1]}")
    return 1 if corrupt else 0
