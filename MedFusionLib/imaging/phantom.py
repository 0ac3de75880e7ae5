"""A procedural head phantom: the same anatomy seen by a CT and by a T2-weighted MRI.

The anatomy is analytic (nested ellipsoids: scalp, skull, CSF, grey and white matter, two
ventricles, a lesion), evaluated at the physical position of every voxel. That makes it exact to
render the second modality on a grid of its own (other spacing and field of view, as from another
scanner) and with a known rigid misalignment: the demo's registration then has a ground truth.
All coordinates are LPS millimetres with the head centred on the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# Tissue label -> (CT value in HU, T2-like MR value in arbitrary units).
_TISSUES = {
    "air": (-1000.0, 0.0),
    "scalp": (30.0, 420.0),
    "skull": (1100.0, 40.0),
    "csf": (8.0, 900.0),
    "grey": (40.0, 560.0),
    "white": (27.0, 380.0),
    "ventricle": (6.0, 950.0),
    "lesion": (22.0, 780.0),
    "soft": (45.0, 300.0),
    "bone": (700.0, 60.0),
    "eye": (10.0, 950.0),
}

# Ellipsoids (centre, semi-axes in mm, folding), later entries overwriting earlier ones. Folding
# is the relative amplitude of a wavy boundary, so that the grey/white interface has gyrus-like
# folds that a registration can lock onto and a fusion must keep sharp.
_ANATOMY = (
    ("scalp", (0.0, 0.0, 0.0), (74.0, 92.0, 82.0), 0.0),
    ("skull", (0.0, 0.0, 0.0), (69.0, 87.0, 77.0), 0.0),
    ("csf", (0.0, 0.0, 2.0), (63.0, 81.0, 71.0), 0.0),
    ("grey", (0.0, 0.0, 2.0), (60.0, 78.0, 68.0), 0.02),
    ("white", (0.0, 2.0, 6.0), (49.0, 66.0, 54.0), 0.07),
    ("ventricle", (-9.0, 4.0, 12.0), (5.0, 20.0, 9.0), 0.0),
    ("ventricle", (9.0, 4.0, 12.0), (5.0, 20.0, 9.0), 0.0),
    ("lesion", (26.0, -22.0, 24.0), (11.0, 11.0, 11.0), 0.0),
)


# A face, eyes and a neck with its spine: a real head is not symmetric front to back or top to
# bottom, and an orientation search must have that to tell a patient turned 180° from one lying
# as the reference does. Used by :func:`make_clinical_pair`; the face and neck come first so the
# head overwrites them, the eyes last.
_FACE_AND_NECK = (
    ("soft", (0.0, -52.0, -40.0), (50.0, 40.0, 36.0), 0.0),
    ("soft", (0.0, 12.0, -95.0), (42.0, 42.0, 55.0), 0.0),
    ("bone", (0.0, 24.0, -100.0), (11.0, 11.0, 50.0), 0.0),
)
_EYES = (
    ("eye", (-30.0, -80.0, -22.0), (12.0, 11.0, 11.0), 0.0),
    ("eye", (30.0, -80.0, -22.0), (12.0, 11.0, 11.0), 0.0),
)
CLINICAL_ANATOMY = _FACE_AND_NECK + _ANATOMY + _EYES


# Plane waves (unit direction, phase) summed into a smooth 3D field that folds the boundaries:
# fixed, so the anatomy is the same in every run and for every grid.
_FOLD_RNG = np.random.default_rng(20261125)
_FOLD_DIRECTIONS = _FOLD_RNG.normal(size=(12, 3))
_FOLD_DIRECTIONS /= np.linalg.norm(_FOLD_DIRECTIONS, axis=1, keepdims=True)
_FOLD_PHASES = _FOLD_RNG.uniform(0.0, 2.0 * np.pi, size=12)
_FOLD_WAVELENGTH_MM = 22.0


def _inside(points: np.ndarray, centre, semi_axes, folding: float) -> np.ndarray:
    """Which points (``(3, z, y, x)`` mm) lie inside the ellipsoid, its surface folded by ``folding``."""
    radius = np.zeros(points.shape[1:], dtype=np.float32)
    for axis in range(3):  # in place, one coordinate at a time: several times faster than broadcasting
        term = points[axis] - np.float32(centre[axis])
        term *= np.float32(1.0 / semi_axes[axis])
        term *= term
        radius += term
    np.sqrt(radius, out=radius)
    inside = radius <= 1.0
    if not folding:
        return inside
    # The folds (clipped at 3 standard deviations) move the surface by at most 3 * folding:
    # evaluate them only in that shell.
    shell = np.abs(radius - 1.0) <= 3.0 * folding
    phases = points[:, shell].T @ _FOLD_DIRECTIONS.T * (2.0 * np.pi / _FOLD_WAVELENGTH_MM) + _FOLD_PHASES
    waves = np.clip(np.sin(phases).sum(axis=-1) / np.sqrt(len(_FOLD_PHASES) / 2.0), -3.0, 3.0)
    inside[shell] = radius[shell] <= 1.0 + folding * waves
    return inside


@dataclass(frozen=True)
class HeadPhantom:
    """A CT-like and an MR-like image of one head.

    ``ct``: float32 HU on the reference grid. ``mr``: float32, T2-like contrast (CSF bright, bone
    dark). ``reference_to_moving`` maps CT physical points to the MR physical points that show
    the same anatomy (ITK's resampling convention); identity when the pair is aligned.
    """

    ct: sitk.Image
    mr: sitk.Image
    reference_to_moving: sitk.Euler3DTransform


def rigid_motion(
    rotation_deg: tuple[float, float, float], translation_mm: tuple[float, float, float]
) -> sitk.Euler3DTransform:
    """A rigid transform about the head centre (the origin): rotations about x, y, z in degrees."""
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*np.deg2rad(rotation_deg))
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    return transform


def _grid(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> sitk.Image:
    """An empty float32 image of ``size`` voxels, centred on the origin, identity direction."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([-(n - 1) * d / 2.0 for n, d in zip(size, spacing)])
    return image


def _physical_points(grid: sitk.Image, world_to_anatomy: sitk.Euler3DTransform | None = None) -> np.ndarray:
    """Physical LPS position (mm) of every voxel, float32 ``(3, z, y, x)``; mapped through
    ``world_to_anatomy`` when given."""
    size = grid.GetSize()
    index = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in reversed(size)), indexing="ij")[::-1])
    matrix = np.asarray(grid.GetDirection()).reshape(3, 3) * np.asarray(grid.GetSpacing())
    offset = np.asarray(grid.GetOrigin())
    if world_to_anatomy is not None:
        rotation = np.asarray(world_to_anatomy.GetMatrix()).reshape(3, 3)
        centre = np.asarray(world_to_anatomy.GetCenter())
        matrix = rotation @ matrix
        offset = rotation @ (offset - centre) + centre + np.asarray(world_to_anatomy.GetTranslation())
    points = np.tensordot(matrix.astype(np.float32), index, axes=1)
    points += offset.astype(np.float32)[:, None, None, None]
    return points


