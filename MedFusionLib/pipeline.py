"""The one fusion flow that the CLI, the Slicer logic and batch scripts all call.

read -> (register, resample) -> normalise per volume -> crop to joint foreground -> fuse slice by
slice -> uncrop -> an image with exactly the reference's geometry. See :func:`fuse_volumes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from os import PathLike
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .errors import GridMismatchError, InputError
from .geometry import SLICING_AXES, grid_differences, slicing_array_axis
from .inference import CancelCallback, SliceFuser
from .io import read_image, rgb_to_ycbcr, ycbcr_to_rgb
from .resources import require_memory
from .preprocessing import apply_ct_window, foreground_bounding_box, normalize_intensity

ImageSource = str | PathLike | sitk.Image
# progress(stage, done, total): stage "register" (done/total in percent) or "fuse" (slices).
PipelineProgress = Callable[[str, int, int], None]

REGISTRATION_CHOICES = ("none", "rigid", "affine", "bspline")
DEFAULT_MODEL = "emfusion"  # best on the Harvard val split of the shipped models (see its model card)
# Normalised intensity above which a voxel counts as foreground when cropping, and the margin
# (voxels) kept around the box so that the networks' receptive fields see real context at its edge.
FOREGROUND_THRESHOLD = 0.05
FOREGROUND_MARGIN = 8
_EIGHT_BIT = (sitk.sitkUInt8, sitk.sitkVectorUInt8)


@dataclass
class FusionResult:
    """What :func:`fuse_volumes` returns.

    ``fused``: float32 in [0, 1] with the reference's size, spacing, origin and direction; for a
    colour 2D input, an RGB uint8 image (the fused luminance with the colour source's chroma).
    ``registered_moving``: the moving image on the reference grid, original intensities.
    ``registration``: the registration result (transform, metric before/after), ``None`` without.
    """

    fused: sitk.Image
    registered_moving: sitk.Image
    registration: object | None
    model: str
    device: str
    seconds: float


def load_image(source: ImageSource, role: str) -> sitk.Image:
    """A SimpleITK image from a path or an image, checked for what fusion needs.

    ``role`` ("reference"/"moving") names the input in error messages. Accepts 2D or 3D scalar
    images and 2D RGB images; rejects other dimensions, other component counts, NaN/Inf and
    constant images, each with an :class:`InputError` that says what to do.
    """
    image = source if isinstance(source, sitk.Image) else read_image(source)
    dimension, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dimension not in (2, 3):
        raise InputError(
            f"the {role} image is {dimension}D; MedFusion fuses 2D images and 3D volumes. "
            "Extract one 3D volume (e.g. one time point) first."
        )
    if components not in (1, 3) or (components == 3 and dimension != 2):
        raise InputError(
            f"the {role} image has {components} components per {dimension}D pixel; MedFusion takes "
            "scalar images, or RGB only for 2D (e.g. pseudo-colour PET/SPECT). Convert it to grayscale first."
        )
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(
            f"the {role} image contains {int((~finite).sum())} NaN or infinite voxels; "
            "fix or mask them in the source image (e.g. replace with the background value) and retry"
        )
    if values.min() == values.max():
        raise InputError(
            f"the {role} image is constant (every voxel is {values.flat[0]}): there is nothing to fuse. "
            "Check that the right file or series was loaded."
        )
    return image


def _split_luminance(image: sitk.Image) -> tuple[sitk.Image, np.ndarray | None]:
    """Scalar float32 image to fuse, plus ``(H, W, 2)`` Cb/Cr of an RGB image (``None`` if scalar)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return sitk.Cast(image, sitk.sitkFloat32), None
    ycbcr = rgb_to_ycbcr(sitk.GetArrayFromImage(image).astype(np.float32))
    luminance = sitk.GetImageFromArray(ycbcr[..., 0].astype(np.float32))
    luminance.CopyInformation(image)
    return luminance, ycbcr[..., 1:]


def _normalize(image: sitk.Image, window: str | tuple[float, float] | None, eight_bit: bool) -> np.ndarray:
    """Scale to [0, 1]: a CT window if given; ``x / 255`` for 8-bit pictures (already display-scaled,
    and the literature's convention for the benchmark PNGs, which keeps fused colour in gamut);
    otherwise per-volume percentile clipping and min-max."""
    values = sitk.GetArrayFromImage(image)
    if window is not None:
        return apply_ct_window(values, window)
    if eight_bit:
        return (values / 255.0).astype(np.float32)
    return normalize_intensity(values)


def fuse_volumes(
    reference: ImageSource,
    moving: ImageSource,
    *,
    model: str | torch.nn.Module = DEFAULT_MODEL,
    registration: str = "none",
    registration_backend: str = "auto",
    registration_initializer: str | sitk.Transform = "auto",
    device: str | torch.device = "auto",
    axis: str = "axial",
    batch_size: int | None = None,
    reference_window: str | tuple[float, float] | None = None,
    moving_window: str | tuple[float, float] | None = None,
    pretrained: bool = True,
    progress: PipelineProgress | None = None,
    cancel: CancelCallback | None = None,
) -> FusionResult:
    """Fuse ``moving`` into ``reference`` and return the result on the reference grid.

    Args:
        reference, moving: paths (any format :func:`~MedFusionLib.io.read_image` reads) or
            SimpleITK images; both 3D volumes, or both 2D images (grayscale or RGB).
        model: a registry name (``medfusion models``) or a fusion ``nn.Module``.
        registration: ``none`` requires the two to share a voxel grid; ``rigid``, ``affine`` or
            ``bspline`` registers ``moving`` to ``reference`` first (:mod:`MedFusionLib.registration`;
            3D volumes only: 2D pictures must already be aligned, as the benchmark pairs are).
        registration_backend: ``auto``, ``elastix`` or ``simpleitk``.
        registration_initializer: the starting alignment (``auto``, ``moments``, ``geometry``,
            ``none``) or a ``sitk.Transform`` (reference -> moving points), e.g. for scans whose
            fields of view do not overlap in physical space.
        device: ``auto`` (CUDA when usable), ``cpu``, ``cuda``.
        axis: slicing plane, ``axial``, ``coronal`` or ``sagittal`` (from the direction matrix).
        reference_window, moving_window: a CT window (name from
            :data:`~MedFusionLib.preprocessing.CT_WINDOWS` or ``(level, width)`` in HU) for a CT
            input; ``None`` scales 8-bit pictures by 1/255 and normalises anything else per
            volume (:func:`~MedFusionLib.preprocessing.normalize_intensity`).
        progress: ``progress(stage, done, total)``; ``cancel()`` returning True stops the run with
            :class:`~MedFusionLib.errors.FusionCancelled`. Nothing is written by this function.
    """
    started = time.perf_counter()
    if axis not in SLICING_AXES:
        raise InputError(f"unknown slicing axis {axis!r}; choose one of {', '.join(SLICING_AXES)}")
    if registration not in REGISTRATION_CHOICES:
        raise InputError(f"unknown registration {registration!r}; choose one of {', '.join(REGISTRATION_CHOICES)}")
    reference_image = load_image(reference, "reference")
    moving_image = load_image(moving, "moving")
    if reference_image.GetDimension() != moving_image.GetDimension():
        raise InputError(
            f"the reference is {reference_image.GetDimension()}D but the moving image is "
            f"{moving_image.GetDimension()}D; give two volumes or two 2D images"
        )
    # Normalised copies, crops, stacks and the output: about eight float32 arrays of the reference
    # grid (registration adds the moving grid's resampling on top).
    require_memory(
        8 * 4 * reference_image.GetNumberOfPixels(),
        f"fusing on a {'×'.join(map(str, reference_image.GetSize()))} reference grid",
    )
    # Build the model before the slow steps, so a wrong name or missing weights fail at once.
    fuser = SliceFuser(model, device=device, batch_size=batch_size, pretrained=pretrained)

    reference_luminance, reference_chroma = _split_luminance(reference_image)
    moving_luminance, moving_chroma = _split_luminance(moving_image)
    registration_result = None
    if registration == "none":
        differences = grid_differences(reference_image, moving_image)
        if differences:
            raise GridMismatchError(
                "the reference and moving images are on different voxel grids ("
                + "; ".join(differences)
                + "). Register them (--registration rigid, or registration='rigid' in Python), "
                "or resample the moving image onto the reference grid first."
            )
        registered_luminance = moving_luminance
    else:
        from .registration import register  # optional heavy import (elastix) only when asked

        if progress:
            progress("register", 0, 100)
        registration_result = register(
            reference_luminance,
            moving_luminance,
            preset=registration,
            backend=registration_backend,
            initializer=registration_initializer,
            # Registration reports a fraction; the pipeline's stages count steps: percent.
            progress=(lambda fraction, _message: progress("register", int(round(100 * fraction)), 100)) if progress else None,
        )
        registered_luminance = registration_result.registered
        if progress:
            progress("register", 100, 100)

    a = _normalize(reference_luminance, reference_window, reference_image.GetPixelID() in _EIGHT_BIT)
    b = _normalize(registered_luminance, moving_window, moving_image.GetPixelID() in _EIGHT_BIT)
    fused = _fuse_array(a, b, reference_image, axis, fuser, progress, cancel)

    chroma = reference_chroma if reference_chroma is not None else moving_chroma
    if chroma is None:
        fused_image = sitk.GetImageFromArray(fused)
    else:
        rgb = ycbcr_to_rgb(np.concatenate([fused[..., None] * 255.0, chroma], axis=-1))
        fused_image = sitk.GetImageFromArray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), isVector=True)
    fused_image.CopyInformation(reference_image)

    if registration_result is None:
        registered_moving = moving_image
    else:
        registered_moving = registration_result.registered
    return FusionResult(
        fused=fused_image,
        registered_moving=registered_moving,
        registration=registration_result,
        model=model if isinstance(model, str) else type(model).__name__,
        device=str(fuser.device),
        seconds=time.perf_counter() - started,
    )


