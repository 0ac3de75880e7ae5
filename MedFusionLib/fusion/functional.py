"""Colour fusion of a functional volume (PET, SPECT) with an anatomical one (MRI, CT).

The way the models were trained and are scored on the Harvard PET-MRI and SPECT-MRI pairs,
carried to volumes: the functional volume, on the reference grid, is scaled to [0, 1] by one
display range for the whole volume (:func:`functional_bounds`), coloured through a colour map
(:mod:`MedFusionLib.imaging.colour`), and split into YCbCr; its luminance Y is fused with the
anatomy slice by slice by the chosen model (the pipeline's slice engine, as for any pair), and
the fused Y is put back together with the functional colour's Cb/Cr (:func:`colourise`). Cold
voxels are black in every map (Cb = Cr = 128), so there the result is the fused anatomy in grey;
uptake adds its colour.

:func:`resample_by_coordinates` is the ``resample`` registration choice: hybrid scanners
(PET/CT, SPECT/CT, PET/MR) put both volumes in one frame of reference on different grids, so
the functional volume is resampled by physical coordinates, without registration.

The pipeline (:func:`~MedFusionLib.fusion.pipeline.fuse_volumes` with ``functional=``) calls
these; nothing here reads or writes files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import FUNCTIONAL_RANGE_PERCENTILE
from MedFusionLib.core.errors import InputError
from MedFusionLib.imaging.colour import apply_colour_map, colour_map_table, rgb_to_ycbcr
from MedFusionLib.imaging.normalization import resample_to_reference, scale_to_bounds

Scaling = Callable[[np.ndarray], np.ndarray]
# Slices coloured at a time in colourise(): bounds the float temporaries (about 16 M voxels).
_SLAB_VOXELS = 16_000_000
# Volumes are coloured through a table of this many steps over the display range (1/4095 of it:
# far finer than the maps' control points and than the 8-bit output), not by interpolating the
# map per voxel: a lookup per voxel instead of three interpolations and a colour conversion.
_TABLE_ENTRIES = 4096


@cache
def _colour_tables(colour_map: str) -> tuple[np.ndarray, np.ndarray]:
    """The map's colours as ``(luminance, chroma)``: ``(entries,)`` Y in [0, 1], and ``(entries, 3)``
    RGB minus Y (0-255 units) — what Cb/Cr add to any Y in RGB, since YCbCr -> RGB is
    ``RGB = Y + M (Cb - 128, Cr - 128)``: a colour's chroma is its RGB minus its luma."""
    rgb = colour_map_table(colour_map, _TABLE_ENTRIES)
    luma = rgb_to_ycbcr(rgb)[:, 0]
    chroma = rgb - luma[:, None]
    luminance = luma / np.float32(255.0)
    luminance.setflags(write=False)
    chroma.setflags(write=False)
    return luminance, chroma


