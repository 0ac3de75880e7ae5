"""What MedFusionLib needs in Slicer's Python, what is missing, and how to install it safely.

Slicer ships SimpleITK, numpy, pydicom, Pillow, vtk and requests; extensions that let pip replace
them break Slicer (a common complaint about AI extensions). So MedFusion:

* checks versions with :mod:`importlib.metadata` before importing anything heavy;
* installs only what is missing, never upgrades what Slicer ships: every install runs with a
  constraints file that pins the shipped packages to the versions installed now;
* installs what runs the networks on *this* computer: on one without an NVIDIA driver the CPU
  runtime (OpenVINO) and no torch at all; with a driver torch, from the PyTorch index of the CUDA
  build that SlicerPyTorch detects for the installed driver when that extension is present (only
  torch: not SlicerPyTorch's installer, which adds torchvision and skips the constraints), plain
  pip (PyPI) otherwise;
* installs the optional itk-elastix on its own, so its failure blocks nothing;
* without itk-elastix, registration uses SimpleITK's own (shipped) registration;
* offline, says which wheels to fetch elsewhere and the command that installs them.

Only the standard library (and MedFusionLib's standard-library core) is used here: this runs
before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
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
    computer: str = ""  # "": every computer; "gpu": only with an NVIDIA driver; "cpu": only without one

    @property
    def specifier(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


# Keep in step with pyproject.toml's dependencies (Testing/test_slicer_module_files.py checks it).
REQUIREMENTS = (
    Requirement("openvino", "2024.0", False, "runs the fusion networks on the CPU", computer="cpu"),
    Requirement("torch", "2.2", False, "runs the fusion networks on the NVIDIA GPU", computer="gpu"),
    Requirement("safetensors", "0.4", False, "loads the network weights for torch", computer="gpu"),
    Requirement("nibabel", "5.0", False, "reads and checks NIfTI files"),
    Requirement("tqdm", "4.60", False, "progress reporting of the medfusion command"),
    Requirement("itk-elastix", "0.20", True, "elastix registration (without it: SimpleITK registration)", "itk"),
    Requirement("highdicom", "0.22", True, "writes the fused volume as a DICOM series (headless --dicom-output)"),
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


def this_computer() -> str:
    """``gpu`` where an NVIDIA driver is installed (CUDA through torch is possible), else ``cpu``."""
    from MedFusionLib.core.devices import nvidia_driver_present  # standard library only

    return "gpu" if nvidia_driver_present() else "cpu"


def missing_requirements(include_optional: bool = True, requirements=None) -> list[Requirement]:
    """The requirements (default :data:`REQUIREMENTS` for :func:`this_computer`) that are not
    installed, or installed in a version below their minimum."""
    missing = []
    if requirements is None:
        computer = this_computer()
        requirements = [requirement for requirement in REQUIREMENTS if requirement.computer in ("", computer)]
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


class DependenciesMissing(RuntimeError):
    """MedFusionLib's Python packages are not installed (raised by :func:`require`)."""


def require(requirements=None) -> None:
    """Raise :class:`DependenciesMissing`, saying how to install them, if required packages are
    missing: for the Python console and scripts, where nothing may ask the user."""
    missing = missing_requirements(include_optional=False, requirements=requirements)
    if missing:
        names = ", ".join(requirement.specifier for requirement in missing)
        raise DependenciesMissing(
            f"MedFusion needs the Python packages {names}, which are not installed in Slicer's Python. "
            "Install them with MedFusion.MedFusionLogic().installDependencies() in the Python console "
            "(or press Apply in the MedFusion module, which asks first; headless: MedFusionBatch.py "
            "--install-dependencies), then run again."
        )