def _fuse_array(
    a: np.ndarray,
    b: np.ndarray,
    reference: sitk.Image,
    axis: str,
    fuser: SliceFuser,
    progress: PipelineProgress | None,
    cancel: CancelCallback | None,
) -> np.ndarray:
    """Crop two normalised arrays to their joint foreground, fuse slice-wise, uncrop.

    ``a``, ``b``: ``[z, y, x]`` (3D) or ``[y, x]`` (2D) float32 in [0, 1], same shape.
    Returns float32 in [0, 1] of that shape. Outside the foreground box, where both inputs are
    below :data:`FOREGROUND_THRESHOLD`, it is their mean: background noise stays continuous
    across the box's edge instead of dropping to a hard zero.
    """
    box = foreground_bounding_box([a > FOREGROUND_THRESHOLD, b > FOREGROUND_THRESHOLD], margin=FOREGROUND_MARGIN)
    fused = (a + b) * np.float32(0.5)
    if box is None:
        raise InputError(
            "neither image has any foreground after normalisation (every voxel is near its minimum); "
            "check the inputs, or pass a CT window that matches the image's intensity range"
        )
    slice_axis = slicing_array_axis(reference, axis) if a.ndim == 3 else None
    stack_a, stack_b = a[box], b[box]
    if slice_axis is None:
        stack_a, stack_b = stack_a[None], stack_b[None]
    else:
        stack_a, stack_b = np.moveaxis(stack_a, slice_axis, 0), np.moveaxis(stack_b, slice_axis, 0)
    stage_progress = (lambda done, total: progress("fuse", done, total)) if progress else None
    fused_stack = fuser.fuse_stack(stack_a, stack_b, progress=stage_progress, cancel=cancel)
    fused[box] = fused_stack[0] if slice_axis is None else np.moveaxis(fused_stack, 0, slice_axis)
    return fused
