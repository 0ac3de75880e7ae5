"""Measuring registration accuracy against a known answer.

Make a test pair by moving a volume through a *known* transform (:func:`warp_with_known_transform`),
register it back, and compare the transform found with the one applied: the target registration
error (TRE) at every foreground voxel, and for rigid motion the residual rotation and translation.
The tests and ``bench/bench_registration.py`` measure this way; it works on any real volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.registration.transforms import affine_parts


def random_rigid(
    rng: np.random.Generator, centre: tuple[float, float,
                                            float], max_rotation_deg: float = 15.0, max_translation_mm: float = 20.0
) -> sitk.Euler3DTransform:
    """A rigid motion about ``centre`` (mm): each rotation angle uniform in ±``max_rotation_deg``
    and each translation component uniform in ±``max_translation_mm``."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)))
    transform.SetTranslation(tuple(rng.uniform(-max_translation_mm, max_translation_mm, 3)))
    return transform


def smooth_deformation(
    image: sitk.Image, rng: np.random.Generator, control_spacing_mm: float = 40.0, max_displacement_mm: float = 5.0
) -> sitk.BSplineTransform:
    """A random smooth deformation over ``image``'s field of view: a cubic B-spline with control
    points every ``control_spacing_mm``, each moved uniformly within ±``max_displacement_mm`` per
    axis (so no voxel moves further than that per axis, and with spacing ≫ displacement, nothing
    folds)."""
    extent = [size * spacing for size, spacing in zip(image.GetSize(), image.GetSpacing())]
    mesh = [max(1, round(length / control_spacing_mm)) for length in extent]
    transform = sitk.BSplineTransformInitializer(image, mesh, order=3)
    transform.SetParameters(tuple(rng.uniform(-max_displacement_mm, max_displacement_mm,
                                              transform.GetNumberOfParameters())))
    return transform


def warp_with_known_transform(image: sitk.Image, truth: sitk.Transform) -> sitk.Image:
    """``image`` moved so that registering the result back to ``image`` should find ``truth``.

    The result lies on ``image``'s grid and satisfies ``result(truth(x)) = image(x)``: ``truth``
    maps reference points to moving points, as registration transforms do. Linear ``truth`` is
    inverted exactly; a deformation through an iteratively inverted displacement field (residual
    below 0.01 mm for smooth fields).
    """
    if truth.IsLinear():
        inverse: sitk.Transform = truth.GetInverse()
    else:
        field = sitk.TransformToDisplacementField(
            truth, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()
        )
        inverse = sitk.DisplacementFieldTransform(
            sitk.InvertDisplacementField(field, maximumNumberOfIterations=50, maxErrorToleranceThreshold=0.01,
                                         meanErrorToleranceThreshold=1e-4)
        )
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    return sitk.Resample(image, image, inverse, sitk.sitkLinear, background, image.GetPixelID())


def target_registration_errors(
    estimated: sitk.Transform, truth: sitk.Transform, reference: sitk.Image, mask: np.ndarray
) -> np.ndarray:
    """``|estimated(x) − truth(x)|`` in mm at every voxel ``x`` of ``reference`` where ``mask``
    (bool, numpy ``[z, y, x]`` order, the reference's shape) is true; shape ``(N,)``."""

    def displacement(transform: sitk.Transform) -> np.ndarray:
        field = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
            reference.GetDirection(),
        )
        return sitk.GetArrayViewFromImage(field)[mask]

    return np.linalg.norm(displacement(estimated) - displacement(truth), axis=1)


def rigid_errors(estimated: sitk.Transform, truth: sitk.Transform, centre: tuple[float, ...]) -> tuple[float, float]:
    """``(rotation error in degrees, translation error in mm)`` between two linear transforms:
    the angle of the residual rotation ``truth⁻¹ ∘ estimated`` and the distance between where
    the two send ``centre`` (mm; use the foreground centre)."""
    estimated_matrix, _ = affine_parts(estimated)
    truth_matrix, _ = affine_parts(truth)
    residual = np.linalg.solve(truth_matrix, estimated_matrix)
    angle = np.degrees(np.arccos(np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0)))
    shift = np.linalg.norm(np.subtract(estimated.TransformPoint(centre), truth.TransformPoint(centre)))
    return float(angle), float(shift)
