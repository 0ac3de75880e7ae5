"""Registration: bring a moving volume onto a reference volume's grid, or say why not.

``register(reference, moving, preset="rigid", backend="auto")`` runs a preset (:mod:`.presets`:
rigid, affine = rigid → affine, bspline = rigid → affine → B-spline) with mutual information, so
CT/MR and T1/T2 pairs work. The default start (``initializer="auto"``) is the orientation
search of :mod:`.orientation`: the 24 axis-aligned rotations about the two foreground centres,
scored on coarse copies, so scans whose patients lay differently (prone/supine, head-/feet-first)
still meet; the best starts go on to the full-resolution run. It returns the moving image
resampled on the reference grid, the transform and a :class:`~.confidence.Confidence` (doubtful
or not, and why), or raises :class:`~MedFusionLib.core.errors.RegistrationError` when the result
fails the checks of :mod:`.checks` (no overlap, worse or no shared structure, implausible
scaling, folding), or is doubtful and ``strict`` is set.

Both images come through the input gate (:func:`~MedFusionLib.io.gate.prepare_input`; a
:class:`~MedFusionLib.io.gate.PreparedScan` passes as it is): float32, validated, and a CT with its
padding set to air (-2048 outside the reconstruction circle would otherwise be the strongest edge
in the image) and its body (:meth:`~MedFusionLib.io.gate.PreparedScan.body_mask`) as its
foreground, not the table.

Backends: ``elastix`` (itk-elastix, or SimpleITK's own ``ElastixImageFilter`` where it was
built with elastix) and ``simpleitk`` (``ImageRegistrationMethod``, inside every Slicer).
``auto`` picks SimpleITK for rigid and affine (as accurate, without itk-elastix's seconds of
loading per process, see README "Registration") and elastix for B-spline when it can be
imported (SimpleITK's B-spline stage is far slower).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import BACKEND_CHOICES
from MedFusionLib.core.errors import InputError, RegistrationError
from MedFusionLib.io.gate import PreparedScan, prepare_input
from MedFusionLib.registration import checks, elastix_backend, simpleitk_backend
from MedFusionLib.registration.confidence import MIN_MARGIN, Confidence, assess, foreground_overlap
from MedFusionLib.registration.initialization import INITIALIZERS, fields_of_view_intersect, initial_alignment
from MedFusionLib.registration.orientation import (
    DISTINCT_POSE_DEG,
    SearchResult,
    rotation_angle_between,
    search_orientations,
)
from MedFusionLib.registration.presets import PRESETS
from MedFusionLib.registration.transforms import apply_transform, read_transform, simplify, write_transform

BACKENDS = BACKEND_CHOICES

__all__ = [
    "BACKENDS",
    "Confidence",
    "INITIALIZERS",
    "PRESETS",
    "RegistrationResult",
    "StoredAlignment",
    "aligned_as_stored",
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
    loading of itk-elastix, seconds once per process). ``confidence``: whether to trust the
    result (:class:`~MedFusionLib.registration.confidence.Confidence`: ``doubtful``, ``summary``
    and the figures behind them). ``search``: the orientation search's candidates, best first (for
    a start the user chose, the search that checked the result against the other orientations).
    ``search_seconds``: its share of ``seconds``. ``registered_is_ct``: the moving scan is a CT in
    HU (as the input gate recognised it), so ``registered`` is one too.
    """

    registered: sitk.Image
    transform: sitk.Transform
    metric_before: float
    metric_after: float
    seconds: float
    preset: str
    backend: str
    confidence: Confidence | None = None
    search: SearchResult | None = None
    search_seconds: float = 0.0
    registered_is_ct: bool = False


def available_backends() -> list[str]:
    """The concrete backends usable in this environment, preferred first."""
    backends = []
    if _elastix_importable():
        backends.append("elastix")
    backends.append("simpleitk")
    return backends


def _elastix_importable() -> bool:
    return elastix_backend.simpleitk_has_elastix() or elastix_backend.itk_elastix_installed()


