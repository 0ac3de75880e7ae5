"""What MedFusionLib needs in Slicer's Python, what is missing, and how to install it safely.

Slicer ships SimpleITK, numpy, pydicom, Pillow, vtk and requests; extensions that let pip replace
them break Slicer (a common complaint about AI extensions). So MedFusion:

* checks versions with :mod:`importlib.metadata` before importing anything heavy;
* installs only what is missing, never upgrades what Slicer ships: every install runs with a
  constraints file that pins the shipped packages to the versions installed now (on Slicer
  versions with ``slicer.packaging`` its core constraints apply as well);
* installs torch through SlicerPyTorch's ``PyTorchUtils`` when that extension is present, so the
  CUDA build matches the installed driver; plain pip otherwise;
* without itk-elastix, registration uses SimpleITK's own (shipped) registration;
* offline, says which wheels to fetch elsewhere and the command that installs them.

Only the standard library is used here: this runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Packages inside every Slicer that MedFusionLib uses; pinned, never installed or upgraded by us.
SHIPPED_WITH_SLICER = ("SimpleITK", "numpy", "pydicom", "Pillow", "vtk", "requests")


@dataclass(frozen=True)
class Requirement:
    """One package MedFusionLib needs beyond what Slicer ships."""

    distribution: str  # name on the package index
    minimum: str  # lowest accepted version, "" for any
    optional: bool  # the module works without it (with less)
    purpose: str  # shown to the user when asking for consent
    module: str = ""  # top-level import name when it differs from the distribution's

    @property
    def specifier(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


# Keep in step with pyproject.toml's dependencies (Testing/test_slicer_module_files.py checks it).
REQUIREMENTS = (
    Requirement("torch", "2.2", False, "runs the fusion networks (on CUDA when available)"),
    Requirement("nibabel", "5.0", False, "reads and checks NIfTI files"),
    Requirement("safetensors", "0.4", False, "loads the shipped network weights"),
    Requirement("tqdm", "4.60", False, "progress reporting of the medfusion command"),
    Requirement("itk-elastix", "0.20", True, "elastix registration (without it: SimpleITK registration)", "itk"),
)


def _release(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; pre-release or local tags are ignored."""
    numbers = []
    for part in version.split("+", 1)[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(include_optional: bool = True, requirements=REQUIREMENTS) -> list[Requirement]:
    """The requirements that are not installed, or installed in a version below their minimum."""
    missing = []
    for requirement in requirements:
        if requirement.optional and not include_optional:
            continue
        version = installed_version(requirement.distribution)
        if version is None or (requirement.minimum and _release(version) < _release(requirement.minimum)):
            missing.append(requirement)
    return missing


def needs_restart(installed: list[Requirement]) -> bool:
    """True when one of the just ``installed`` packages had already been imported in this Python
    (an old version was upgraded under a running module): only a restart loads the new one."""
    return any((requirement.module or requirement.distribution) in sys.modules for requirement in installed)


def shipped_constraints() -> str:
    """pip constraints (one ``name==version`` a line) pinning the shipped packages installed now."""
    lines = []
    for distribution in SHIPPED_WITH_SLICER:
        version = installed_version(distribution)
        if version is not None:
            lines.append(f"{distribution}=={version}")
    return "\n".join(lines) + "\n"


def pip_arguments(requirements: list[Requirement], constraints_file: str | Path) -> list[str]:
    """Arguments for ``pip install`` (or ``slicer.util.pip_install``) of ``requirements``."""
    return [requirement.specifier for requirement in requirements] + ["-c", str(constraints_file)]


def offline_instructions(requirements: list[Requirement]) -> str:
    """What to do where Slicer cannot reach the package index (no network, a proxy that blocks)."""
    specifiers = " ".join(shlex.quote(requirement.specifier) for requirement in requirements)
    return (
        "MedFusion could not download its Python packages. On a computer with internet access and the "
        "same operating system, run:\n"
        f"    pip download --dest medfusion-wheels {specifiers}\n"
        "copy the medfusion-wheels folder here, and install from it with Slicer's Python "
        "(PythonSlicer, in Slicer's bin folder):\n"
        f"    PythonSlicer -m pip install --no-index --find-links medfusion-wheels {specifiers}\n"
        "For a GPU, get torch's CUDA build from the PyTorch index that matches your driver "
        "(e.g. --index-url https://download.pytorch.org/whl/cu126). Then restart Slicer."
    )


def install(
    requirements: list[Requirement],
    pip_install: Callable[[list[str]], None],
    install_torch: Callable[[str], None] | None = None,
) -> list[str]:
    """Install ``requirements`` (the user has already agreed) and return what was done, for the log.

    ``pip_install(arguments)`` runs pip in Slicer's Python (``slicer.util.pip_install``);
    ``install_torch(specifier)`` installs torch with a driver-matching build (SlicerPyTorch's
    ``PyTorchUtilsLogic().installTorch``), or ``None`` to use pip for torch too. The shipped
    packages are pinned by a constraints file for the duration of the call.
    """
    done = []
    remaining = list(requirements)
    torch = next((requirement for requirement in remaining if requirement.distribution == "torch"), None)
    if torch is not None and install_torch is not None:
        install_torch(torch.specifier)
        done.append(f"installed {torch.specifier} with SlicerPyTorch (build chosen for this computer's driver)")
        remaining.remove(torch)
    if remaining:
        with tempfile.TemporaryDirectory(prefix="MedFusion-constraints-") as folder:
            constraints = Path(folder) / "slicer-shipped.txt"
            constraints.write_text(shipped_constraints())
            pip_install(pip_arguments(remaining, constraints))
        done.append("installed " + ", ".join(requirement.specifier for requirement in remaining) + " with pip")
    return done


def slicer_pip_install(arguments: list[str]) -> None:
    """Run pip in Slicer's Python without another prompt (the caller has asked for consent):
    ``slicer.packaging.pip_install`` where the Slicer version has it (its core constraints apply
    too), ``slicer.util.pip_install`` before."""
    try:
        import slicer.packaging
    except ImportError:
        import slicer.util

        slicer.util.pip_install(arguments)
    else:
        slicer.packaging.pip_install(arguments, interactive=False)


def slicer_torch_installer() -> Callable[[str], None] | None:
    """SlicerPyTorch's torch installer (the build for this computer's CUDA driver) when that
    extension is installed, else ``None`` (torch then comes from pip)."""
    try:
        import PyTorchUtils
    except ImportError:
        return None

    def install_torch(specifier: str) -> None:
        PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=specifier.removeprefix("torch")
        )

    return install_torch
