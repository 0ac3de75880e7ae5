"""A functional (PET- or SPECT-like) volume of the phantom head of :mod:`.phantom`.

Uptake per tissue (grey matter high, white matter lower, bone and CSF nearly none, some in the
scalp), a few smooth hot spots (the phantom's lesion and two Gaussian foci), the scanner's blur
(a Gaussian point-spread function) and count noise, on a coarse grid of its own (4 mm by default,
a field of view larger than the head, origin half a voxel off the anatomy's grids): what a hybrid
scanner (PET/CT, SPECT/CT) delivers beside its CT. The anatomy is the one of
:func:`~MedFusionLib.imaging.phantom.make_head_phantom`, evaluated at physical positions, so the
functional volume lies in the same frame of reference as the phantom's CT (or, with
``misalignment``, moved as a scan from another session would be).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.imaging.phantom import _ANATOMY, _inside, _physical_points

# Tissue -> uptake (SUV-like units): FDG PET and a perfusion SPECT. Brain grey matter takes up
# about 2.5-3 times what white matter does; bone, CSF and the ventricles almost nothing.
_UPTAKE = {
    "pet": {
        "air": 0.0,
        "scalp": 1.0,
        "skull": 0.4,
        "csf": 0.3,
        "grey": 8.0,
        "white": 3.0,
        "ventricle": 0.3,
        "lesion": 14.0,
    },
    "spect": {
        "air": 0.0,
        "scalp": 1.5,
        "skull": 0.6,
        "csf": 0.4,
        "grey": 5.0,
        "white": 2.0,
        "ventricle": 0.4,
        "lesion": 8.0,
    },
}
# Hot foci added on top (centre in mm, LPS; FWHM in mm; peak added, in the uptake's units):
# inside the brain, away from the lesion, in different slices of all three planes.
HOT_SPOTS = (
    ((-30.0, 28.0, -6.0), 14.0, 12.0),
    ((12.0, -44.0, 30.0), 10.0, 10.0),
)
# Point-spread function (FWHM, mm) of the scanner: PET resolves better than SPECT.
_FWHM_MM = {"pet": 6.0, "spect": 10.0}
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def make_functional_phantom(
    kind: str = "pet",
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0),
    field_of_view_mm: tuple[float, float, float] = (256.0, 256.0, 208.0),
    misalignment: sitk.Euler3DTransform | None = None,
    direction: tuple[float, ...] | None = None,
    fwhm_mm: float | None = None,
    noise: float = 0.3,
    seed: int = 0,
) -> sitk.Image:
    """Render the phantom head's uptake on a coarse grid of its own.

    Args:
        kind: ``pet`` (FDG-like uptake, 6 mm FWHM) or ``spect`` (perfusion-like, 10 mm FWHM).
        spacing: the functional grid, mm ``(x, y, z)``; ``field_of_view_mm`` its extent. The grid is
            centred on the head but shifted by half a voxel, so it never coincides with the CT's.
        misalignment: ``None``: same frame of reference as the phantom's CT (a hybrid scanner);
            a rigid transform (reference -> functional points, as ``HeadPhantom.reference_to_moving``)
            moves the head as a scan from another session.
        direction: the grid's direction matrix (row-major 3×3), e.g. an oblique acquisition; the
            grid is rotated about the head centre, so it still covers the head. Identity when ``None``.
        fwhm_mm: the point-spread function; the kind's default when ``None``.
        noise: count noise, standard deviation ``noise * sqrt(uptake)`` (Poisson-like), then
            clipped at 0.
        seed: noise seed.

    Returns:
        float32 image, uptake in SUV-like units (0 in air, about 8 in PET grey matter, 14-20 at
        the hot spots before blurring), identity direction, LPS.
    """
    if kind not in _UPTAKE:
        raise InputError(f"unknown functional phantom kind {kind!r}; choose one of {', '.join(_UPTAKE)}")
    size = [max(1, int(round(extent / step))) for extent, step in zip(field_of_view_mm, spacing)]
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(matrix.ravel().tolist())
    grid.SetOrigin((matrix @ [-(n - 1) * d / 2.0 + d / 2.0 for n, d in zip(size, spacing)]).tolist())
    # Evaluate on a grid twice as fine, so tissue edges are partial-volume averaged, not aliased.
    fine = sitk.Image([2 * n for n in size], sitk.sitkFloat32)
    fine.SetSpacing([s / 2.0 for s in spacing])
    fine.SetDirection(matrix.ravel().tolist())
    fine.SetOrigin((np.asarray(grid.GetOrigin()) - matrix @ (np.asarray(spacing) / 4.0)).tolist())
    world_to_anatomy = misalignment.GetInverse() if misalignment is not None else None
    points = _physical_points(fine, world_to_anatomy)
    uptake = _UPTAKE[kind]
    values = np.zeros(points.shape[1:], dtype=np.float32)
    for tissue, centre, semi_axes, folding in _ANATOMY:
        values[_inside(points, centre, semi_axes, folding)] = uptake[tissue]
    for centre, fwhm, peak in HOT_SPOTS:
        squared = sum((points[axis] - np.float32(centre[axis])) ** 2 for axis in range(3))
        values += np.float32(peak) * np.exp(-squared / np.float32(2.0 * (fwhm * _FWHM_TO_SIGMA) ** 2))
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(fine)
    sigma = (fwhm_mm if fwhm_mm is not None else _FWHM_MM[kind]) * _FWHM_TO_SIGMA
    image = sitk.SmoothingRecursiveGaussian(image, sigma)
    image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(image)
    rng = np.random.default_rng(seed)
    values = np.clip(values + noise * np.sqrt(np.maximum(values, 0.0)) * rng.standard_normal(values.shape), 0.0, None)
    result = sitk.GetImageFromArray(values.astype(np.float32))
    result.CopyInformation(grid)
    return result