def resolve_backend(backend: str, preset: str = "rigid") -> str:
    """The concrete backend ``backend`` means for ``preset``: ``auto`` is SimpleITK for rigid and
    affine, elastix for B-spline when it is importable (else SimpleITK)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown registration backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "simpleitk" or (backend == "auto" and preset != "bspline"):
        return "simpleitk"
    if _elastix_importable():
        return "elastix"
    if backend == "auto":
        return "simpleitk"
    raise InputError(
        "the elastix backend needs itk-elastix: pip install itk-elastix (or pip install 'medfusion[elastix]'), "
        "or choose backend 'simpleitk'"
    )


def _as_mask(mask: sitk.Image | None, image: sitk.Image, role: str) -> sitk.Image | None:
    if mask is None:
        return None
    if (
        mask.GetSize() != image.GetSize()
        or not np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        or not np.allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4)
        or not np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4)
    ):
        raise InputError(
            f"the {role} mask must lie on the {role} image's voxel grid (same size, spacing, origin, direction)"
        )
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise InputError(f"the {role} mask is empty; give a mask that covers the anatomy to align, or none")
    return binary


def register(
    reference: sitk.Image | PreparedScan,
    moving: sitk.Image | PreparedScan,
    preset: str = "rigid",
    backend: str = "auto",
    *,
    reference_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initializer: str | sitk.Transform = "auto",
    seed: int = 0,
    strict: bool = False,
    progress: Callable[[float, str], None] | None = None,
    search: SearchResult | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``reference`` and resample it onto the reference grid.

    Args:
        reference, moving: 3D single-channel scans, any grids (spacing, field of view and
            orientation may differ; physical LPS mm): SimpleITK images of any real pixel type,
            which go through the input gate here, or scans it already prepared.
        preset: ``rigid``, ``affine`` (rigid → affine) or ``bspline`` (rigid → affine → B-spline).
        backend: ``auto`` (:func:`resolve_backend`: simpleitk for rigid and affine, elastix for
            bspline when importable), ``elastix`` or ``simpleitk``.
        reference_mask, moving_mask: optional masks (non-zero = use) on the grid of their image;
            the similarity is measured only inside them.
        initializer: the starting alignment: ``auto`` (the orientation search of
            :mod:`.orientation`, for images whose fields of view intersect), ``moments``,
            ``geometry``, ``none`` (see
            :func:`~MedFusionLib.registration.initialization.initial_alignment`) or a
            ``sitk.Transform`` (reference → moving).
        seed: seed of the random metric samples; the same inputs and seed give the same result
            (up to last digits: ITK's threads add up the metric in a varying order).
        strict: a doubtful result (see ``RegistrationResult.confidence``) raises instead of
            being returned with a warning.
        progress: called as ``progress(fraction in [0, 1], message)`` while it runs.
        search: the orientation search of these two scans, already run (by
            :func:`aligned_as_stored`), reused instead of run again; ``None``: run here.

    Raises:
        InputError: unusable inputs (what the gate refuses, masks on another grid, unknown preset
            or backend).
        RegistrationError: no overlap, or a result that is worse than the start, shares no
            structure, mirrors, scales implausibly or folds, or (``strict``) is doubtful; the
            message says what to try.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown registration preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = resolve_backend(backend, preset)
    started = time.perf_counter()
    fixed_scan = prepare_input(reference, "reference", volume=True, scalar=True)
    moving_scan = prepare_input(moving, "moving", volume=True, scalar=True)
    fixed, fixed_body = fixed_scan.image, fixed_scan.body_mask()
    moving_float, moving_body = moving_scan.image, moving_scan.body_mask()
    fixed_mask = _as_mask(reference_mask, fixed, "reference")
    moving_mask_binary = _as_mask(moving_mask, moving_float, "moving")

    fixed_region = checks.foreground(fixed, fixed_mask if fixed_mask is not None else fixed_body)
    moving_region = checks.foreground(
        moving_float, moving_mask_binary if moving_mask_binary is not None else moving_body
    )
    if search is not None and (reference_mask is not None or moving_mask is not None):
        search = None  # masks change the foregrounds the poses were anchored on: search again
    started_by_search = isinstance(initializer, str) and initializer == "auto"
    if started_by_search:
        if not fields_of_view_intersect(fixed, moving_float):
            initial_alignment(fixed, moving_float, fixed_region, moving_region, "auto")  # raises, saying why
        if search is None:
            if progress is not None:
                progress(0.0, "orientation search (24 poses)")
            search = search_orientations(fixed, moving_float, fixed_region, moving_region, seed)
        starts = [candidate.transform for candidate in full_run_starts(search)]
        checks.check_overlap(starts[0], fixed_region, moving_float, "at the starting alignment")
    else:
        starts = [initial_alignment(fixed, moving_float, fixed_region, moving_region, initializer)]
    if chosen == "elastix" and not elastix_backend.simpleitk_has_elastix():
        # Loading itk-elastix costs seconds once per process: not this registration's time, and
        # not worth paying for a pair the checks above already refused.
        load_started = time.perf_counter()
        elastix_backend.load_itk_elastix()
        started += time.perf_counter() - load_started

    run = elastix_backend.register_stages if chosen == "elastix" else simpleitk_backend.register_stages
    runs = []  # (metric after, transform, start) per start
    for number, start in enumerate(starts):
        step = (
            None
            if progress is None
            else (lambda fraction, message, n=number: progress((n + fraction) / len(starts), message))
        )
        try:
            transform = run(
                fixed,
                moving_float,
                PRESETS[preset],
                start,
                fixed_region.centroid,
                fixed_mask,
                moving_mask_binary,
                seed,
                step,
            )
        except RuntimeError as error:  # ITK/elastix exceptions arrive as RuntimeError
            raise RegistrationError(
                f"the {chosen} {preset} registration stopped with an error ({checks.last_line(error)}). "
                + checks.ADVICE
            ) from error
        transform = simplify(transform, fixed_region.centroid)
        runs.append(
            (checks.mutual_information(fixed_region.grid, moving_float, transform, fixed_mask), transform, start)
        )
    # The full-resolution metric decides between starts: the coarse level may blur the asymmetries
    # (face, ventricles) that tell a pose from its 180° turn.
    metric_after, transform, start = min(runs, key=lambda run: run[0])
    metric_before = checks.mutual_information(fixed_region.grid, moving_float, start, fixed_mask)
    checks.check_plausible(transform, fixed_region, moving_float)
    checks.check_metric(metric_before, metric_after)
    if search is None:
        # A start the user chose skips the search, not the question it answers: did another
        # orientation fit better than the result? (About a second; the 24 poses, scored as usual.)
        search = search_orientations(fixed, moving_float, fixed_region, moving_region, seed)
    confidence = _confidence(
        transform, metric_after, fixed_region, moving_region, moving_float, search, runs, started_by_search
    )
    if strict and confidence.doubtful:
        raise RegistrationError(confidence.summary + " (--strict: nothing was written)")
    registered = apply_transform(moving_float, fixed, transform, default_value=moving_scan.outside_value)
    return RegistrationResult(
        registered=registered,
        transform=transform,
        metric_before=metric_before,
        metric_after=metric_after,
        seconds=time.perf_counter() - started,
        preset=preset,
        backend=chosen,
        confidence=confidence,
        search=search,
        search_seconds=search.seconds if search is not None else 0.0,
        registered_is_ct=moving_scan.is_ct,
    )


# Other poses of the orientation search also get a full-resolution run when their coarse score is
# within this share of the winner's (too close for the coarse level to decide), at most
# MAX_FULL_RUNS runs in all.
OTHER_STARTS_WITHIN = 0.05
MAX_FULL_RUNS = 3


def full_run_starts(search: SearchResult) -> list:
    """The poses the full-resolution registration starts from: the search's winner, and the
    distinct poses (more than 45° from each other) that scored within :data:`OTHER_STARTS_WITHIN`
    of it, best first, at most :data:`MAX_FULL_RUNS`."""
    centre = search.best.transform.GetCenter()
    starts = [search.best]
    for candidate in search.candidates[1:]:
        if len(starts) == MAX_FULL_RUNS or candidate.metric < (1.0 - OTHER_STARTS_WITHIN) * search.best.metric:
            break
        if all(
            rotation_angle_between(candidate.transform, start.transform, centre) > DISTINCT_POSE_DEG for start in starts
        ):
            starts.append(candidate)
    return starts


def _confidence(
    transform: sitk.Transform,
    metric_after: float,
    fixed_region: checks.Foreground,
    moving_region: checks.Foreground,
    moving: sitk.Image,
    search: SearchResult,
    runs: list,
    started_by_search: bool,
) -> Confidence:
    """The confidence of the chosen ``transform``. Its orientation margin compares it with the
    best other pose (more than 45° away): by the full-resolution metric when other poses had a
    full run (``runs``), else by the search's coarse scores (the result's own, from
    :meth:`~.orientation.SearchResult.score`, when the search only checked a given start)."""
    overlap = foreground_overlap(transform, fixed_region, moving_region, moving)
    centre = fixed_region.centroid

    def pose_of(candidate_transform) -> str:
        angles = [rotation_angle_between(c.transform, candidate_transform, centre) for c in search.candidates]
        return search.candidates[int(np.argmin(angles))].label

    other_runs = [run for run in runs if rotation_angle_between(run[1], transform, centre) > DISTINCT_POSE_DEG]
    if other_runs:
        metric, other, _ = min(other_runs, key=lambda run: run[0])
        margin = (metric - metric_after) / -metric_after if metric_after < 0 else 0.0
        return assess(-metric_after, overlap, margin, pose=pose_of(transform), runner_up_pose=pose_of(other))
    angles = [rotation_angle_between(c.transform, transform, centre) for c in search.candidates]
    winner = search.candidates[int(np.argmin(angles))]
    others = [c for c, angle in zip(search.candidates, angles) if angle > DISTINCT_POSE_DEG]
    runner_up = max(others, key=lambda c: c.metric) if others else None
    # Where the search did not start the registration (a given start), the result's own coarse score.
    score = winner.metric if started_by_search else search.score(transform)
    if runner_up is None or score <= 0:
        return assess(-metric_after, overlap, pose=winner.label)
    margin = (score - runner_up.metric) / score
    return assess(-metric_after, overlap, margin, pose=winner.label, runner_up_pose=runner_up.label)


# How far the orientation search's best pose may lie from "as stored" for a pair on one voxel
# grid to count as aligned: well inside what registration itself would correct, far below the
# gross errors this check exists for (a turned patient, a shifted series).
ALIGNED_MAX_DEG = 10.0
ALIGNED_MAX_MM = 10.0


@dataclass(frozen=True)
class StoredAlignment:
    """What :func:`aligned_as_stored` found: ``aligned`` (whether the pair looks aligned as stored),
    ``evidence`` (why, in words) and ``search`` (the orientation search it ran, to hand to
    :func:`register` so a pair it finds turned is not searched twice; ``None`` where nothing could
    be searched)."""

    aligned: bool
    evidence: str
    search: SearchResult | None = None


def aligned_as_stored(
    reference: sitk.Image | PreparedScan, moving: sitk.Image | PreparedScan, seed: int = 0
) -> StoredAlignment:
    """Whether two 3D scans look aligned as they are stored, the evidence in words, and the search.

    For ``--registration auto`` on a pair that shares a voxel grid: a shared grid usually means
    co-registered data, but two scans resampled onto one standard grid without registration
    (e.g. 1 mm conformed volumes from two sessions) share it too. The orientation search
    (:mod:`.orientation`, on coarse copies) scores the 24 axis-aligned poses; the pair is aligned
    unless the best pose fits clearly better (by the confidence's orientation margin) than every
    pose within :data:`ALIGNED_MAX_DEG` and :data:`ALIGNED_MAX_MM` of the images as stored. The
    scans go through the input gate (a :class:`~MedFusionLib.io.gate.PreparedScan` passes as it is).
    """
    # No volume requirement: a single slice cannot be searched, and is then left as stored (below).
    fixed_scan = prepare_input(reference, "reference", scalar=True)
    moving_scan = prepare_input(moving, "moving", scalar=True)
    try:
        fixed_region = checks.foreground(fixed_scan.image, fixed_scan.body_mask())
        moving_region = checks.foreground(moving_scan.image, moving_scan.body_mask())
        search = search_orientations(fixed_scan.image, moving_scan.image, fixed_region, moving_region, seed)
    except (RegistrationError, RuntimeError) as error:
        # No foreground, or too few voxels for the coarse search (a single slice): nothing to
        # weigh, and nothing registration could do either.
        return StoredAlignment(True, f"not checked ({error})")
    centre = tuple(fixed_region.centroid)

    def offset(candidate) -> tuple[float, float]:
        """Degrees and millimetres between a pose and the images as stored, at the foreground centre."""
        transform = candidate.transform
        shift = float(np.linalg.norm(np.subtract(transform.TransformPoint(centre), centre)))
        return rotation_angle_between(transform, sitk.Euler3DTransform(), centre), shift

    stored = [c for c in search.candidates if offset(c)[0] <= ALIGNED_MAX_DEG and offset(c)[1] <= ALIGNED_MAX_MM]
    # Aligned unless another pose fits clearly better (by the confidence's own orientation margin):
    # a nearly symmetric body fits its mirror pose almost as well, which is no evidence of a turn.
    aligned = bool(stored) and stored[0].metric >= search.best.metric * (1.0 - MIN_MARGIN)
    angle, shift = offset(search.best)
    evidence = f"best pose {search.best.label}: {angle:.0f}° and {shift:.0f} mm from the images as stored"
    return StoredAlignment(aligned, evidence, search)