def install(
    requirements: list[Requirement],
    pip_install: Callable[[list[str]], None],
    torch_index_url: str | None = None,
    *,
    repair: bool = False,
) -> list[str]:
    """Install ``requirements`` (the user has already agreed) and return what was done, for the log.

    ``pip_install(arguments)`` runs pip in Slicer's Python (:func:`slicer_pip_install`). Required
    packages go in one pip call; each optional package (itk-elastix) in its own call afterwards,
    and its failure is reported in the returned lines but does not stop anything: the module works
    without it. torch is installed from ``torch_index_url`` when given (the PyTorch index of the
    CUDA build for this computer, :func:`torch_index_for`), and only torch, never torchvision.
    Every call runs with a constraints file that pins the packages Slicer ships at their installed
    versions. A failure of a required package raises (pip's ``CalledProcessError``). ``repair``:
    reinstall the given packages although they are installed (a broken torch), without touching
    their dependencies (``--force-reinstall --no-deps``).
    """
    done = []
    if repair:
        original = pip_install

        def pip_install(arguments: list[str]) -> None:
            original([*arguments, "--force-reinstall", "--no-deps"])

    required = [requirement for requirement in requirements if not requirement.optional]
    optional = [requirement for requirement in requirements if requirement.optional]
    with tempfile.TemporaryDirectory(prefix="MedFusion-constraints-") as folder:
        constraints = Path(folder) / "slicer-shipped.txt"
        constraints.write_text(shipped_constraints())
        torch = next((requirement for requirement in required if requirement.distribution == "torch"), None)
        if torch is not None and torch_index_url:
            # torch alone from the PyTorch index (its CUDA build); its own dependencies from PyPI.
            pip_install(
                pip_arguments([torch], constraints)
                + ["--index-url", torch_index_url, "--extra-index-url", "https://pypi.org/simple"]
            )
            done.append(f"installed {torch.specifier} from {torch_index_url}")
            required.remove(torch)
        if required:
            pip_install(pip_arguments(required, constraints))
            done.append("installed " + ", ".join(requirement.specifier for requirement in required) + " with pip")
        for requirement in optional:
            try:
                pip_install(pip_arguments([requirement], constraints))
            except Exception as error:  # noqa: BLE001  (optional: say so and go on without it)
                done.append(
                    f"could not install the optional {requirement.specifier} ({error}); "
                    f"going on without it: {requirement.purpose}"
                )
            else:
                done.append(f"installed the optional {requirement.specifier} with pip")
    return done


def slicer_pip_install(arguments: list[str]) -> None:
    """Run pip in Slicer's Python, with no dialog of its own (the caller has asked for consent and
    reports a failure itself); raises ``CalledProcessError`` when pip fails.

    Slicer 5.12 and later have ``slicer.packaging``, whose ``pip_install`` by default shows a
    progress dialog and, on failure, an error dialog of its own before raising: MedFusion's
    dialog (with the offline instructions) would be a second one, and a failed *optional*
    package (itk-elastix, which MedFusion goes on without) would show Slicer's error dialog.
    ``show_progress=False`` gives a busy cursor and no dialog. Slicer 5.10 has no
    ``slicer.packaging``; its ``slicer.util.pip_install(list)`` shows no dialog.
    """
    try:
        import slicer.packaging
    except ImportError:  # Slicer 5.10
        import slicer.util

        slicer.util.pip_install(arguments)
    else:
        slicer.packaging.pip_install(arguments, show_progress=False)


def process_pip_install(python: str) -> Callable[[list[str]], None]:
    """A ``pip_install(arguments)`` that runs ``python -m pip install ...`` as a plain process, its
    output on standard output: for the Python console and headless Slicer, where nothing may open
    a dialog (on Slicer 5.12 and later ``slicer.util.pip_install`` shows a progress dialog, and an
    error dialog that would wait forever under ``--no-main-window``). Raises
    ``subprocess.CalledProcessError`` (with pip's output) when pip fails.
    """
    import subprocess

    def pip_install(arguments: list[str]) -> None:
        command = [python, "-m", "pip", "install", *arguments]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.stdout:
            print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)

    return pip_install


def torch_index_for(backends: list[str]) -> str | None:
    """The PyTorch wheel index for the best of ``backends`` (e.g. ``["cpu", "cu121", "cu126"]`` ->
    ``.../whl/cu126``; only ``cpu`` -> ``.../whl/cpu``); ``None`` for an empty list."""
    cuda = sorted((backend for backend in backends if re.fullmatch(r"cu\d+", backend)), key=lambda b: int(b[2:]))
    if cuda:
        return f"https://download.pytorch.org/whl/{cuda[-1]}"
    if "cpu" in backends:
        return "https://download.pytorch.org/whl/cpu"
    return None


def slicer_torch_index() -> str | None:
    """The PyTorch index for this computer's NVIDIA driver, as SlicerPyTorch detects it, when that
    extension is installed; else ``None`` (torch then comes from PyPI: on Linux a CUDA build, on
    Windows and macOS a CPU build).

    Only SlicerPyTorch's detection is used (``getCompatibleComputationBackends``, through
    light-the-torch), not its installer: that one also installs torchvision, which MedFusion does
    not need, and without the constraints that protect Slicer's own packages.
    """
    try:
        import PyTorchUtils
    except ImportError:
        return None
    # Without light-the-torch, SlicerPyTorch's detection pip-installs it first, without our
    # constraints, and it pins pip < 24.4: that would downgrade Slicer's own pip.
    if importlib.util.find_spec("light_the_torch") is None:
        return None
    try:
        backends = PyTorchUtils.PyTorchUtilsLogic.getCompatibleComputationBackends(torchVersionRequirement=">=2.2")
        # light-the-torch hands back ComputationBackend objects (CPUBackend, CUDABackend), whose
        # str() is the wheel tag ("cpu", "cu126"), not strings.
        return torch_index_for([str(backend) for backend in backends])
    except Exception:  # noqa: BLE001  (no network for light-the-torch, an old SlicerPyTorch: fall back to PyPI)
        return None
