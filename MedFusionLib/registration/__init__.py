"""Registration: bring a moving volume onto a reference volume's grid, or say why not.

``register(reference, moving, preset="rigid", backend="auto")`` runs a preset (:mod:`.presets`:
rigid, affine = rigid → affine, bspline = rigid → affine → B-spline) with mutual information, so
CT/MR and T1/T2 pairs work, from a start that matches the two foreground centres
(:mod:`.initialization`). It returns the moving image resampled on the reference grid and the
transform, or raises :class:`~MedFusionLib.core.errors.RegistrationError` when the result fails the
checks of :mod:`.checks` (no overlap, worse or no shared structure, implausible scaling, folding).

Backends: ``elastix`` (itk-elastix, or SimpleITK's own ``ElastixImageFilter`` where it was
built with elastix) and ``simpleitk`` (``ImageRegistrationMethod``, inside every Slicer).
``auto`` picks elastix when it can be imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import BACKEND_CHOICES
from MedFusionLib.core.errors import InputError, RegistrationError
from MedFusionLib.registration import checks, elastix_backend, simpleitk_backend
from MedFusionLib.registration.initialization import INITIALIZERS, initial_alignment
from MedFusionLib.registration.presets import PRESETS
from MedFusionLib.registration.transforms import apply_transform, read_transform, simplify, write_transform

BACKENDS = BACKEND_CHOICES

__all__ = [
    "BACKENDS",
    "INITIALIZERS",
    "PRESETS",
    "RegistrationResult",
    "apply_transform",
    "available_backends",
    "read_transform",
    "register",
    "write_transform",
]


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register` found.

    ``registered``: the moving image resampled on the reference grid (reference size, spacing,
    origin, direction; the moving image's pixel type and intensities; outside the moving field of
    view its minimum). ``transform``: reference → moving physical points (ITK convention; save it
    with :func:`write_transform`, apply it to other images of the moving scan with
    :func:`apply_transform`). ``metric_before``/``metric_after``: Mattes mutual information at the
    starting alignment and after registration, negated as ITK reports it (lower is better, nats).
    ``seconds``: wall-clock time of the registration, checks and resampling (not the one-off
    loading of itk-elastix, about 20 s once per process).
    """

    registered: sitk.Image
    transform: sitk.Transform
    metric_before: float
    metric_after: float
    seconds: float
    preset: str
    backend: str


def available_backends() -> list[str]:
    """The concrete backends usable in this environment, preferred first."""
    backends = []
    if _elastix_importable():
        backends.append("elastix")
    backends.append("simpleitk")
    return backends


def _elastix_importable() -> bool:
    return elastix_backend.simpleitk_has_elastix() or elastix_backend.itk_elastix_installed()


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"unknown registration backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "simpleitk":
        return backend
    if _elastix_importable():
        return "elastix"
    if backend == "auto":
        return "simpleitk"
    raise InputError(
        "the elastix backend needs itk-elastix: pip install itk-elastix (or pip install 'medfusion[elastix]'), "
        "or choose backend 'simpleitk'"
    )


def _as_float_volume(image: sitk.Image, role: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise InputError(f"the {role} image must be a SimpleITK image, not {type(image).__name__}")
    if image.GetDimension() != 3:
        raise InputError(f"registration works on 3D volumes; the {role} image is {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the {role} image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "register a single-channel (grey-scale) image, e.g. the luminance"
        )
    floating = sitk.Cast(image, sitk.sitkFloat32)
    if not np.isfinite(sitk.GetArrayViewFromImage(floating)).all():
        raise InputError(f"the {role} image contains NaN or infinite values; fix or mask them before registering")
    return floating


def _as_mask(mask: sitk.Image | None, image: sitk.Image, role: str) -> sitk.Image | None:
    if mask is None:
        return None
    if mask.GetSize() != image.GetSize() or not np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3) \
            or not np.allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4) \
            or not np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4):
        raise InputError(f"the {role} mask must lie on the {role} image's voxel grid (same size, spacing, origin, direction)")
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise InputError(f"the {role} mask is empty; give a mask that covers the anatomy to align, or none")
    return binary


def register(
    reference: sitk.Image,
    moving: sitk.Image,
    preset: str = "rigid",
    backend: str = "auto",
    *,
    reference_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initializer: str | sitk.Transform = "auto",
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``reference`` and resample it onto the reference grid.

    Args:
        reference, moving: 3D single-channel SimpleITK images, any pixel type, any grids
            (spacing, field of view and orientation may differ; physical LPS mm).
        preset: ``rigid``, ``affine`` (rigid → affine) or ``bspline`` (rigid → affine → B-spline).
        backend: ``auto`` (elastix when importable, else simpleitk), ``elastix`` or ``simpleitk``.
        reference_mask, moving_mask: optional masks (non-zero = use) on the grid of their image;
            the similarity is measured only inside them.
        initializer: the starting alignment, see
            :func:`~MedFusionLib.registration.initialization.initial_alignment` (``auto``,
            ``moments``, ``geometry``, ``none``) or a ``sitk.Transform`` (reference → moving).
        seed: seed of the random metric samples; the same inputs and seed give the same result.
        progress: called as ``progress(fraction in [0, 1], message)`` while it runs.

    Raises:
        InputError: unusable inputs (not 3D, vector pixels, NaNs, masks on another grid, unknown
            preset or backend).
        RegistrationError: no overlap, or a result that is worse than the start, shares no
            structure, mirrors, scales implausibly or folds; the message says what to try.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown registration preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = _resolve_backend(backend)
    started = time.perf_counter()
    fixed = _as_float_volume(reference, "reference")
    moving_float = _as_float_volume(moving, "moving")
    fixed_mask = _as_mask(reference_mask, reference, "reference")
    moving_mask_binary = _as_mask(moving_mask, moving, "moving")

    fixed_region = checks.foreground(fixed, fixed_mask)
    moving_region = checks.foreground(moving_float, moving_mask_binary)
    start = initial_alignment(fixed, moving_float, fixed_region, moving_region, initializer)
    if chosen == "elastix" and not elastix_backend.simpleitk_has_elastix():
        # Loading itk-elastix costs seconds once per process: not this registration's time, and
        # not worth paying for a pair the checks above already refused.
        load_started = time.perf_counter()
        elastix_backend.load_itk_elastix()
        started += time.perf_counter() - load_started
    metric_before = checks.mutual_information(fixed_region.grid, moving_float, start, fixed_mask)

    run = elastix_backend.register_stages if chosen == "elastix" else simpleitk_backend.register_stages
    try:
        transform = run(
            fixed, moving_float, PRESETS[preset], start, fixed_region.centroid,
            fixed_mask, moving_mask_binary, seed, progress,
        )
    except RuntimeError as error:  # ITK/elastix exceptions arrive as RuntimeError
        raise RegistrationError(
            f"the {chosen} {preset} registration stopped with an error ({checks.last_line(error)}). " + checks.ADVICE
        ) from error
    transform = simplify(transform, fixed_region.centroid)
    checks.check_plausible(transform, fixed_region, moving_float)
    metric_after = checks.mutual_information(fixed_region.grid, moving_float, transform, fixed_mask)
    checks.check_metric(metric_before, metric_after)
    registered = apply_transform(moving, reference, transform)
    return RegistrationResult(
        registered=registered,
        transform=transform,
        metric_before=metric_before,
        metric_after=metric_after,
        seconds=time.perf_counter() - started,
        preset=preset,
        backend=chosen,
    )