def _table_index(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Raw values -> their row of :func:`_colour_tables` (int32, same shape)."""
    scaled = scale_to_bounds(values, bounds)
    scaled *= np.float32(_TABLE_ENTRIES - 1)
    return np.rint(scaled, out=scaled).astype(np.int32)


def functional_bounds(values: np.ndarray, display_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """The display range ``(low, high)`` of a functional volume, in its own units.

    ``display_range`` when given (e.g. SUV ``(0, 10)``); otherwise 0 to the
    :data:`~MedFusionLib.core.choices.FUNCTIONAL_RANGE_PERCENTILE` th percentile of the voxels
    above 0. Uptake is a ratio scale, so 0 (no tracer) is black; the percentile of the positive
    voxels, not of all, so that the air around the head does not decide the scale, and a high
    one, so that a small hot focus reaches the top of the map while grey matter stays below it.
    Computed on the volume as acquired (its own grid), so the scale does not depend on the
    reference grid it is fused on.
    """
    if display_range is not None:
        return float(display_range[0]), float(display_range[1])
    positive = np.asarray(values)[np.asarray(values) > 0]
    if positive.size == 0:
        raise InputError(
            "the functional volume has no voxel above 0, so no display range can be chosen from it; "
            "give one in its units with --functional-range LOW,HIGH (functional_range='LOW,HIGH')"
        )
    high = float(np.percentile(positive, FUNCTIONAL_RANGE_PERCENTILE))
    if not high > 0:
        raise InputError("the functional volume's positive voxels are all (near) 0; give --functional-range LOW,HIGH")
    return 0.0, high


def functional_luminance(bounds: tuple[float, float], colour_map: str) -> Scaling:
    """Raw functional values -> the luminance Y in [0, 1] of their colour (float32, same shape): what
    the fusion model is given for the functional volume, slab by slab."""
    luminance = _colour_tables(colour_map)[0]
    return lambda slab: luminance[_table_index(slab, bounds)]


def colourise(
    fused_luminance: np.ndarray, functional: np.ndarray, bounds: tuple[float, float], colour_map: str
) -> np.ndarray:
    """Put the fused luminance together with the functional colour: the RGB fusion result.

    Args:
        fused_luminance: float32 in [0, 1], any shape (``[z, y, x]`` or ``[y, x]``): the model's Y.
        functional: raw functional values of the same shape, on the same grid.
        bounds: the display range (:func:`functional_bounds`); ``colour_map``: a map's name.

    Returns:
        uint8 ``shape + (3,)`` RGB: YCbCr (BT.601 full range) of ``Y = 255 * fused``,
        ``Cb, Cr`` of the functional voxel's colour, back to RGB, rounded and clipped (a fused Y far
        from the colour's own can leave the RGB gamut: the usual clip of the YCbCr method).
    """
    if fused_luminance.shape != functional.shape:
        raise ValueError(f"fused {fused_luminance.shape} and functional {functional.shape} must have one shape")
    out = np.empty(fused_luminance.shape + (3,), dtype=np.uint8)
    fused_stack = fused_luminance.reshape((-1,) + fused_luminance.shape[-2:])
    functional_stack = functional.reshape(fused_stack.shape)
    out_stack = out.reshape(fused_stack.shape + (3,))
    step = max(1, _SLAB_VOXELS // max(1, fused_stack[0].size))
    chroma = _colour_tables(colour_map)[1]
    for start in range(0, len(fused_stack), step):
        # Y = 255 * fused with the colour's Cb/Cr, back in RGB: the fused Y plus the colour's chroma.
        rgb = chroma[_table_index(functional_stack[start : start + step], bounds)]
        rgb += fused_stack[start : start + step, ..., None] * np.float32(255.0)
        np.clip(rgb, 0.0, 255.0, out=rgb)
        out_stack[start : start + step] = np.rint(rgb, out=rgb)
    return out


def coloured_volume(image: sitk.Image, bounds: tuple[float, float], colour_map: str) -> sitk.Image:
    """A functional image shown through a colour map: RGB uint8 vector image with ``image``'s geometry
    (what a viewer shows as the colour overlay; the figures' middle column)."""
    rgb = apply_colour_map(scale_to_bounds(sitk.GetArrayViewFromImage(image), bounds), colour_map)
    result = sitk.GetImageFromArray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), isVector=True)
    result.CopyInformation(image)
    return result


def resample_by_coordinates(reference: sitk.Image, moving: sitk.Image) -> sitk.Image:
    """``moving`` resampled onto ``reference``'s grid through their physical coordinates (no
    registration): the two must come from one frame of reference (a hybrid scanner).

    Linear interpolation; outside the moving field of view, the moving image's minimum (0 for
    uptake). Raises :class:`InputError` when less than the registration checks' minimum share
    (:data:`~MedFusionLib.registration.checks.MIN_OVERLAP`) of the reference's foreground lies
    inside the moving field of view: such a pair is not in one frame of reference, and a
    resampled volume of mostly padding would fuse into a plausible-looking wrong picture.
    """
    from MedFusionLib.registration import checks  # SimpleITK only, but part of the registration package

    region = checks.foreground(reference)
    overlap = checks.fraction_inside(region.points, moving)
    if overlap < checks.MIN_OVERLAP:
        raise InputError(
            f"--registration resample: only {overlap:.0%} of the reference's foreground lies inside the moving image "
            f"(at least {checks.MIN_OVERLAP:.0%} is needed): reference {_extent(reference)}, moving {_extent(moving)}. "
            "The two are not in one frame of reference; register them instead (--registration rigid), or check "
            "that both come from the same scanner session."
        )
    minimum = float(sitk.GetArrayViewFromImage(moving).min())
    return resample_to_reference(moving, reference, default_value=minimum)


def _extent(image: sitk.Image) -> str:
    """The physical bounding box of an image's voxel centres, as text (mm, LPS)."""
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint([corner[d] * (size[d] - 1) for d in range(len(size))])
            for corner in np.ndindex(*(2,) * len(size))
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    return "spans " + " × ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(low, high)) + " mm"
