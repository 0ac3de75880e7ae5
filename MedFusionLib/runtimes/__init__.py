"""Who runs a fusion network: torch, OpenVINO or ONNX Runtime, chosen per run.

:func:`load_network` returns a :class:`~MedFusionLib.runtimes.network.RunnableNetwork` for a model
name, whatever the runtime, and the slice engine runs it. ``auto`` is torch on CUDA (and for
training), and on the CPU the first installed of
:data:`~MedFusionLib.core.choices.CPU_RUNTIME_PREFERENCE`: OpenVINO (measured ahead of torch and
ONNX Runtime on EMFusion, the CPU's default network; README "Performance"), then ONNX Runtime,
then torch. The CPU runtimes run the exported ONNX
graphs shipped beside the weights (:mod:`~MedFusionLib.core.model_files`), so a CPU run on them
imports no torch at all. Importing this package imports no runtime.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from MedFusionLib.core.choices import CPU_RUNTIME_PREFERENCE, PRECISION_CHOICES, RUNTIME_CHOICES
from MedFusionLib.core.errors import DeviceUnavailableError, InputError, RuntimeUnavailableError
from MedFusionLib.runtimes.network import RunnableNetwork

# What to install for each runtime (the package extra, and what it brings).
INSTALL_HINTS = {
    "torch": "pip install 'medfusion[torch]' (a CUDA or CPU build of torch: README, 'CPU or CUDA')",
    "openvino": "pip install openvino (or reinstall medfusion, which depends on it)",
    "onnxruntime": "pip install 'medfusion[onnxruntime]'",
}
_DISTRIBUTIONS = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}
# Slices run side by side by the CPU runtimes: one per core, at most this many (each holds its
# features, a fraction of a GB for a 512×512 EMFusion slice).
MAX_STREAMS = 8

__all__ = ["RunnableNetwork", "choose_runtime", "installed_runtimes", "load_network", "set_default_threads"]
_default_threads: int | None = None


def set_default_threads(threads: int | None) -> None:
    """The CPU runtimes' thread count for runs that give none (``None``: one per core), e.g. a
    batch worker's share of the cores."""
    global _default_threads
    _default_threads = threads


def installed_runtimes() -> dict[str, str | None]:
    """Each runtime's installed version, or ``None``; read from the package metadata, imports nothing."""
    versions = {}
    for runtime, distribution in _DISTRIBUTIONS.items():
        try:
            found = importlib.util.find_spec(runtime) is not None
            versions[runtime] = importlib.metadata.version(distribution) if found else None
        except importlib.metadata.PackageNotFoundError:
            versions[runtime] = None
    return versions


def choose_runtime(runtime: str, device: str) -> str:
    """The concrete runtime for ``runtime`` (one of :data:`RUNTIME_CHOICES`) on a resolved ``device``.

    ``auto``: torch on CUDA; on the CPU the first installed of :data:`CPU_RUNTIME_PREFERENCE`.
    Raises :class:`RuntimeUnavailableError` naming what to install when the runtime is missing,
    and :class:`DeviceUnavailableError` for a CPU runtime asked to run on CUDA.
    """
    if runtime not in RUNTIME_CHOICES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    installed = installed_runtimes()
    on_gpu = device != "cpu"
    if runtime == "auto":
        candidates = ("torch",) if on_gpu else CPU_RUNTIME_PREFERENCE
        for candidate in candidates:
            if installed[candidate]:
                return candidate
        raise RuntimeUnavailableError(
            f"no runtime to run the fusion network on {device} is installed: "
            + INSTALL_HINTS["torch" if on_gpu else "openvino"]
        )
    if on_gpu and runtime != "torch":
        raise DeviceUnavailableError(
            f"the {runtime} runtime runs on the CPU only; use --runtime torch (or auto) for {device}, "
            "or --device cpu"
        )
    if not installed[runtime]:
        raise RuntimeUnavailableError(f"the {runtime} runtime is not installed: {INSTALL_HINTS[runtime]}")
    return runtime


def _cpu_precision(precision: str, runtime: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return "fp32"  # measured: README "Performance", lower precision
    if precision == "fp16":
        raise InputError("fp16 needs a CUDA device (with --runtime torch); on the CPU use --precision fp32 or bf16")
    if precision == "bf16" and runtime != "openvino":
        raise InputError(f"bf16 on the CPU is offered with --runtime openvino or torch, not {runtime}")
    return precision


def load_network(
    model: str,
    runtime: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    compile: bool = False,
    pretrained: bool = True,
) -> RunnableNetwork:
    """The shipped model ``model`` ready to run.

    Args:
        model: a concrete model name (not ``auto``: :func:`MedFusionLib.fusion.pipeline.resolve_model`).
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime`` (:func:`choose_runtime`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; resolved without torch where it can be
            (:func:`~MedFusionLib.core.devices.resolve_device_name`).
        precision: ``auto`` (fp16 on CUDA, fp32 on the CPU), ``fp32``, ``bf16`` (torch, OpenVINO)
            or ``fp16`` (CUDA).
        threads: CPU threads the runtime uses (``None``: one per core).
        compile: ``torch.compile`` the network (torch only).
        pretrained: load the shipped weights; ``False`` (random weights, for tests) needs torch.

    A CPU runtime loads the exported graph only after its sha256 matches the card
    (:class:`~MedFusionLib.core.errors.WeightsIntegrityError` otherwise).
    """
    from MedFusionLib.core.devices import resolve_device_name

    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    threads = threads if threads is not None else _default_threads
    resolved_device = resolve_device_name(device)
    if not pretrained and runtime not in ("auto", "torch"):
        raise InputError(f"random (untrained) weights exist only in torch, not {runtime}: use runtime 'torch'")
    chosen = choose_runtime("torch" if not pretrained else runtime, resolved_device)
    if chosen != "torch":
        from MedFusionLib.core.model_files import verified_onnx

        path, geometry = verified_onnx(model)
        if runtime == "auto" and geometry.get("min_size", 1) > 1 and installed_runtimes()["torch"]:
            # A graph exact only on large slices (the Laplacian pyramid): torch, where it is
            # installed, runs it on any size; a torch-free install keeps the graph and its limit.
            chosen = "torch"
    if chosen == "torch":
        from MedFusionLib.models import create_model
        from MedFusionLib.runtimes.torch_network import TorchNetwork

        return TorchNetwork(create_model(model, pretrained=pretrained), resolved_device, precision,
                            compile=compile, model_name=model)
    streams = min(threads or os.cpu_count() or 1, MAX_STREAMS)
    if chosen == "openvino":
        from MedFusionLib.runtimes.openvino_network import OpenVINONetwork

        return OpenVINONetwork(model, path, geometry, _cpu_precision(precision, chosen), threads, streams)
    from MedFusionLib.runtimes.onnxruntime_network import OnnxRuntimeNetwork

    _cpu_precision(precision, chosen)
    return OnnxRuntimeNetwork(model, path, geometry, threads=1 if streams > 1 else threads, streams=streams)
