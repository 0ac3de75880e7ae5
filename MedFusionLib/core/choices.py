"""Every named choice a fusion run offers, and its default, in one place.

Standard library only: the Slicer module reads these before torch or SimpleITK are installed,
and the CLI builds ``--help`` from them without importing either. The modules that act on a
choice (devices, precision, registration, geometry, the model registry) import their lists from
here, and :class:`~MedFusionLib.fusion.options.FusionOptions` validates against them.
"""

from __future__ import annotations

# Shipped fusion models and training-free rules; the registry (MedFusionLib.models) must register
# exactly these (Testing/test_options.py checks it), so this list can be read without torch.
MODEL_CHOICES = ("emfusion", "emfusion-full", "haf", "haf-full", "densefuse", "average", "maximum", "laplacian")
DEFAULT_MODEL = "emfusion"  # best shipped model on the Harvard val split (see its model card)

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
