"""Voxel grids and anatomical orientation of SimpleITK images.

SimpleITK images carry their grid (size, spacing, origin, direction) in LPS physical space. Here:
whether two images share a grid, and which array axis is "axial", "coronal" or "sagittal".
NumPy arrays from ``sitk.GetArrayFromImage`` are indexed ``[z, y, x]``, the reverse of
SimpleITK's ``(x, y, z)`` index order.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import AXIS_CHOICES

SLICING_AXES = AXIS_CHOICES
# Physical LPS axis that each slicing plane is perpendicular to: axial slices stack along S-I (z),
# coronal along A-P (y), sagittal along L-R (x).
_PHYSICAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def grid_differences(image: sitk.Image, other: sitk.Image, tolerance: float = 1e-4) -> list[str]:
    """Human-readable differences between the grids of two images; empty when they match.

    Spacing and origin are compared with an absolute tolerance in mm, direction cosines with the
    same tolerance (unitless); size and dimension exactly.
    """
    if image.GetDimension() != other.GetDimension():
        return [f"dimension {image.GetDimension()}D vs {other.GetDimension()}D"]
    differences = []
    if image.GetSize() != other.GetSize():
        differences.append(f"size {image.GetSize()} vs {other.GetSize()}")
    for label, first, second in (
        ("spacing (mm)", image.GetSpacing(), other.GetSpacing()),
        ("origin (mm)", image.GetOrigin(), other.GetOrigin()),
        ("direction", image.GetDirection(), other.GetDirection()),
    ):
        if not np.allclose(first, second, rtol=0.0, atol=tolerance):
            differences.append(f"{label} {_rounded(first)} vs {_rounded(second)}")
    return differences


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def slicing_array_axis(image: sitk.Image, plane: str) -> int:
    """The NumPy array axis (0, 1 or 2 of ``[z, y, x]``) to step along for slices in ``plane``.

    Uses the direction matrix, so an image stored sagittally still gives true axial slices: the
    chosen index axis is the one whose direction cosine is most aligned with the plane's normal.
    """
    if plane not in _PHYSICAL_AXIS:
        raise ValueError(f"slicing plane must be one of {', '.join(SLICING_AXES)}, not {plane!r}")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    # Column j of the direction matrix is the physical direction of index axis j.
    index_axis = int(np.argmax(np.abs(direction[_PHYSICAL_AXIS[plane], :])))
    return 2 - index_axis
