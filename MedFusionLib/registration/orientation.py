"""The orientation search: a start that survives any axis-aligned pose difference.

Two scanners can see one patient in any of the 24 axis-aligned poses of a cube (prone/supine,
head-first/feet-first, a series labelled in another orientation), and a local optimiser started
in the wrong one settles in the wrong one. So before the full-resolution registration, every one
of the 24 rotations is tried on coarse, smoothed copies of the two images (about
:data:`SEARCH_SPACING_MM`), each from the pose that puts the two foreground centres of mass on
top of each other, each briefly optimised (rotation and translation; the best eight for longer,
which brought poses tested up to 40° away from an axis rotation in) and scored by Mattes mutual
information. The best few become the starts of the full run; how far the best stands out from
the runner-up (another pose) is part of the registration's confidence
(:mod:`~MedFusionLib.registration.confidence`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedFusionLib.registration.checks import METRIC_BINS, Foreground

# Working resolution (mm) of the search: coarse enough that 24 short optimisations cost about a
# second, fine enough that a head still shows its skull, face and ventricles.
SEARCH_SPACING_MM = 6.0
# Gaussian smoothing (mm) of the coarse copies: a wider basin of attraction for each start.
SMOOTHING_MM = 4.0
# Optimiser iterations for every pose, then for the REFINED_POSES best of them: enough to take up
# the shift that unequal fields of view leave between the centres of mass.
# Measured on BraTS T2 turned by axis rotations plus obliques up to 40°: with 6 refined poses and
# 25 iterations, the right pose was missed in three of four oblique cases; these settings left
# every winner within 19° of the truth, which the full-resolution run then closes.
FIRST_ITERATIONS = 10
REFINED_POSES = 8
SEARCH_ITERATIONS = 40
# Share of the coarse reference's voxels that the optimiser samples (the final score uses all).
SAMPLING_SHARE = 0.3
# Two poses closer than this (degrees) are one answer found twice, not a runner-up.
DISTINCT_POSE_DEG = 45.0


@dataclass(frozen=True)
class Candidate:
    """One pose of the search: ``transform`` (reference → moving points, rigid) after the short
    coarse optimisation, ``metric`` its Mattes mutual information (positive nats, higher is
    better), ``rotation`` the axis-aligned rotation it started from ((3, 3), det +1)."""

    transform: sitk.Euler3DTransform
    metric: float
    rotation: np.ndarray

    @property
    def label(self) -> str:
        """The starting rotation in words, e.g. ``identity`` or ``180° about z``."""
        return rotation_label(self.rotation)


@dataclass(frozen=True)
class SearchResult:
    """All 24 candidates, best first (``candidates[0]`` is the winner). ``runner_up`` is the best
    candidate whose pose differs from the winner's by more than :data:`DISTINCT_POSE_DEG` (None
    if none does); ``seconds`` the wall time of the search. ``fixed_coarse``/``moving_coarse``:
    the coarse, smoothed copies the poses were scored on (for :meth:`score`)."""

    candidates: tuple[Candidate, ...]
    runner_up: Candidate | None
    seconds: float
    fixed_coarse: sitk.Image
    moving_coarse: sitk.Image

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def score(self, transform: sitk.Transform) -> float:
        """The search's score (mutual information on the coarse copies, positive nats) of any
        reference → moving ``transform``, e.g. a registration's result, to compare with the poses."""
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(METRIC_BINS)
        method.MetricUseFixedImageGradientFilterOff()
        method.MetricUseMovingImageGradientFilterOff()
        method.SetInterpolator(sitk.sitkLinear)
        method.SetMovingInitialTransform(transform)
        method.SetInitialTransform(sitk.TranslationTransform(3))
        try:
            return -float(method.MetricEvaluate(self.fixed_coarse, self.moving_coarse))
        except RuntimeError:  # ITK: too few samples inside the moving image
            return 0.0


def axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that map the coordinate axes onto themselves (signed permutation
    matrices of determinant +1), identity first."""
    rotations = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[range(3), permutation] = signs
            if np.linalg.det(matrix) > 0:
                rotations.append(matrix)
    rotations.sort(key=lambda m: -np.trace(m))  # identity (trace 3) first
    return rotations


def rotation_label(matrix: np.ndarray) -> str:
    """A rotation matrix as ``identity`` or ``<angle>° about <axis>`` (axis in LPS, rounded)."""
    angle = float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    if angle < 1.0:
        return "identity"
    if angle > 179.0:
        # A half-turn: the axis is the eigenvector of eigenvalue +1, i.e. a column of (M + I).
        column = (matrix + np.eye(3))[:, int(np.argmax(np.linalg.norm(matrix + np.eye(3), axis=0)))]
        axis = column / np.linalg.norm(column)
    else:
        axis = np.array([matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]])
        axis /= np.linalg.norm(axis)
    names = "xyz"
    if np.count_nonzero(np.round(axis, 3)) == 1:
        index = int(np.argmax(np.abs(axis)))
        text = ("-" if axis[index] < 0 and angle <= 179.0 else "") + names[index]
    else:
        text = "(" + ", ".join(f"{v:.2f}" for v in axis) + ")"
    return f"{angle:.0f}° about {text}"


def rotation_part(transform: sitk.Transform, centre: tuple[float, ...] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The rotation (3, 3) nearest to how ``transform`` turns the neighbourhood of ``centre``
    (mm): central differences 50 mm each way, then the polar decomposition. Works for any
    transform, B-spline composites included."""
    centre = np.asarray(centre, dtype=float)
    step = 50.0
    columns = [
        np.subtract(
            transform.TransformPoint(tuple(centre + step * unit)), transform.TransformPoint(tuple(centre - step * unit))
        )
        for unit in np.eye(3)
    ]
    left, _, right = np.linalg.svd(np.stack(columns, axis=1) / (2.0 * step))
    return left @ right