def _render(
    grid: sitk.Image,
    modality: int,
    world_to_anatomy: sitk.Euler3DTransform | None,
    rng: np.random.Generator,
    anatomy: tuple = _ANATOMY,
) -> sitk.Image:
    """Evaluate ``anatomy`` on ``grid``; ``modality`` 0 = CT, 1 = MR."""
    points = _physical_points(grid, world_to_anatomy)
    values = np.full(points.shape[1:], _TISSUES["air"][modality], dtype=np.float32)
    for tissue, centre, semi_axes, folding in anatomy:
        values[_inside(points, centre, semi_axes, folding)] = _TISSUES[tissue][modality]
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    # Partial-volume blur of about one voxel, as a real scanner's point-spread function gives.
    image = sitk.SmoothingRecursiveGaussian(image, [0.6 * s for s in grid.GetSpacing()])
    values = sitk.GetArrayFromImage(image)
    if modality == 0:
        values = values + rng.normal(0.0, 6.0, values.shape)  # quantum noise, HU
    else:
        # A smooth receive-coil bias across the head, then magnitude (Rician) noise.
        bias = 1.0 + 0.12 * points[0] / 80.0 - 0.08 * points[2] / 80.0
        real = values * bias + rng.normal(0.0, 12.0, values.shape)
        values = np.hypot(real, rng.normal(0.0, 12.0, values.shape))
    result = sitk.GetImageFromArray(values.astype(np.float32))
    result.CopyInformation(grid)
    return result


