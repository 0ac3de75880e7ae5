"""Where the optimiser starts: bringing two scans into rough correspondence first.

Scanners put their coordinate origin in different places, so two scans of one head can be
centimetres apart in physical space. Optimisers only search nearby, so the registration starts
from a translation that matches the two foreground centres (``moments``) or the two image
centres (``geometry``), or from a transform the user gives.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import INIT_CHOICES
from MedFusionLib.core.errors import InputError, RegistrationError
from MedFusionLib.registration.checks import Foreground, check_overlap

INITIALIZERS = INIT_CHOICES


def _image_centre(image: sitk.Image) -> np.ndarray:
    corner = [(size - 1) / 2.0 for size in image.GetSize()]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(corner))


def _corners(image: sitk.Image) -> np.ndarray:
    """The 2^D corners of the image's field of view (voxel edges), mm."""
    dimension = image.GetDimension()
    extremes = [(-0.5, size - 0.5) for size in image.GetSize()]
    grid = np.stack(np.meshgrid(*extremes, indexing="ij"), axis=-1).reshape(-1, dimension)
    return np.asarray([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in grid])


def fields_of_view_intersect(fixed: sitk.Image, moving: sitk.Image) -> bool:
    """Whether the physical bounding boxes of the two images intersect at all."""
    fixed_corners, moving_corners = _corners(fixed), _corners(moving)
    return bool(
        np.all(fixed_corners.max(axis=0) >= moving_corners.min(axis=0))
        and np.all(moving_corners.max(axis=0) >= fixed_corners.min(axis=0))
    )


def initial_alignment(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_region: Foreground,
    moving_region: Foreground,
    initializer: str | sitk.Transform,
) -> sitk.Transform:
    """The transform (reference → moving points) the registration starts from.

    ``initializer``:
        ``"auto"``: ``"moments"``, but only for images whose fields of view intersect in physical
            space; scans that share no space at all are more often the wrong pair than the same
            anatomy with unrelated coordinates, so they raise :class:`RegistrationError`.
        ``"moments"``: translate so the foreground centres of mass coincide.
        ``"geometry"``: translate so the image centres coincide.
        ``"none"``: the images as they lie in physical space (identity).
        a ``sitk.Transform``: used as given (reference → moving points), e.g. a Slicer transform.

    Raises:
        RegistrationError: too little of the reference foreground lands in the moving image.
    """
    dimension = fixed.GetDimension()
    if isinstance(initializer, sitk.Transform):
        start: sitk.Transform = initializer
    elif initializer in ("auto", "moments"):
        if initializer == "auto" and not fields_of_view_intersect(fixed, moving):
            raise RegistrationError(
                "the reference and moving images share no physical space (their fields of view do not "
                "intersect), so they are probably not the same anatomy of the same patient. If they are "
                "(e.g. converted by tools that set unrelated origins), pass initializer='moments' or "
                "'geometry' (--init) to align their centres first, or provide an initial transform."
            )
        offset = np.asarray(moving_region.centroid) - np.asarray(fixed_region.centroid)
        start = sitk.TranslationTransform(dimension, tuple(offset))
    elif initializer == "geometry":
        start = sitk.TranslationTransform(dimension, tuple(_image_centre(moving) - _image_centre(fixed)))
    elif initializer == "none":
        start = sitk.TranslationTransform(dimension)
    else:
        raise InputError(
            f"unknown initializer {initializer!r}; choose one of {', '.join(INITIALIZERS)} or give a transform"
        )
    check_overlap(start, fixed_region, moving, "at the starting alignment")
    return start
