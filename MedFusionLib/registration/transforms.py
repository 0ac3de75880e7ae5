"""Transforms: simplify, save, load and apply them.

Convention throughout MedFusion (ITK's): a registration transform maps a *reference* (fixed)
physical point, LPS mm, to the *moving* physical point that shows the same anatomy. Resampling
the moving image through it puts the moving image on the reference grid. Slicer loads such
ITK transform files (``.tfm`` text, ``.h5`` HDF5) as "resampling" transforms and converts them to
its own RAS convention itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import atomic_output

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


def affine_parts(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray] | None:
    """``(matrix (D, D), offset (D,))`` with ``transform(x) = matrix @ x + offset`` in mm, for a
    linear transform or a composite of linear ones; ``None`` when any part is non-linear."""
    if not transform.IsLinear():
        return None
    dimension = transform.GetDimension()
    # A linear map is determined by where it sends the origin and the unit vectors.
    origin = np.asarray(transform.TransformPoint([0.0] * dimension))
    columns = [np.asarray(transform.TransformPoint(tuple(unit))) - origin for unit in np.eye(dimension)]
    return np.stack(columns, axis=1), origin


def simplify(transform: sitk.Transform, centre: tuple[float, ...]) -> sitk.Transform:
    """An equivalent transform with each run of linear parts merged into one, for Slicer and for
    people to read.

    A linear run becomes one ``Euler3DTransform`` when it is a rotation plus translation, one
    ``AffineTransform`` otherwise, both centred at ``centre`` (mm); B-spline parts are kept, so
    a rigid → affine → B-spline chain becomes a two-part composite.
    """
    if not isinstance(transform, sitk.CompositeTransform):
        return _merge_linear(transform, centre) if transform.IsLinear() else transform
    flat = sitk.CompositeTransform(transform)
    flat.FlattenTransform()
    parts = [flat.GetNthTransform(index) for index in range(flat.GetNumberOfTransforms())]
    runs: list[list[sitk.Transform]] = []
    for part in parts:
        if runs and part.IsLinear() and runs[-1][-1].IsLinear():
            runs[-1].append(part)
        else:
            runs.append([part])
    merged = [_merge_linear(sitk.CompositeTransform(run), centre) if run[0].IsLinear() else run[0] for run in runs]
    return merged[0] if len(merged) == 1 else sitk.CompositeTransform(merged)


def _merge_linear(transform: sitk.Transform, centre: tuple[float, ...]) -> sitk.Transform:
    matrix, offset = affine_parts(transform)
    centre_array = np.asarray(centre, dtype=float)
    translation = matrix @ centre_array + offset - centre_array
    dimension = transform.GetDimension()
    is_rotation = np.allclose(matrix.T @ matrix, np.eye(dimension), atol=1e-6) and np.linalg.det(matrix) > 0
    if is_rotation and dimension == 3:
        result: sitk.Transform = sitk.Euler3DTransform()
        result.SetMatrix(tuple(matrix.ravel()), 1e-6)
    else:
        result = sitk.AffineTransform(dimension)
        result.SetMatrix(tuple(matrix.ravel()))
    result.SetCenter(tuple(centre_array))
    result.SetTranslation(tuple(translation))
    return result


def apply_transform(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform,
    interpolator: int = sitk.sitkLinear,
    default_value: float | None = None,
) -> sitk.Image:
    """``moving`` resampled onto the grid of ``reference`` through ``transform`` (reference →
    moving points). The result has the reference's size, spacing, origin and direction and the
    moving image's pixel type. Outside the moving image it is ``default_value``, by default the
    moving image's minimum (air in a CT, background in an MRI). Use ``sitk.sitkNearestNeighbor``
    for label maps.
    """
    if default_value is None:
        default_value = float(np.min(sitk.GetArrayViewFromImage(moving)))
    return sitk.Resample(moving, reference, transform, interpolator, default_value, moving.GetPixelID())


def write_transform(transform: sitk.Transform, path: str | Path, overwrite: bool = False) -> Path:
    """Save ``transform`` as an ITK transform file Slicer can load (``.tfm``/``.txt`` text,
    ``.h5``/``.hdf5`` HDF5, ``.mat`` binary, linear transforms only). Written under a temporary
    name and renamed, so a failure leaves nothing behind.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        InputError: an unknown extension, or a non-linear transform as ``.mat``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"cannot save a transform as {path.name!r}: use one of {', '.join(TRANSFORM_SUFFIXES)}")
    if suffix == ".mat" and not transform.IsLinear():
        raise InputError(
            f"{path.name}: a .mat file holds only linear transforms; save a B-spline result as .h5 or .tfm"
        )
    with atomic_output(path, overwrite=overwrite) as temporary:
        sitk.WriteTransform(transform, str(temporary))
    return path


def read_transform(path: str | Path) -> sitk.Transform:
    """Load an ITK transform file (as written by :func:`write_transform`, Slicer or elastix's
    ITK export). Composite files come back as ``sitk.CompositeTransform``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file {path} does not exist")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InputError(
            f"{path} is not a readable ITK transform file ({str(error).strip().splitlines()[-1]})"
        ) from error
