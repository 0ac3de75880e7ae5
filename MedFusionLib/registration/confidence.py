"""How much to trust a registration that passed the checks: a result a person can act on.

The checks of :mod:`.checks` refuse results that are impossible (no overlap, folding, mirroring,
no shared structure at all). A wrong pose can pass them all: a head matched upside down still
overlaps and still shares some structure. Three figures tell a right pose from a wrong one:

* ``mutual_information``: Mattes MI after registration (nats, on the 4 mm check grid). Aligned
  scans of one patient share structure; two unrelated scans share little.
* ``margin``: how far the winning pose of the orientation search
  (:mod:`~MedFusionLib.registration.orientation`) scored above the best pose that differs from it
  by more than 45°, relative to the winner: ``(best - runner_up) / best``. A right pose stands
  out; when every pose fits about as well, the search did not recognise the anatomy. When the
  user chose the start (``--init moments|geometry|none`` or a transform), the search still runs
  and the result's own score is compared with the other poses': negative when one fits better.
* ``overlap``: Dice coefficient of the two foregrounds (reference's, and the moving one's
  carried onto the reference grid), counted where both fields of view have data. The two
  bodies fill the same space when aligned.

A result is *doubtful* when any figure is below its threshold; :attr:`Confidence.summary` says
which, in one line for a status bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from MedFusionLib.registration.checks import Foreground, inside_field_of_view, mapped_points

# Thresholds, set from measurements (bench/bench_orientation.py prints the figures): right poses
# of BraTS T2 -> T1 (turned by axis rotations and obliques up to 40°; T2, FLAIR, T1c of two cases)
# and of the CT/MR phantoms score MI from 0.43, orientation margins from 8 %, overlaps from 0.85.
# Wrong results seen: another subject's MR against a CT (MI 0.23, margin -1 %), a 180° error
# kept by --init moments (margin -12 %), and oblique poses the search missed before its current
# settings (margins 3.9 % and 4.4 %, MI 0.36: only the margin told them from right ones).
MIN_MUTUAL_INFORMATION = 0.3
MIN_MARGIN = 0.06
MIN_OVERLAP = 0.6


@dataclass(frozen=True)
class Confidence:
    """The confidence of one registration (JSON-ready: plain floats, strings and bools).

    ``doubtful``: some figure is below its threshold. ``summary``: one line saying so, or that the
    result looks right. ``reasons``: one phrase per figure below threshold. ``pose``: the winning
    start of the orientation search in words (e.g. ``180° about z``), ``""`` without a search.
    ``runner_up_pose``: the pose that came second (``""`` without a search).
    """

    doubtful: bool
    summary: str
    mutual_information: float
    overlap: float
    margin: float | None = None
    pose: str = ""
    runner_up_pose: str = ""
    reasons: tuple[str, ...] = field(default_factory=tuple)


def foreground_overlap(
    transform: sitk.Transform, fixed_region: Foreground, moving_region: Foreground, moving: sitk.Image
) -> float:
    """Dice coefficient, in [0, 1], of the reference foreground and the moving foreground seen
    through ``transform``, over the reference's check grid where the moving image has data."""
    grid = fixed_region.grid
    moving_mask = sitk.GetImageFromArray(moving_region.mask.astype(np.uint8))
    moving_mask.CopyInformation(moving_region.grid)
    carried = sitk.GetArrayFromImage(sitk.Resample(moving_mask, grid, transform, sitk.sitkNearestNeighbor, 0)) > 0
    inside = inside_field_of_view(mapped_points(transform, fixed_region), moving)
    reference = fixed_region.mask & inside
    carried &= inside
    total = reference.sum() + carried.sum()
    return float(2.0 * (reference & carried).sum() / total) if total else 0.0


def assess(
    mutual_information: float,
    overlap: float,
    margin: float | None = None,
    pose: str = "",
    runner_up_pose: str = "",
) -> Confidence:
    """A :class:`Confidence` from the three figures (MI in positive nats)."""
    reasons = []
    if mutual_information < MIN_MUTUAL_INFORMATION:
        reasons.append(
            f"the images share little structure (mutual information {mutual_information:.2f}, "
            f"aligned scans of one patient score {MIN_MUTUAL_INFORMATION} or more)"
        )
    if margin is not None and margin < MIN_MARGIN:
        how = "better than" if margin < 0 else "almost as well as"
        reasons.append(
            f"another orientation ({runner_up_pose}) fits {how} the one found ({pose}): "
            f"margin {margin:.1%}, at least {MIN_MARGIN:.0%} expected"
        )
    if overlap < MIN_OVERLAP:
        reasons.append(f"the two bodies overlap poorly (Dice {overlap:.2f}, at least {MIN_OVERLAP} expected)")
    figures = f"MI {mutual_information:.2f}, overlap {overlap:.2f}" + (
        f", orientation margin {margin:.1%} ({pose} over {runner_up_pose})" if margin is not None else ""
    )
    if reasons:
        summary = (
            "registration doubtful: " + "; ".join(reasons) + ". Check the QA pictures (--qa DIR), that both "
            "images show the same patient and body region, or give an initial transform (--initial-transform)."
        )
    else:
        summary = f"registration looks right ({figures})"
    return Confidence(
        doubtful=bool(reasons),
        summary=summary,
        mutual_information=float(mutual_information),
        overlap=float(overlap),
        margin=None if margin is None else float(margin),
        pose=pose,
        runner_up_pose=runner_up_pose,
        reasons=tuple(reasons),
    )
