"""Every named choice a fusion run offers, and its default, in one place.

Standard library only: the Slicer module reads these before torch or SimpleITK are installed,
and the CLI builds ``--help`` from them without importing either. The modules that act on a
choice (devices, precision, registration, geometry, the model registry) import their lists from
here, and :class:`~MedFusionLib.fusion.options.FusionOptions` validates against them.
"""

from __future__ import annotations

from collections.abc import Callable

# "auto" (a network chosen by the device the run uses: DEFAULT_MODEL_BY_DEVICE), then the shipped
# fusion models and training-free rules. The registry (MedFusionLib.models) must register exactly
# these but "auto", which is no network (Testing/test_options.py checks it), so this list can be
# read without torch.
AUTO_MODEL = "auto"
MODEL_CHOICES = (
    AUTO_MODEL, "emfusion", "emfusion-full", "haf", "haf-full", "densefuse", "average", "maximum", "laplacian"
)
DEFAULT_MODEL = AUTO_MODEL
# The networks with trained weights (the others are training-free rules): read without torch by
# the CPU runtimes, which find a learned network's exported graph through its model card.
LEARNED_MODELS = ("emfusion", "emfusion-full", "haf", "haf-full", "densefuse")
# The network "auto" stands for on each kind of device: the full-size network where a GPU makes its
# cost small, the light one on the CPU. The measurements behind it (quality on the Harvard val split,
# CPU and GPU time per slice) are in README "Choosing a model"; `medfusion models` shows them live.
DEFAULT_MODEL_BY_DEVICE = {"cuda": "emfusion-full", "cpu": "emfusion"}


def resolve_model_name(name: str, device, usable: Callable[[str], bool] | None = None) -> str:
    """The concrete model a run with model ``name`` uses on ``device``.

    A name other than ``auto`` is returned as it is. ``auto`` becomes the
    :data:`DEFAULT_MODEL_BY_DEVICE` entry of the device's kind: ``device`` is the run's resolved
    device, a ``torch.device`` or its text (``"cpu"``, ``"cuda"``, ``"cuda:1"``), not ``"auto"``
    (resolve that first: :func:`MedFusionLib.core.devices.resolve_device`). ``usable(model)``, if
    given, says whether a model can be built here (its weights are installed); when the device's
    entry cannot, ``auto`` falls back to the CPU entry (the light network), so a missing download
    never stops a default run.
    """
    if name != AUTO_MODEL:
        return name
    kind = str(device).strip().lower().split(":", 1)[0]
    if kind not in DEFAULT_MODEL_BY_DEVICE:
        raise ValueError(
            f"model 'auto' is chosen by the run's device, which must be resolved first "
            f"(one of {', '.join(DEFAULT_MODEL_BY_DEVICE)}, or cuda:N), not {device!r}"
        )
    choice = DEFAULT_MODEL_BY_DEVICE[kind]
    if usable is not None and not usable(choice):
        return DEFAULT_MODEL_BY_DEVICE["cpu"]
    return choice


# "auto": no registration when both images share a voxel grid (already co-registered, e.g. the
# BraTS volumes or two series of one scan), rigid otherwise (two scans from two machines).
# "resample": no registration, the moving image resampled onto the reference grid by physical
# coordinates (hybrid scanners: PET/CT, SPECT/CT, PET/MR share one frame of reference).
REGISTRATION_CHOICES = ("auto", "none", "resample", "rigid", "affine", "bspline")
DEFAULT_REGISTRATION = "auto"
REGISTRATION_PRESETS = ("rigid", "affine", "bspline")

BACKEND_CHOICES = ("auto", "elastix", "simpleitk")
INIT_CHOICES = ("auto", "moments", "geometry", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")  # "cuda:N" is accepted too
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
# Who runs the network: "auto" is torch on CUDA and, on the CPU, the first of CPU_RUNTIME_PREFERENCE
# that is installed (OpenVINO measured ahead on the CPU's default network: README "Performance");
# torch keeps training and CUDA.
RUNTIME_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
CPU_RUNTIME_PREFERENCE = ("openvino", "onnxruntime", "torch")
AXIS_CHOICES = ("axial", "coronal", "sagittal")
PROGRESS_CHOICES = ("bar", "json", "none")

# (level, width) in Hounsfield units: the usual radiology display windows. A window is one of
# these names or "LEVEL,WIDTH".
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "soft-tissue": (50.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}
# The window "auto" applies to an image recognised as CT ("none": percentiles of raw HU, which
# wash a CT out). Chosen by measurement (bench/bench_ct_window.py): of the candidate windows, it
# shows the body of the phantom head, and on average those of our CTs (it and two real abdomens),
# closest to how the Harvard CT pictures the networks were trained on show a head.
DEFAULT_CT_WINDOW = "soft-tissue"

# Colour maps for functional (PET/SPECT) fusion, defined in MedFusionLib/imaging/colour.py. The
# Harvard ones are fitted to the pictures the models were trained on.
FUNCTIONAL_COLOUR_MAPS = ("harvard-pet", "harvard-spect", "hot", "rainbow")
DEFAULT_FUNCTIONAL_COLOUR_MAP = "harvard-pet"
# The functional volume's display range when none is given: 0 to this percentile of its voxels
# above zero (uptake is a ratio scale: 0 is no tracer). A high percentile, so that a small hot
# lesion (a few hundred voxels of tens of thousands) reaches the top of the map, not grey matter.
FUNCTIONAL_RANGE_PERCENTILE = 99.9
