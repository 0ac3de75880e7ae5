"""Failure detection: overlap, mutual information, and plausibility of a transform.

A registration result is only returned when it passes these checks; each failure raises
:class:`~MedFusionLib.core.errors.RegistrationError` with what went wrong and what to try. The checks
work on a coarse (about 4 mm) copy of the reference foreground, so they cost well under a second
even on large volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import RegistrationError

CHECK_SPACING_MM = 4.0
# Fraction of the reference foreground that must land inside the moving image's field of view.
MIN_OVERLAP = 0.2
# Linear scalings beyond this factor (or below its inverse) are not anatomy seen by two scanners.
MAX_SCALE = 1.5
# Fraction of the reference foreground where a deformation may fold (Jacobian determinant <= 0).
MAX_FOLDED = 0.01
# Mutual information (nats) below which two images share no usable structure: unrelated images
# score about 0.01 (the estimator's bias), aligned T1/T2 or CT/MR brains 0.3 to 1.
MIN_MUTUAL_INFORMATION = 0.05
# How much worse than the start (nats) a result may score before it counts as "made it worse":
# the metric is estimated from samples, and an already aligned pair ends where it started.
METRIC_TOLERANCE = 0.005
METRIC_BINS = 32

ADVICE = (
    "Try another preset (rigid is the most robust), check that both images show the same body "
    "region and overlap, or provide an initial transform (initializer=..., --initial-transform)."
)


@dataclass(frozen=True)
class Foreground:
    """The reference foreground on a coarse grid: ``grid`` (a coarse copy of the reference,
    float32), ``mask`` (bool, numpy ``[z, y, x]`` order) and ``points`` (mm, shape ``(N, 3)``
    for the N foreground voxels, LPS). ``centroid``: their mean, mm."""

    grid: sitk.Image
    mask: np.ndarray
    points: np.ndarray

    @property
    def centroid(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.points.mean(axis=0))


def foreground(image: sitk.Image, mask: sitk.Image | None = None) -> Foreground:
    """The voxels of ``image`` that show the subject: inside ``mask`` when given, else above an
    Otsu threshold (tissue vs air or background, for CT and MR alike)."""
    factors = [max(1, round(CHECK_SPACING_MM / spacing)) for spacing in image.GetSpacing()]
    coarse = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)
    if mask is not None:
        inside = sitk.GetArrayFromImage(sitk.Resample(mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    else:
        inside = sitk.GetArrayFromImage(sitk.OtsuThreshold(coarse, 0, 1)) > 0
    if not inside.any():
        raise RegistrationError(
            "the reference image (or its mask) has no foreground: it is empty or constant. "
            "Check the input file and the mask."
        )
    return Foreground(coarse, inside, _physical_points(coarse)[inside])


def _physical_points(image: sitk.Image) -> np.ndarray:
    """Physical position (mm) of every voxel of ``image``, shape ``(z, y, x, D)``."""
    size = image.GetSize()
    axes = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in reversed(size)), indexing="ij")
    index = np.stack(axes[::-1], axis=-1)  # (z, y, x, D) with (x, y, z) index order last
    matrix = np.asarray(image.GetDirection()).reshape(len(size), len(size)) * np.asarray(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + index @ matrix.T


def mapped_points(transform: sitk.Transform, region: Foreground) -> np.ndarray:
    """Where ``transform`` sends every voxel of ``region.grid``, mm, shape ``(z, y, x, D)``."""
    grid = region.grid
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()
    )
    return _physical_points(grid) + sitk.GetArrayFromImage(field)


def inside_field_of_view(points: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Which of ``points`` (mm, ``(..., D)``) lie inside the field of view of ``image``; bool ``(...)``."""
    dimension = image.GetDimension()
    matrix = np.asarray(image.GetDirection()).reshape(dimension, dimension) * np.asarray(image.GetSpacing())
    index = (points - np.asarray(image.GetOrigin())) @ np.linalg.inv(matrix).T
    return np.all((index >= -0.5) & (index <= np.asarray(image.GetSize()) - 0.5), axis=-1)


def fraction_inside(points: np.ndarray, image: sitk.Image) -> float:
    """Fraction of ``points`` (mm, ``(N, D)``) inside the field of view of ``image``."""
    return float(inside_field_of_view(points, image).mean())


