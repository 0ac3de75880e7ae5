"""Reading and writing medical images with their geometry, atomically.

:func:`read_image` and :func:`write_image` pick the format by the file extension
(case-insensitive):

* volumes (:mod:`~MedFusionLib.io.volumes`, SimpleITK): NIfTI (``.nii``, ``.nii.gz``), NRRD
  (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), with origin, spacing (mm) and direction;
* DICOM series (:mod:`~MedFusionLib.io.dicom`): a directory, or one file of the series; written
  by :func:`~MedFusionLib.io.dicom.write_dicom_series`;
* 2D pictures (:mod:`~MedFusionLib.io.pictures`, Pillow): PNG, JPEG, BMP, TIFF, without geometry.

Every write goes through :func:`MedFusionLib.core.files.atomic_output`: a failed, interrupted or
cancelled run leaves nothing half-written. Colour PET/SPECT pictures are fused on their Y channel
(:mod:`MedFusionLib.imaging.colour`).
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import PathLike, atomic_output
from MedFusionLib.io.dicom import DICOM_EXTENSIONS, has_dicom_preamble, read_dicom_directory, read_dicom_file
from MedFusionLib.io.pictures import PICTURE_FORMATS, picture_array, read_picture, write_picture
from MedFusionLib.io.volumes import VOLUME_FORMATS, file_extension, read_volume, write_volume

SUPPORTED_FORMATS_TEXT = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
    "a DICOM series (its directory, or one .dcm file of it), "
    "and 2D pictures: PNG (.png), JPEG (.jpg, .jpeg), BMP (.bmp), TIFF (.tif, .tiff)"
)


def read_image(path: PathLike, *, series_uid: str | None = None) -> sitk.Image:
    """Read an image file, a DICOM series directory or one file of a DICOM series.

    Args:
        path: a volume (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``), a 2D
            picture (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``), a directory
            holding a DICOM series, or one file of a DICOM series (any extension; the other
            files of its series are read from the same directory).
        series_uid: the SeriesInstanceUID to read when a DICOM directory holds several series
            (see :func:`~MedFusionLib.io.dicom.list_dicom_series`). Only meaningful for DICOM.

    Returns:
        The image with its origin (mm), spacing (mm) and direction. Volumes and DICOM keep
        the stored pixel type (DICOM with a non-trivial rescale slope/intercept is returned
        in real-world values, ``float64``). Pictures: scalar 2D ``uint8`` (or ``uint16``,
        ``int32``, ``float32`` for such TIFFs), or 2D with 3 ``uint8`` components for colour.

    Raises:
        InputError: the path is missing, of an unsupported type, unreadable, a directory
            without DICOM, or a DICOM directory with several series and no ``series_uid``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: no such file or directory. Check the spelling; relative paths start "
            f"at the current directory {Path.cwd()}."
        )
    if path.is_dir():
        return read_dicom_directory(path, series_uid)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): an interrupted copy or export? Copy or export it again.")
    extension = file_extension(path)
    is_dicom = extension in DICOM_EXTENSIONS or has_dicom_preamble(path)
    if series_uid is not None and not is_dicom:
        raise InputError(
            f"{path}: series_uid (--reference-series/--moving-series) selects a DICOM series, "
            "but this is not a DICOM file; leave it out or give a DICOM directory."
        )
    if extension in VOLUME_FORMATS:
        return read_volume(path, VOLUME_FORMATS[extension])
    if extension in PICTURE_FORMATS:
        return read_picture(path, PICTURE_FORMATS[extension])
    if is_dicom:
        return read_dicom_file(path, series_uid)
    raise InputError(
        f"{path}: unsupported file type {extension or '(no extension)'!r}. "
        f"Supported: {SUPPORTED_FORMATS_TEXT}. Convert the file to one of these."
    )


def write_image(image: sitk.Image, path: PathLike, *, overwrite: bool = False, compress: bool = True) -> None:
    """Write ``image`` to ``path`` atomically, in the format its extension names.

    Volumes (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) keep pixel type and
    geometry; ``compress`` gzips NRRD/MetaImage data (``.nii.gz`` is always compressed,
    ``.nii`` never). Pictures (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``) take
    a 2D image (or a volume of one slice), scalar or 3-component, and drop geometry:

    * 8-bit formats (PNG/JPEG/BMP), and colour in any picture format: float images are
      taken as [0, 1] and stored as ``round(255 * value)`` clipped to 0..255; integer images
      must already lie in 0..255.
    * TIFF scalar: ``uint8``/``uint16`` kept, other integers as ``int32``, floats as ``float32``.

    JPEG is lossy (quality 95, no chroma subsampling). A DICOM series is a directory: use
    :func:`~MedFusionLib.io.dicom.write_dicom_series`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        InputError: unsupported extension, an image the format cannot hold, or a write failure.
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"write_image expects a SimpleITK image, got {type(image).__name__}.")
    target = Path(path)
    extension = file_extension(target)
    if extension in DICOM_EXTENSIONS or extension == "":
        raise InputError(
            f"{target}: a DICOM series is written as a directory; use "
            "write_dicom_series(image, directory), or give a file extension such as .nii.gz."
        )
    if extension in VOLUME_FORMATS:
        write_volume(image, target, extension, overwrite=overwrite, compress=compress)
        return
    if extension in PICTURE_FORMATS:
        array = picture_array(image, target, extension)  # checked before anything is created
        with atomic_output(target, overwrite=overwrite) as temporary:
            write_picture(array, temporary, extension, compress)
        return
    raise InputError(
        f"{target}: unsupported output type {extension!r}. Supported: {SUPPORTED_FORMATS_TEXT}."
    )