def rotation_angle_between(
    first: sitk.Transform, second: sitk.Transform, centre: tuple[float, ...] = (0.0, 0.0, 0.0)
) -> float:
    """Angle (degrees) of the rotation that takes ``first``'s rotation (near ``centre``) to ``second``'s."""
    residual = rotation_part(first, centre).T @ rotation_part(second, centre)
    return float(np.degrees(np.arccos(np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0))))


def coarse_copy(
    image: sitk.Image, spacing_mm: float = SEARCH_SPACING_MM, smoothing_mm: float = SMOOTHING_MM
) -> sitk.Image:
    """``image`` block-averaged to about ``spacing_mm`` and smoothed by ``smoothing_mm``, float32.

    Block averaging first keeps the cost proportional to one pass over the full image (about
    100 M voxels for a 512×512×400 CT); the smoothing then runs on the small copy only.
    """
    factors = [max(1, round(spacing_mm / spacing)) for spacing in image.GetSpacing()]
    coarse = sitk.BinShrink(image, factors)
    if coarse.GetPixelID() != sitk.sitkFloat32:
        coarse = sitk.Cast(coarse, sitk.sitkFloat32)
    return sitk.SmoothingRecursiveGaussian(coarse, smoothing_mm)


def search_orientations(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_region: Foreground,
    moving_region: Foreground,
    seed: int = 0,
) -> SearchResult:
    """Try the 24 axis-aligned rotations about the foreground centres; best first.

    Args:
        fixed, moving: float32 3D images (reference and moving), any grids.
        fixed_region, moving_region: their foregrounds (:func:`~MedFusionLib.registration.checks.foreground`);
            the centroids anchor every pose, so each rotation starts with the two bodies on top
            of each other.
        seed: seed of the metric samples.
    """
    started = time.perf_counter()
    fixed_coarse, moving_coarse = coarse_copy(fixed), coarse_copy(moving)
    fixed_centre = np.asarray(fixed_region.centroid)
    moving_centre = np.asarray(moving_region.centroid)
    candidates = []
    for rotation in axis_rotations():
        start = sitk.Euler3DTransform()
        start.SetCenter(tuple(fixed_centre))
        start.SetMatrix(tuple(rotation.ravel()), 1e-6)
        start.SetTranslation(tuple(moving_centre - fixed_centre))
        metric = _optimise(fixed_coarse, moving_coarse, start, FIRST_ITERATIONS, seed)
        candidates.append(Candidate(start, metric, rotation))
    candidates.sort(key=lambda candidate: -candidate.metric)
    # The promising poses go on: a right pose that started far off (unequal fields of view move
    # the centres of mass apart) needs more steps to show how well it fits.
    for index, candidate in enumerate(candidates[:REFINED_POSES]):
        metric = _optimise(fixed_coarse, moving_coarse, candidate.transform, SEARCH_ITERATIONS, seed)
        candidates[index] = Candidate(candidate.transform, metric, candidate.rotation)
    candidates.sort(key=lambda candidate: -candidate.metric)
    for candidate in candidates:
        # ITK's sums still differ in the last bits from run to run (about 1e-12), and the full-resolution
        # optimiser can carry such a difference into a visibly different result: a start rounded to
        # a millionth of a radian and a ten-thousandth of a millimetre is the same in every run.
        parameters = np.asarray(candidate.transform.GetParameters())
        candidate.transform.SetParameters(
            tuple(np.concatenate([np.round(parameters[:3], 6), np.round(parameters[3:], 4)]))
        )
    best = candidates[0]
    runner_up = next(
        (
            c
            for c in candidates[1:]
            if rotation_angle_between(best.transform, c.transform, tuple(fixed_centre)) > DISTINCT_POSE_DEG
        ),
        None,
    )
    return SearchResult(tuple(candidates), runner_up, time.perf_counter() - started, fixed_coarse, moving_coarse)


def _optimise(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Euler3DTransform, iterations: int, seed: int
) -> float:
    """Optimise ``transform`` in place on the coarse pair; returns its mutual information (nats,
    positive), evaluated at every voxel of ``fixed`` so that all candidates are scored alike.
    A pose whose samples fall outside the moving image scores 0."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(METRIC_BINS)
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_SHARE, seed + 1)  # seed 0 would mean "from the clock"
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0 * SEARCH_SPACING_MM,
        minStep=0.5,
        numberOfIterations=iterations,
        relaxationFactor=0.8,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed, moving)
        method.SetMetricSamplingStrategy(method.NONE)
        return -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # ITK: too few samples inside the moving image in this pose
        return 0.0
