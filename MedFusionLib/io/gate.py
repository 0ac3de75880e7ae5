"""The gate every scan passes once: read, validate, prepare.

:func:`prepare_input` takes a path (any format :func:`~MedFusionLib.io.read_image` reads), a
SimpleITK image (the Python API, the Slicer logic and worker) or an already
:class:`PreparedScan` (returned as it is), and returns one :class:`PreparedScan`: a float32
scalar image with its geometry, whether it is a CT (its padding already raised to air), and its
body mask, made when first asked for and kept. Every entry point (``medfusion fuse`` with every
registration mode, ``medfusion register``, ``medfusion batch``, ``fuse_volumes``, ``register``,
the Slicer logic, worker and headless script) goes through it, and nothing after it checks or
converts the scan again.

What the gate refuses, each with one :class:`~MedFusionLib.core.errors.InputError` that names the
problem and the fix (``Testing/test_input_gate.py`` holds the table of cases):

* pixel types: complex, vectors of 2 or 4+ components, colour (3 components) where a scalar is
  needed (every 3D volume; 2D pictures when registered or functional), integers beyond float32's
  exact range (±2**24), floats beyond float32's range; boolean and float16 data arrive as
  unreadable files or types, refused by the readers;
* dimensions: not 2D or 3D (a 4D time series or multi-frame volume; a 4D image whose fourth size
  is 1 is taken as the 3D volume it holds), 2D where a volume is needed, a size of 1 along any
  axis (accepted: a 3D single slice, one axis of size 1, fused as it is without registration);
* geometry: spacing not finite, not positive or absurd (outside :data:`MIN_SPACING_MM` ..
  :data:`MAX_SPACING_MM`), a direction that is not finite, singular or sheared;
* values: NaN or infinite, or all equal.

The file-level checks (empty, truncated, NIfTI headers ITK would quietly change, DICOM series with
missing, duplicated or mixed slices) are the readers' (:mod:`.volumes`, :mod:`.dicom`).

The accepted colour case: a 2D RGB picture (pseudo-colour PET/SPECT) is fused on its luminance Y;
:attr:`PreparedScan.image` is that Y (0..255) and :attr:`PreparedScan.chroma` its Cb/Cr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.imaging.colour import rgb_to_ycbcr
from MedFusionLib.imaging.ct import AIR_HU, MODALITY_TAG, body_mask, looks_like_ct, without_padding

# Voxel sizes outside this range (mm) are a unit error, not a scan: metres or micrometres stored
# as millimetres. Clinical scans span about 0.05 mm (dental CBCT) to 10 mm (thick PET slabs).
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0
# Integers beyond this magnitude are not exact in float32, the type everything downstream uses.
FLOAT32_EXACT_INTEGER = 2**24
# How far a direction matrix may stray from orthonormal (rounding in headers stays near 1e-6).
DIRECTION_TOLERANCE = 1e-3
_EIGHT_BIT = (sitk.sitkUInt8, sitk.sitkVectorUInt8)
_COMPLEX = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
_AXES = "xyzt"

ScanSource = str | PathLike | sitk.Image


@dataclass(eq=False)
class PreparedScan:
    """One scan as everything after the gate uses it.

    ``image``: float32, scalar, 2D or 3D, with the scan's origin, spacing (mm) and direction; a
    CT's values below :data:`~MedFusionLib.imaging.ct.AIR_HU` (padding) raised to it; a colour
    picture's luminance Y in 0..255. ``role``: ``reference`` or ``moving``, for messages.
    ``source``: where it came from, in words. ``modality``: the DICOM Modality when the scan
    carries it, else ``""``. ``is_ct``: recognised as a CT in HU
    (:func:`~MedFusionLib.imaging.ct.looks_like_ct`). ``eight_bit``: stored as 8-bit display
    grey levels (a picture), mapped to [0, 1] by 1/255 rather than by percentiles. ``chroma``:
    ``(H, W, 2)`` float32 Cb/Cr of a colour picture, else ``None``. ``colour``: the colour
    picture as read (RGB ``uint8``), else ``None``.
    """

    image: sitk.Image
    role: str
    source: str
    modality: str = ""
    is_ct: bool = False
    eight_bit: bool = False
    chroma: np.ndarray | None = None
    colour: sitk.Image | None = None
    _body: sitk.Image | None = field(default=None, repr=False)

    @property
    def dimension(self) -> int:
        return self.image.GetDimension()

    def body_mask(self) -> sitk.Image | None:
        """A CT's body (uint8, 1 = body; :func:`~MedFusionLib.imaging.ct.body_mask`) on the coarse
        grid it is worked out on (about 2 mm), made on the first call and kept; ``None`` for a scan
        that is not a CT."""
        if not self.is_ct:
            return None
        if self._body is None:
            self._body = body_mask(self.image, on_image_grid=False)
        return self._body

    def body_mask_on(self, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray | None:
        """The body mask resampled onto ``grid`` (``transform``: ``grid`` points → this scan's
        points; identity when ``None``), as a ``uint8`` array ``[z, y, x]``; ``None`` for a scan
        that is not a CT."""
        mask = self.body_mask()
        if mask is None:
            return None
        transform = transform if transform is not None else sitk.Transform()
        return sitk.GetArrayFromImage(sitk.Resample(mask, grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    @property
    def outside_value(self) -> float | None:
        """What lies outside the scan's field of view when it is resampled: air for a CT, else
        ``None`` (its minimum)."""
        return AIR_HU if self.is_ct else None


def prepare_input(
    source: ScanSource | PreparedScan,
    role: str,
    *,
    series_uid: str | None = None,
    volume: bool = False,
    scalar: bool = False,
) -> PreparedScan:
    """Read (if a path), validate and prepare one scan; see the module's docstring for the rules.

    Args:
        source: a path, a SimpleITK image, or a :class:`PreparedScan` (returned unchanged after
            the ``volume``/``scalar`` requirements are checked).
        role: ``reference`` or ``moving`` (or another word naming the input), for messages.
        series_uid: the DICOM series to read from a directory holding several.
        volume: a 3D volume is needed (registration): 2D pictures are refused.
        scalar: a scalar image is needed (registration, functional volumes): colour is refused.

    Raises:
        InputError: the scan breaks one of the gate's rules; the message names the rule and the fix.
    """
    if isinstance(source, PreparedScan):
        _require_use(source.image, source.colour is not None, source.role, source.source, volume, scalar)
        return source
    if isinstance(source, sitk.Image):
        image, where = source, f"the {role} image"
    elif isinstance(source, (str, PathLike)):
        from MedFusionLib.io import read_image

        image, where = read_image(source, series_uid=series_uid), str(source)
    else:
        raise InputError(
            f"the {role} input must be a path or a SimpleITK image, not {type(source).__name__}; "
            "read arrays into a SimpleITK image with their spacing, origin and direction first"
        )
    image = _as_at_most_3d(image, role, where)
    _require_pixels(image, role, where)
    colour = image.GetNumberOfComponentsPerPixel() == 3
    _require_geometry(image, role, where)
    _require_use(image, colour, role, where, volume, scalar)
    modality = image.GetMetaData(MODALITY_TAG).strip().upper() if image.HasMetaDataKey(MODALITY_TAG) else ""
    eight_bit = image.GetPixelID() in _EIGHT_BIT
    if colour:
        return _prepared_colour(image, role, where, modality)
    _require_float32_range(image, role, where)
    if not np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer):  # integers are always finite
        _require_finite(image, role, where)  # before a CT's clamp, which would hide infinities
    is_ct = image.GetDimension() == 3 and looks_like_ct(image)  # on the stored type: 8-bit never counts
    # One float32 copy, made in one pass (a 512×512×400 CT is 400 MB in float32).
    if is_ct:
        floating = without_padding(image)
    else:
        floating = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    _require_not_constant(floating, role, where)
    return PreparedScan(floating, role, where, modality, is_ct, eight_bit)


def _as_at_most_3d(image: sitk.Image, role: str, where: str) -> sitk.Image:
    """A 4D image whose fourth size is 1 as the 3D volume it holds; other dimensions as they are
    when 2D or 3D, else refused."""
    dimension, size = image.GetDimension(), image.GetSize()
    if dimension == 4 and size[3] == 1:
        return image[:, :, :, 0]  # keeps origin, spacing and direction of the first three axes
    if dimension == 4:
        raise InputError(
            f"{where} ({role}) is 4D with {size[3]} frames of {size[0]}×{size[1]}×{size[2]} (a time series, "
            "or a multi-frame PET/SPECT): MedFusion fuses one 3D volume. Extract the frame to fuse (e.g. a "
            "static or summed frame) and give that volume."
        )
    if dimension not in (2, 3):
        raise InputError(
            f"{where} ({role}) is {dimension}D of size {size}: MedFusion fuses 2D pictures and 3D volumes. "
            "Extract one 3D volume (or one 2D slice) first."
        )
    return image


def _require_pixels(image: sitk.Image, role: str, where: str) -> None:
    """Refuse complex voxels and vectors that are neither scalar nor RGB."""
    if image.GetPixelID() in _COMPLEX:
        raise InputError(
            f"{where} ({role}) holds complex voxels ({image.GetPixelIDTypeAsString()}), e.g. raw MR data: "
            "MedFusion fuses real-valued images. Take the magnitude first (e.g. numpy.abs, or "
            "sitk.ComplexToModulus) and save that."
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components not in (1, 3):
        raise InputError(
            f"{where} ({role}) has {components} components per voxel (a vector, complex stored as two "
            "channels, or RGBA): MedFusion fuses grey-scale images, or RGB 2D pictures. Select one "
            "channel (or the magnitude), or save an RGB picture without alpha."
        )


def _require_use(image: sitk.Image, colour: bool, role: str, where: str, volume: bool, scalar: bool) -> None:
    """The requirements of the step that asked: a volume (3D, no single slice), a scalar image,
    and no colour volume."""
    dimension, size = image.GetDimension(), image.GetSize()
    if volume and dimension == 3 and min(size) < 2:
        raise InputError(
            f"{where} ({role}) has size {size}: a single slice, but registration needs a volume "
            "(fuse it as it is: --registration none)."
        )
    if volume and dimension != 3:
        raise InputError(
            f"{where} ({role}) is a 2D picture, but a 3D volume is needed here (registration works on "
            "volumes; 2D pictures are fused as they are, already aligned: --registration none)."
        )
    if colour and (dimension == 3 or scalar):
        what = "a colour (RGB) volume" if dimension == 3 else "a colour (RGB) picture"
        raise InputError(
            f"{where} ({role}) is {what}, but a grey-scale image is needed here"
            + (" (colour is taken only from 2D pictures fused as they are)" if dimension == 2 else "")
            + ". Give the grey-scale scan (for PET/SPECT: its values, with --functional for colour), "
            "or convert it to grey-scale first."
        )


def _require_geometry(image: sitk.Image, role: str, where: str) -> None:
    """Refuse a size of 1 along an axis (but one of a 3D image: a single slice, fused as it is),
    unusable spacings and directions."""
    size = image.GetSize()
    flat = [_AXES[axis] for axis, length in enumerate(size) if length < 2]
    if flat and not (image.GetDimension() == 3 and len(flat) == 1):
        raise InputError(
            f"{where} ({role}) has size {size}: only one voxel along {', '.join(flat)}, so it is not a "
            f"{image.GetDimension()}D image. Give the whole volume or picture."
        )
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(
            f"{where} ({role}) has voxel spacing {tuple(float(v) for v in spacing)} mm; each must be a positive "
            "finite number. "
            "Fix the file's header (or image.SetSpacing) with the scanner's voxel size."
        )
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise InputError(
            f"{where} ({role}) has voxel spacing {tuple(float(v) for v in spacing)} mm, outside "
            f"{MIN_SPACING_MM}..{MAX_SPACING_MM} mm: a unit error (metres or micrometres stored as millimetres)? "
            "Fix the spacing in the header to millimetres."
        )
    dimension = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    if not np.isfinite(direction).all() or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(
            f"{where} ({role}) has a singular or non-finite direction matrix {tuple(map(float, direction.ravel()))}: "
            "its voxels have no orientation in space. Fix the file's header (or image.SetDirection) with the "
            "scan's axes."
        )
    if np.abs(direction.T @ direction - np.eye(dimension)).max() > DIRECTION_TOLERANCE:
        raise InputError(
            f"{where} ({role}) has a sheared direction matrix (its axes are not perpendicular unit vectors): "
            "registration and resampling assume an orthonormal grid. Resample it onto one first (e.g. in "
            "3D Slicer's Resample Scalar Volume, or sitk.Resample onto an orthonormal reference)."
        )


def _require_float32_range(image: sitk.Image, role: str, where: str) -> None:
    """Refuse integers that float32 (what registration and fusion compute in) cannot hold exactly,
    and floats beyond its range."""
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize >= 4:
        low, high = int(values.min()), int(values.max())
        if max(abs(low), abs(high)) > FLOAT32_EXACT_INTEGER:
            raise InputError(
                f"{where} ({role}) holds {values.dtype} values from {low} to {high}, beyond ±2**24, which "
                "32-bit floats (what registration and fusion compute in) cannot hold exactly. Rescale it into "
                "that range (or store it as float32) first."
            )
    if values.dtype == np.float64:
        finite = values[np.isfinite(values)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise InputError(
                f"{where} ({role}) holds float64 values up to {np.abs(finite).max():.3g}, beyond what 32-bit floats "
                "hold. Rescale it first."
            )


def _require_finite(image: sitk.Image, role: str, where: str) -> None:
    """Refuse NaN/Inf voxels."""
    finite = np.isfinite(sitk.GetArrayViewFromImage(image))
    if not finite.all():
        raise InputError(
            f"{where} ({role}) contains {int(finite.size - finite.sum())} NaN or infinite voxels; fix or mask "
            "them in the source image (e.g. replace them with the background value) and retry."
        )


def _require_not_constant(image: sitk.Image, role: str, where: str) -> None:
    """Refuse an image whose voxels are all equal: nothing to fuse or register."""
    values = sitk.GetArrayViewFromImage(image)
    if values.min() == values.max():
        raise InputError(
            f"{where} ({role}) is constant (every voxel is {values.flat[0]:g}): there is nothing to fuse or "
            "register. Check that the right file or series was loaded."
        )


def _prepared_colour(image: sitk.Image, role: str, where: str, modality: str) -> PreparedScan:
    """A 2D RGB picture: its luminance Y (float32, 0..255) as the image, and its Cb/Cr."""
    rgb = sitk.GetArrayFromImage(image)
    if rgb.dtype != np.uint8:
        raise InputError(
            f"{where} ({role}) is an RGB picture of {rgb.dtype} values; colour is taken as 8-bit RGB. "
            "Save it as an 8-bit RGB picture, or as grey-scale."
        )
    ycbcr = rgb_to_ycbcr(rgb.astype(np.float32))
    luminance = sitk.GetImageFromArray(np.ascontiguousarray(ycbcr[..., 0], dtype=np.float32))
    luminance.CopyInformation(image)
    _require_not_constant(luminance, role, where)
    return PreparedScan(luminance, role, where, modality, False, True, np.ascontiguousarray(ycbcr[..., 1:]), image)