DEMO_MISALIGNMENT = rigid_motion((4.0, -3.0, 7.0), (6.0, -9.0, 5.0))


def make_head_phantom(
    size: tuple[int, int, int] = (128, 160, 112),
    spacing: tuple[float, float, float] = (1.25, 1.25, 1.5),
    misalignment: sitk.Euler3DTransform | None = None,
    moving_spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    face: bool | None = None,
) -> HeadPhantom:
    """Render a CT/MR pair of the phantom head.

    Args:
        size, spacing: the CT (reference) grid, ``(x, y, z)`` voxels and mm.
        misalignment: ``None`` puts the MR on exactly the CT grid, aligned (a fusion-ready pair).
            A rigid transform (e.g. :data:`DEMO_MISALIGNMENT`, :func:`rigid_motion`) moves the
            head in the MR and renders it on its own grid (``moving_spacing``, default 1×1×2 mm,
            a field of view that covers the CT's), like a scan from another session.
        seed: noise seed; the same arguments give the same images.
        face: add the face, eyes and neck of :data:`CLINICAL_ANATOMY`. Without them the head is
            nearly symmetric, so a pose turned 180° fits it almost as well and the orientation
            search of a registration cannot tell them apart (and says so). ``None`` (default):
            with a face when ``misalignment`` is given (a pair to register), without for an
            aligned pair (a pair to fuse, as before).
    """
    rng = np.random.default_rng(seed)
    anatomy = CLINICAL_ANATOMY if (face if face is not None else misalignment is not None) else _ANATOMY
    reference_grid = _grid(size, spacing)
    ct = _render(reference_grid, 0, None, rng, anatomy)
    if misalignment is None:
        return HeadPhantom(ct, _render(reference_grid, 1, None, rng, anatomy), sitk.Euler3DTransform())
    moving_spacing = moving_spacing or (1.0, 1.0, 2.0)
    extent = np.asarray(size) * np.asarray(spacing) * 1.1
    moving_grid = _grid(tuple(int(np.ceil(e / s)) for e, s in zip(extent, moving_spacing)), moving_spacing)
    # The MR voxel at physical point q shows anatomy at misalignment⁻¹(q); the inverse is what
    # the renderer needs, and `misalignment` itself is the reference-to-moving map.
    mr = _render(moving_grid, 1, misalignment.GetInverse(), rng, anatomy)
    return HeadPhantom(ct, mr, misalignment)


# The MR of the clinical pair: the patient turned 180° about the head-foot axis (prone in one
# scanner, supine in the other), tilted a little, 30 mm off.
CLINICAL_MISALIGNMENT = rigid_motion((4.0, 0.0, 180.0), (18.0, -12.0, 21.0))
# CT padding outside the reconstruction circle, and the table's carbon-fibre top, in HU.
CT_PADDING_HU = -2048
TABLE_HU = 250.0


