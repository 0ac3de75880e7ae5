"""Registration presets: which transform stages run, at which resolutions, for how long.

A preset is a chain of stages, each started from the result of the one before: ``rigid``;
``affine`` = rigid then affine; ``bspline`` = rigid, affine, then a free-form B-spline. Every
stage maximises Mattes mutual information, which works for multimodal pairs (CT/MR, T1/T2)
because it only asks that intensities be *predictable* from each other, not equal.

Resolutions are given in millimetres, not shrink factors, so the same preset behaves alike on a
1 mm research MRI and on a 2 mm clinical CT: each level works on the image shrunk to about that
spacing (never finer than the image itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import SimpleITK as sitk

StageKind = Literal["rigid", "affine", "bspline"]


@dataclass(frozen=True)
class Stage:
    """One transform stage of a preset.

    ``level_spacings_mm``: working resolution of each multi-resolution level, coarse to fine.
    ``iterations``: optimiser iterations per level (an upper bound where the optimiser converges).
    ``samples_per_iteration``: elastix draws this many new random samples every iteration.
    ``samples_per_level``: SimpleITK draws one fixed random sample set per level, so it needs
    more of them for the same smoothness of the metric.
    ``bins``: histogram bins of the mutual information.
    ``grid_spacing_mm``: B-spline control-point spacing at the finest level (elastix doubles it
    at each coarser level; SimpleITK keeps it); ``None`` for linear stages.
    """

    kind: StageKind
    level_spacings_mm: tuple[float, ...]
    iterations: int
    samples_per_iteration: int
    samples_per_level: int
    bins: int = 32
    grid_spacing_mm: float | None = None


# The finest level is the native resolution of a typical MRI: one level coarser leaves a bias of
# a few tenths of a millimetre. Levels an image cannot resolve (1 mm on a 2 mm CT) are skipped.
RIGID = Stage("rigid", (8.0, 4.0, 2.0, 1.0), iterations=250, samples_per_iteration=3000, samples_per_level=20000)
AFFINE = Stage("affine", (4.0, 2.0), iterations=200, samples_per_iteration=3000, samples_per_level=20000)
# 20 mm control points follow smooth inter-session deformations (brain shift, posture, coil
# pressure) without the freedom to fold tissue. Many iterations at 1 mm: on BraTS T2 -> T1 with
# a known deformation, 200 iterations down to 2 mm removed only a third of rigid's error.
BSPLINE = Stage(
    "bspline",
    (4.0, 2.0, 1.0),
    iterations=500,
    samples_per_iteration=8000,
    samples_per_level=30000,
    grid_spacing_mm=20.0,
)

PRESETS: dict[str, tuple[Stage, ...]] = {
    "rigid": (RIGID,),
    "affine": (RIGID, AFFINE),
    "bspline": (RIGID, AFFINE, BSPLINE),
}


def shrink_factors(fixed: sitk.Image, moving: sitk.Image, stage: Stage) -> list[tuple[list[int], list[int]]]:
    """Per level, the integer (x, y, z) shrink factors that bring ``fixed`` and ``moving`` near
    that level's spacing (1 where an image is already coarser), as ``(fixed, moving)`` pairs.
    Levels that repeat the previous one are dropped: a 2 mm image has no distinct 1 mm level."""
    levels: list[tuple[list[int], list[int]]] = []
    for level in stage.level_spacings_mm:
        pair = tuple([max(1, round(level / spacing)) for spacing in image.GetSpacing()] for image in (fixed, moving))
        if not levels or pair != levels[-1]:
            levels.append(pair)
    return levels
