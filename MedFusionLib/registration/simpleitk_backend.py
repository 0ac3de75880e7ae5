"""The SimpleITK backend: ``sitk.ImageRegistrationMethod``, which ships inside 3D Slicer.

Each stage optimises a fresh transform on top of the result so far (ITK's "moving initial
transform"), so the full transform after a stage is ``previous ∘ stage``: the new stage acts on
reference points first. Multi-resolution is done here, level by level on block-averaged copies
of both images: ITK's own pyramid would smooth the moving image at full resolution on every
level, which costs more than the optimisation on a 240×240×155 volume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from MedFusionLib.registration.presets import Stage, shrink_factors

Progress = Callable[[float, str], None]

# Rigid stages use a quasi-Newton optimiser on levels at least this coarse (mm), regular steps below.
QUASI_NEWTON_FROM_MM = 4.0


def register_stages(
    fixed: sitk.Image,
    moving: sitk.Image,
    stages: tuple[Stage, ...],
    start: sitk.Transform,
    centre: tuple[float, ...],
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    seed: int,
    progress: Progress | None,
) -> sitk.Transform:
    """Run ``stages`` in order from ``start``; returns the composite reference → moving transform.

    ``fixed``/``moving``: float32 images. ``centre``: rotation/scaling centre (mm) for the linear
    stages, the reference foreground centre, so rotations do not drag the head sideways.
    """
    transform = start
    mask_fraction = 1.0 if fixed_mask is None else float(np.mean(sitk.GetArrayViewFromImage(fixed_mask) > 0))
    for index, stage in enumerate(stages):
        stage_transform = _new_transform(stage, fixed, centre)
        levels = shrink_factors(fixed, moving, stage)
        for level, (fixed_factors, moving_factors) in enumerate(levels):
            if progress is not None:
                progress((index + level / len(levels)) / len(stages), f"{stage.kind} level {level + 1}/{len(levels)}")
            fixed_level = sitk.BinShrink(fixed, fixed_factors)
            _optimise_level(
                fixed_level,
                sitk.BinShrink(moving, moving_factors),
                stage,
                transform,
                stage_transform,
                fixed_mask,
                moving_mask,
                mask_fraction,
                seed,
                quasi_newton=stage.kind == "rigid" and min(fixed_level.GetSpacing()) >= QUASI_NEWTON_FROM_MM,
            )
        transform = sitk.CompositeTransform([transform, stage_transform])
    if progress is not None:
        progress(1.0, "done")
    return transform


def _new_transform(stage: Stage, fixed: sitk.Image, centre: tuple[float, ...]) -> sitk.Transform:
    """The identity of the stage's transform type: rotations and scalings about ``centre``; the
    B-spline grid covers the reference field of view at ``stage.grid_spacing_mm``."""
    if stage.kind == "bspline":
        extent = [size * spacing for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
        mesh = [max(1, round(length / stage.grid_spacing_mm)) for length in extent]
        return sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    transform = sitk.Euler3DTransform() if stage.kind == "rigid" else sitk.AffineTransform(3)
    transform.SetCenter(centre)
    return transform


def _optimise_level(
    fixed: sitk.Image,
    moving: sitk.Image,
    stage: Stage,
    start: sitk.Transform,
    transform: sitk.Transform,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    mask_fraction: float,
    seed: int,
    quasi_newton: bool,
) -> None:
    """Optimise ``transform`` in place on one resolution level."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(stage.bins)
    # Gradients by finite differences at the samples, not gradient images of every voxel.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock", which would not be reproducible.
    # ITK draws from the whole image and drops samples outside the mask: draw more to keep as many.
    candidates = fixed.GetNumberOfPixels() * (1.0 if fixed_mask is None else mask_fraction)
    method.SetMetricSamplingPercentage(min(1.0, stage.samples_per_level / max(candidates, 1.0)), seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetMovingInitialTransform(start)
    method.SetInitialTransform(transform, inPlace=True)
    if stage.kind == "bspline":
        method.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=stage.iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=2 * stage.iterations,
            costFunctionConvergenceFactor=1e7,
        )
    elif quasi_newton:
        # Far from the answer, quasi-Newton steps follow the curvature: a regular-step descent
        # crawls there, its direction dominated by translation while a large rotation remains.
        # (Not for affine stages: unscaled, it would trade millimetres for matrix entries.)
        method.SetOptimizerAsLBFGS2(solutionAccuracy=1e-5, numberOfIterations=100, deltaConvergenceTolerance=1e-6)
    else:
        # Near the answer, on a noisier fine level, regular steps polish it.
        # Steps are mm of motion (scales from physical shift), so one step size suits rotations
        # and translations alike; it shrinks by the relaxation factor whenever the gradient turns
        # back, and a gentle factor keeps it from stalling early on a sampled, noisy metric.
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0,
            minStep=1e-3,
            numberOfIterations=stage.iterations,
            relaxationFactor=0.7,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()
    method.Execute(fixed, moving)