def make_clinical_pair(
    size: tuple[int, int, int] = (160, 160, 112),
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    misalignment: sitk.Euler3DTransform | None = CLINICAL_MISALIGNMENT,
    moving_spacing: tuple[float, float, float] = (1.2, 1.2, 3.0),
    seed: int = 0,
) -> HeadPhantom:
    """A CT and an MR of the phantom head as two real scanners give them.

    ``ct``: int16 HU on ``size``/``spacing`` (``(x, y, z)``, identity direction, centred on the
    head), with the head's face and neck, :data:`CT_PADDING_HU` outside the axial reconstruction
    circle (radius 48 % of the in-plane field of view) and the patient table (a 4 mm plate of
    :data:`TABLE_HU`, curved, behind the head). ``mr``: int16 T2-like, on its own grid
    (``moving_spacing``; thick slices) centred on the moved head, the head moved by
    ``misalignment`` (default :data:`CLINICAL_MISALIGNMENT`: turned 180°, shifted 30 mm);
    ``reference_to_moving`` is that motion.
    """
    rng = np.random.default_rng(seed)
    misalignment = misalignment if misalignment is not None else sitk.Euler3DTransform()
    reference_grid = _grid(size, spacing)
    ct = _render_in_slabs(reference_grid, 0, None, rng)
    x = (np.arange(size[0]) - (size[0] - 1) / 2.0) * spacing[0]
    y = (np.arange(size[1]) - (size[1] - 1) / 2.0) * spacing[1]
    # The table: a plate behind the head (posterior, +y; the head ends at 92 mm, a pad between), curved
    # like a cradle.
    top = 106.0 + x**2 / 900.0
    table = (y[:, None] >= top[None, :]) & (y[:, None] <= top[None, :] + 4.0)
    ct[:, table] = TABLE_HU + rng.normal(0.0, 6.0, (ct.shape[0], int(table.sum())))
    radius = 0.48 * min(size[0] * spacing[0], size[1] * spacing[1])
    outside = x[None, :] ** 2 + y[:, None] ** 2 > radius**2
    ct[:, outside] = CT_PADDING_HU
    ct_image = sitk.GetImageFromArray(np.rint(ct).astype(np.int16))
    ct_image.CopyInformation(reference_grid)

    extent = np.asarray(size) * np.asarray(spacing)
    moving_size = tuple(int(np.ceil(e / s)) for e, s in zip(extent, moving_spacing))
    moving_grid = _grid(moving_size, moving_spacing)
    moving_grid.SetOrigin(
        tuple(np.asarray(moving_grid.GetOrigin()) + np.asarray(misalignment.TransformPoint((0.0, 0.0, 0.0))))
    )
    mr_image = sitk.GetImageFromArray(
        np.rint(_render_in_slabs(moving_grid, 1, misalignment.GetInverse(), rng)).astype(np.int16)
    )
    mr_image.CopyInformation(moving_grid)
    return HeadPhantom(ct_image, mr_image, misalignment)


# Slices rendered at a time, and the extra slices each side that the partial-volume blur needs:
# a 512×512×400 pair then needs a few hundred MB beyond its own voxels, not gigabytes.
_SLAB_SLICES = 32
_SLAB_MARGIN = 3


def _render_in_slabs(
    grid: sitk.Image, modality: int, world_to_anatomy: sitk.Euler3DTransform | None, rng: np.random.Generator
) -> np.ndarray:
    """:func:`_render` of :data:`CLINICAL_ANATOMY` on ``grid``, slab by slab; float32 ``[z, y, x]``."""
    size = grid.GetSize()
    values = np.empty(size[::-1], dtype=np.float32)
    for start in range(0, size[2], _SLAB_SLICES):
        first, stop = max(0, start - _SLAB_MARGIN), min(size[2], start + _SLAB_SLICES + _SLAB_MARGIN)
        slab = sitk.Image([size[0], size[1], stop - first], sitk.sitkFloat32)
        slab.SetSpacing(grid.GetSpacing())
        slab.SetDirection(grid.GetDirection())
        slab.SetOrigin(grid.TransformIndexToPhysicalPoint((0, 0, first)))
        rendered = sitk.GetArrayFromImage(_render(slab, modality, world_to_anatomy, rng, CLINICAL_ANATOMY))
        end = min(size[2], start + _SLAB_SLICES)
        values[start:end] = rendered[start - first : end - first]
    return values
