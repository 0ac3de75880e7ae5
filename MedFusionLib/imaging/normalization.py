"""Intensity normalisation, CT windows, resampling onto a reference grid, foreground boxes.

Normalisation is per *volume* (one scale for all slices) so that slice-wise fusion does not
flicker from slice to slice.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import CT_WINDOWS
from MedFusionLib.core.errors import InputError

NORMALIZATION_EPS = 1e-7


def normalize_intensity(array: np.ndarray, percentile: float = 99.0, low_percentile: float = 0.5) -> np.ndarray:
    """Clip to the ``[low_percentile, percentile]`` percentiles, then min-max scale to [0, 1].

    ``(x - lo) / (hi - lo + 1e-7)`` after clipping to ``[lo, hi]``, computed over the whole array
    (a volume, never a slice). The seed clips only the top; the bottom 0.5 % is clipped too
    because interpolation undershoot is common in resampled scans (BraTS T1: background 0, a few
    voxels down to −69), and min-max would lift the whole background to about 0.1.
    ``low_percentile=0`` gives the seed's exact rule. Returns float32 of the same shape, in [0, 1].
    The same as :func:`scale_to_bounds` with :func:`percentile_bounds`, which the pipeline
    applies slab by slab to bound its memory.
    """
    return scale_to_bounds(array, percentile_bounds(array, percentile, low_percentile))


def percentile_bounds(array: np.ndarray, percentile: float = 99.0, low_percentile: float = 0.5) -> tuple[float, float]:
    """The ``(low_percentile, percentile)`` percentiles of the whole ``array``, as floats.

    Computed in the array's own type (no float32 copy of an integer volume).
    """
    low, high = np.percentile(np.asarray(array), [low_percentile, percentile])
    return float(low), float(high)


def scale_to_bounds(array: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Clip to ``bounds = (lo, hi)`` and map to [0, 1]: ``(x - lo) / (hi - lo + 1e-7)``, float32.

    Element-wise, so applying it to slabs of a volume gives exactly the whole-volume result.
    """
    low, high = bounds
    clipped = np.clip(np.asarray(array, dtype=np.float32), low, high)
    scaled = ((clipped - low) / (high - low + NORMALIZATION_EPS)).astype(np.float32, copy=False)
    # In float32, (x - lo) / (hi - lo + eps) can round to just above 1 for large |lo|, |hi|.
    return np.minimum(scaled, np.float32(1.0), out=scaled)


def resolve_ct_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """``(level, width)`` in HU for a window name from :data:`CT_WINDOWS` or an explicit pair."""
    if isinstance(window, str):
        try:
            return CT_WINDOWS[window]
        except KeyError:
            raise InputError(
                f"unknown CT window {window!r}; choose one of {', '.join(CT_WINDOWS)} or give LEVEL,WIDTH in HU"
            ) from None
    level, width = (float(v) for v in window)
    if width <= 0:
        raise InputError(f"CT window width must be positive, got {width} HU")
    return level, width


def apply_ct_window(array: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """Map HU to [0, 1] through a display window: ``level ± width / 2`` -> 0..1, clipped. float32."""
    level, width = resolve_ct_window(window)
    low = level - width / 2.0
    return np.clip((np.asarray(array, dtype=np.float32) - low) / width, 0.0, 1.0).astype(np.float32)


def resample_to_reference(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``moving`` onto ``reference``'s grid (size, spacing, origin, direction).

    ``transform`` maps reference physical points to moving physical points (ITK's convention);
    identity by default, i.e. the two are assumed aligned in physical space. Points outside the
    moving image get ``default_value``. The pixel type of ``moving`` is kept.
    """
    transform = transform if transform is not None else sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    return sitk.Resample(moving, reference, transform, interpolator, default_value, moving.GetPixelID())


def slice_boxes(foreground: np.ndarray, margin: int) -> list[tuple[int, int, int, int] | None]:
    """Per slice of an ``(N, H, W)`` boolean stack: ``(row_start, row_stop, column_start,
    column_stop)`` around its True pixels, grown by ``margin`` and clipped to the slice, or
    ``None`` for a slice without any."""
    height, width = foreground.shape[1:]
    rows, columns = foreground.any(axis=2), foreground.any(axis=1)
    boxes: list[tuple[int, int, int, int] | None] = []
    for row_mask, column_mask in zip(rows, columns):
        if not row_mask.any():
            boxes.append(None)
            continue
        occupied_rows, occupied_columns = np.flatnonzero(row_mask), np.flatnonzero(column_mask)
        boxes.append(
            (
                max(int(occupied_rows[0]) - margin, 0),
                min(int(occupied_rows[-1]) + 1 + margin, height),
                max(int(occupied_columns[0]) - margin, 0),
                min(int(occupied_columns[-1]) + 1 + margin, width),
            )
        )
    return boxes