def mutual_information(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, fixed_mask: sitk.Image | None = None
) -> float:
    """Mattes mutual information between ``fixed`` and ``moving`` seen through ``transform``,
    negated as ITK reports it (lower is better; about -0.3 to -1 for aligned brains, near 0 for
    unrelated images). Evaluated at every voxel of ``fixed``, so pass a coarse copy
    (:attr:`Foreground.grid`) for speed; the same points every call make values before and after a
    registration comparable."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(METRIC_BINS)
    method.MetricUseFixedImageGradientFilterOff()  # no gradients needed for a value
    method.MetricUseMovingImageGradientFilterOff()
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(fixed.GetDimension()))
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError as error:  # ITK: "All samples map outside moving image buffer" and alike
        raise RegistrationError(
            f"the images do not overlap enough to compare them (ITK: {last_line(error)}). " + ADVICE
        ) from error


def last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def check_overlap(transform: sitk.Transform, region: Foreground, moving: sitk.Image, when: str) -> float:
    """Raise unless at least :data:`MIN_OVERLAP` of the reference foreground maps into the moving
    field of view; returns the fraction."""
    points = mapped_points(transform, region)[region.mask]
    overlap = fraction_inside(points, moving)
    if overlap < MIN_OVERLAP:
        raise RegistrationError(
            f"{when}, only {overlap:.0%} of the reference foreground falls inside the moving image "
            f"(at least {MIN_OVERLAP:.0%} is needed): the images do not overlap. " + ADVICE
        )
    return overlap


def check_plausible(transform: sitk.Transform, region: Foreground, moving: sitk.Image) -> None:
    """Raise :class:`RegistrationError` when ``transform`` is not a believable result: it folds
    tissue, mirrors, scales by more than :data:`MAX_SCALE`, or moves the reference foreground out
    of the moving image (a translation beyond the field of view)."""
    mapped = mapped_points(transform, region)
    check_overlap(transform, region, moving, "after registration")
    # The best linear approximation over the foreground: for a linear transform it is exact.
    points = region.points
    design = np.hstack([points, np.ones((len(points), 1))])
    solution, *_ = np.linalg.lstsq(design, mapped[region.mask], rcond=None)
    matrix = solution[:-1].T
    scales = np.linalg.svd(matrix, compute_uv=False)
    if np.linalg.det(matrix) <= 0:
        raise RegistrationError("the registration produced a mirrored transform, which no anatomy needs. " + ADVICE)
    if scales.max() > MAX_SCALE or scales.min() < 1.0 / MAX_SCALE:
        raise RegistrationError(
            f"the registration scaled the image by {scales.min():.2f} to {scales.max():.2f} (a plausible result "
            f"stays within {1 / MAX_SCALE:.2f} to {MAX_SCALE:.2f}). " + ADVICE
        )
    if not transform.IsLinear():
        folded = float((_jacobian_determinants(mapped, region.grid)[region.mask] <= 0).mean())
        if folded > MAX_FOLDED:
            raise RegistrationError(
                f"the deformation folds tissue onto itself in {folded:.1%} of the reference foreground. "
                "Use the affine preset, or the B-spline preset on images with more overlap. " + ADVICE
            )


def _jacobian_determinants(mapped: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """det(d mapped / d x) per voxel of ``grid``, from ``mapped`` positions ``(z, y, x, D)``."""
    dimension = grid.GetDimension()
    # Derivatives along the index axes (x, y, z), then the chain rule through the grid geometry.
    per_index = np.stack([np.gradient(mapped, axis=dimension - 1 - axis) for axis in range(dimension)], axis=-1)
    index_to_physical = np.asarray(grid.GetDirection()).reshape(dimension, dimension) * np.asarray(grid.GetSpacing())
    return np.linalg.det(per_index @ np.linalg.inv(index_to_physical))


def check_metric(before: float, after: float) -> None:
    """Raise when the registration made the mutual information worse, or left the images sharing
    no structure (both in ITK's negated convention, nats)."""
    if after > before + METRIC_TOLERANCE:
        raise RegistrationError(
            f"the registration made the alignment worse (mutual information {-before:.3f} before, "
            f"{-after:.3f} after). " + ADVICE
        )
    if -after < MIN_MUTUAL_INFORMATION:
        raise RegistrationError(
            f"after registration the images still share almost no structure (mutual information "
            f"{-after:.3f}, at least {MIN_MUTUAL_INFORMATION} expected): they may show different body "
            "regions or one may be empty. " + ADVICE
        )
