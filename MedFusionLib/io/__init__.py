"""Reading and writing medical images with their geometry, atomically.

Formats (chosen by the file extension, case-insensitive):

* volumes, read and written with SimpleITK: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
  ``.nhdr``), MetaImage (``.mha``, ``.mhd``). Origin, spacing (mm) and direction travel with
  the image.
* DICOM series: a directory, or one file of the series. SimpleITK's GDCM series reader gives
  pixels and geometry (slices sorted by position); pydicom inspects headers (series UID,
  description, modality) to list series and to explain problems. Written by
  :func:`write_dicom_series`.
* 2D pictures, read and written with Pillow: PNG, JPEG, BMP, TIFF. They carry no geometry
  (spacing 1, origin 0, identity direction on reading; geometry is dropped on writing).
  Grayscale gives a scalar image; colour gives a 3-component ``uint8`` image, except that a
  colour picture whose three channels are equal is returned as scalar grayscale.

Every write goes through :func:`atomic_output` (or :func:`atomic_output_directory`): the data
are written under a hidden temporary name next to the target and renamed onto it only when
complete, so a failed, interrupted or cancelled run leaves nothing half-written. A process
killed with SIGKILL cannot clean up; its leftovers are hidden entries named
``.<target name>.tmp-<hex>``.

Colour PET/SPECT pictures are fused the standard way: :func:`rgb_to_ycbcr`, fuse the Y channel
with the grayscale partner, then :func:`ycbcr_to_rgb` with the picture's own Cb and Cr.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import os
import secrets
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError, OutputExistsError
from MedFusionLib.core.resources import require_memory

PathLike = str | os.PathLike

VOLUME_FORMATS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
# ITK's readers pick an ImageIO by extension, case-sensitively; naming it reads "F.MHA" too.
_ITK_IMAGE_IO = {"NIfTI": "NiftiImageIO", "NRRD": "NrrdImageIO", "MetaImage": "MetaImageIO"}
PICTURE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
# Pictures in these formats hold 8 bits per channel; TIFF also holds 16-bit and float data.
EIGHT_BIT_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")

SUPPORTED_FORMATS_TEXT = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
    "a DICOM series (its directory, or one .dcm file of it), "
    "and 2D pictures: PNG (.png), JPEG (.jpg, .jpeg), BMP (.bmp), TIFF (.tif, .tiff)"
)


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (weights cards, batch completion records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading


def read_image(path: PathLike, *, series_uid: str | None = None) -> sitk.Image:
    """Read an image file, a DICOM series directory or one file of a DICOM series.

    Args:
        path: a volume (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``), a 2D
            picture (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``), a directory
            holding a DICOM series, or one file of a DICOM series (any extension; the other
            files of its series are read from the same directory).
        series_uid: the SeriesInstanceUID to read when a DICOM directory holds several series
            (see :func:`list_dicom_series`). Only meaningful for DICOM.

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
        return _read_dicom_directory(path, series_uid)
    extension = _extension(path)
    is_dicom = extension in DICOM_EXTENSIONS or _has_dicom_preamble(path)
    if series_uid is not None and not is_dicom:
        raise InputError(
            f"{path}: series_uid (--reference-series/--moving-series) selects a DICOM series, "
            "but this is not a DICOM file; leave it out or give a DICOM directory."
        )
    if extension in VOLUME_FORMATS:
        return _read_volume(path, VOLUME_FORMATS[extension])
    if extension in PICTURE_FORMATS:
        return _read_picture(path, PICTURE_FORMATS[extension])
    if is_dicom:
        return _read_dicom_file(path, series_uid)
    raise InputError(
        f"{path}: unsupported file type {extension or '(no extension)'!r}. "
        f"Supported: {SUPPORTED_FORMATS_TEXT}. Convert the file to one of these."
    )


def _extension(path: Path) -> str:
    """The lower-case extension, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _itk_reason(error: RuntimeError) -> str:
    """The useful last line of a SimpleITK exception, without source-file noise."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    return reason.removeprefix("sitk::ERROR:").strip()


def _read_volume(path: Path, format_name: str) -> sitk.Image:
    if format_name == "NIfTI":
        _require_complete_nifti(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if format_name in _ITK_IMAGE_IO:
        reader.SetImageIO(_ITK_IMAGE_IO[format_name])
    try:
        # The header alone says how much memory the pixels will take: refuse before allocating.
        reader.ReadImageInformation()
        size = reader.GetSize()
        voxel_bytes = reader.GetNumberOfComponents() * sitk.GetArrayViewFromImage(
            sitk.Image([1] * len(size), reader.GetPixelID())
        ).itemsize
        require_memory(
            int(np.prod(size, dtype=np.float64)) * voxel_bytes,
            f"reading {path} ({'×'.join(map(str, size))} voxels)",
        )
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"Could not read {path} as {format_name}: {_itk_reason(error)}. Check that the "
            f"file is complete and really {format_name} (re-export or re-download it)."
        ) from error
    if format_name == "NIfTI" and image.GetPixelID() in _FLOAT_PIXEL_IDS:
        _require_finite_nifti(path)
    return image


_FLOAT_PIXEL_IDS = (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)


def _require_finite_nifti(path: Path) -> None:
    """Refuse NaN/Inf in a float NIfTI: ITK's NIfTI reader silently turns NaN into 0, which would
    hide the problem from every later check."""
    import nibabel

    values = np.asanyarray(nibabel.load(path).dataobj)
    bad = values.size - int(np.isfinite(values).sum())
    if bad:
        raise InputError(
            f"{path} contains {bad} NaN or infinite voxels; replace them (e.g. with the background "
            "value) or mask them in the source image, then retry."
        )


def _require_complete_nifti(path: Path) -> None:
    """Refuse a truncated NIfTI file: ITK's reader silently fills the missing voxels with zeros."""
    import nibabel

    try:
        voxels = nibabel.load(path).dataobj  # reads the header only
        # The proxy's offset, not the header's vox_offset: writers may leave that 0 (ITK does).
        expected = int(voxels.offset) + int(np.prod(voxels.shape)) * voxels.dtype.itemsize
    except Exception as error:  # nibabel raises many types for a damaged header
        raise InputError(
            f"Could not read {path} as NIfTI: the header is damaged ({error}). Check that the "
            "file is complete and really NIfTI (re-export or re-download it)."
        ) from error
    if _extension(path) == ".nii.gz":
        available = _gzip_content_length(path, expected)
    else:
        available = path.stat().st_size
    if available < expected:
        raise InputError(
            f"Could not read {path} as NIfTI: the file is truncated (it holds {available} of "
            f"{expected} bytes of header and voxels). Copy or download it again."
        )


def _gzip_content_length(path: Path, expected: int) -> int:
    """Uncompressed length of a gzip file, read from its trailer when that matches ``expected``."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        trailer_size = int.from_bytes(file.read(4), "little")  # ISIZE: length modulo 2**32
    if trailer_size == expected % 2**32:
        return expected  # a truncated file ends in compressed bytes that match by chance ~2**-32
    # Trailing bytes, several gzip members, or truncation: decompress and count to be sure.
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        pass  # truncated or damaged: what was counted is what is there
    return total


# ---------------------------------------------------------------------------------------------
# 2D pictures


def _read_picture(path: Path, format_name: str) -> sitk.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            if getattr(picture, "n_frames", 1) > 1:
                raise InputError(
                    f"{path} holds {picture.n_frames} pages; only single-page {format_name} "
                    "pictures are read. Save the stack as a volume (.nii.gz, .nrrd, .mha)."
                )
            array = _picture_to_array(picture, path)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(
            f"Could not read {path} as {format_name}: {error}. Check that the file is "
            f"complete and really {format_name}."
        ) from error
    if array.ndim == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
        array[..., 0], array[..., 2]
    ):
        # Grayscale saved as RGB (common for exported slices): one channel holds it all.
        array = np.ascontiguousarray(array[..., 0])
    return sitk.GetImageFromArray(array, isVector=array.ndim == 3)


def _picture_to_array(picture, path: Path) -> np.ndarray:
    """A Pillow picture as ``(H, W)`` scalar or ``(H, W, 3)`` uint8 RGB array."""
    mode = picture.mode
    if mode == "L":
        return np.asarray(picture, dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(picture).astype(np.uint16)  # native byte order whatever the file's
    if mode == "I":
        return np.asarray(picture, dtype=np.int32)
    if mode == "F":
        return np.asarray(picture, dtype=np.float32)
    if mode in ("1", "LA", "La"):
        return np.asarray(picture.convert("L"), dtype=np.uint8)
    # RGB, RGBA/RGBa (alpha dropped), palette, CMYK, YCbCr, ...: everything else becomes RGB.
    try:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except ValueError as error:
        raise InputError(
            f"{path}: pixel mode {mode!r} cannot be converted to grayscale or RGB; save it as "
            "8-bit grayscale or RGB."
        ) from error


def _picture_array(image: sitk.Image, path: Path, extension: str) -> np.ndarray:
    """The pixels of a 2D image as an array Pillow can write in the format of ``extension``."""
    format_name = PICTURE_FORMATS[extension]
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]  # one slice of a volume is a 2D picture
    elif image.GetDimension() != 2:
        raise InputError(
            f"{path.name}: {format_name} holds one 2D picture, but the image is "
            f"{image.GetDimension()}D of size {size}. Write a volume format instead "
            "(.nii.gz, .nrrd, .mha) or a DICOM series, or extract one slice first."
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components not in (1, 3):
        raise InputError(
            f"{path.name}: the image has {components} components per pixel; pictures are "
            "written as grayscale (1) or RGB (3). Select the channels to keep first."
        )
    array = sitk.GetArrayFromImage(image)  # (H, W) or (H, W, 3)
    if np.iscomplexobj(array):
        raise InputError(
            f"{path.name}: complex pixels cannot be written as a picture; take the magnitude first."
        )
    if extension in EIGHT_BIT_EXTENSIONS or components == 3:
        return _to_uint8(array, path, format_name)
    return _to_tiff_scalar(array, path)


def _to_uint8(array: np.ndarray, path: Path, format_name: str) -> np.ndarray:
    """Floats are taken as [0, 1] (rounded, clipped); integers must already lie in 0..255."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(
                f"{path.name}: the image contains NaN or infinite values; replace them before saving."
            )
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise InputError(
            f"{path.name}: integer values span {low}..{high}, but 8-bit {format_name} holds "
            "0..255. Rescale the image to 0..255 (or to [0, 1] as floats) first, or write a "
            "format that keeps the values (.nii.gz, .nrrd, .mha, .tif)."
        )
    return array.astype(np.uint8)


def _to_tiff_scalar(array: np.ndarray, path: Path) -> np.ndarray:
    """Scalar TIFF: uint8 and uint16 kept, other integers as int32, floats as float32."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    info = np.iinfo(np.int32)
    if array.min() < info.min or array.max() > info.max:
        raise InputError(
            f"{path.name}: integer values exceed the 32-bit range TIFF pictures hold here; "
            "write .nii.gz, .nrrd or .mha instead."
        )
    return array.astype(np.int32)


def _write_picture(array: np.ndarray, temporary: Path, extension: str, compress: bool) -> None:
    from PIL import Image

    format_name = PICTURE_FORMATS[extension]
    options: dict = {}
    if format_name == "JPEG":
        options = {"quality": 95, "subsampling": 0}  # no chroma subsampling: colour maps stay sharp
    elif format_name == "TIFF" and compress:
        options = {"compression": "tiff_deflate"}
    Image.fromarray(array).save(temporary, format=format_name, **options)


# ---------------------------------------------------------------------------------------------
# DICOM


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a directory.

    Attributes:
        uid: SeriesInstanceUID, the value to pass as ``series_uid=`` / ``--series``.
        description: SeriesDescription ("" when absent).
        modality: Modality, e.g. ``"CT"``, ``"MR"``, ``"PT"`` ("" when absent).
        files: the series' files in slice order (as GDCM sorts them, by position).
    """

    uid: str
    description: str
    modality: str
    files: tuple[Path, ...]

    def summary(self) -> str:
        """One line: UID, modality, number of files, description."""
        return (
            f"{self.uid}  modality {self.modality or '?'}  {len(self.files)} files  "
            f"description {self.description or '(none)'!r}"
        )


@contextlib.contextmanager
def _itk_warnings_silenced() -> Iterator[None]:
    """GDCM prints "No Series were found" to stderr; our own error says it better."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def list_dicom_series(directory: PathLike) -> list[DicomSeriesInfo]:
    """The DICOM series directly inside ``directory`` (not its subdirectories).

    Returns an empty list when the directory holds no DICOM file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory; give the folder that holds the DICOM files.")
    with _itk_warnings_silenced():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
        series = []
        for uid in uids:
            files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
            header = _dicom_header(files[0])
            series.append(
                DicomSeriesInfo(
                    uid=uid,
                    description=str(header.get("SeriesDescription", "")),
                    modality=str(header.get("Modality", "")),
                    files=files,
                )
            )
    return series


def _dicom_header(path: Path):
    """The header of one DICOM file (no pixel data), as a pydicom Dataset."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as error:
        raise InputError(
            f"Could not read {path} as DICOM: {error}. Check that the file is complete."
        ) from error


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_dicom_directory(directory: Path, series_uid: str | None) -> sitk.Image:
    series = list_dicom_series(directory)
    if not series:
        subfolders = sorted(p.name for p in directory.iterdir() if p.is_dir())
        hint = (
            f" It has subfolders ({', '.join(subfolders[:8])}{', ...' if len(subfolders) > 8 else ''}):"
            " give the folder that directly holds the DICOM files."
            if subfolders
            else " Give a directory that holds DICOM files, or an image file."
        )
        raise InputError(f"{directory} is a directory but holds no DICOM series.{hint}")
    how_to_pick = (
        "Pick one with series_uid='<UID>' in Python, or on the command line with the input's "
        "series option (medfusion fuse: --reference-series <UID> / --moving-series <UID>)."
    )
    listing = "\n".join(f"  {info.summary()}" for info in series)
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{directory} holds {len(series)} DICOM series; say which one to read:\n"
                f"{listing}\n{how_to_pick}"
            )
        chosen = series[0]
    else:
        matches = [info for info in series if info.uid == series_uid]
        if not matches:
            raise InputError(
                f"{directory} holds no DICOM series with UID {series_uid}. It holds:\n"
                f"{listing}\n{how_to_pick}"
            )
        chosen = matches[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in chosen.files])
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice headers, for the spacing check
    try:
        with _itk_warnings_silenced():  # the uneven-spacing warning becomes the error below
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"Could not read DICOM series {chosen.uid} in {directory}: {_itk_reason(error)}. "
            "Check that all files of the series are present and complete."
        ) from error
    _require_even_slice_spacing(image, reader, chosen, directory)
    return image


def _require_even_slice_spacing(
    image: sitk.Image, reader: sitk.ImageSeriesReader, series: DicomSeriesInfo, directory: Path
) -> None:
    """Refuse a series with a gap: ITK would spread the slices evenly, distorting the volume.

    A missing or damaged slice file (GDCM leaves out files it cannot parse) is the usual cause.
    """
    position_tag = "0020|0032"  # ImagePositionPatient, mm
    slices = range(len(series.files))
    if len(slices) < 3 or not all(reader.HasMetaDataKey(i, position_tag) for i in slices):
        return
    positions = np.array([[float(v) for v in reader.GetMetaData(i, position_tag).split("\\")] for i in slices])
    normal = np.array(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    gaps = np.diff(positions @ normal)  # mm between consecutive slices along the slice normal
    typical = float(np.median(gaps))
    # DS rounding of positions stays far below 1 % of a gap; a missing slice doubles one.
    if np.all(np.abs(gaps - typical) <= 0.01 * abs(typical)):
        return
    raise InputError(
        f"DICOM series {series.uid} in {directory}: its {len(series.files)} slices are not "
        f"evenly spaced (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm), so a slice file is "
        "probably missing or damaged. Check that the series is complete. MedFusion does not "
        "resample irregular series; convert it to NIfTI or NRRD first with a tool that does "
        "(e.g. 3D Slicer's DICOM module)."
    )


def _read_dicom_file(path: Path, series_uid: str | None) -> sitk.Image:
    """One file stands for its whole series, read from the file's directory."""
    file_series = str(_dicom_header(path).get("SeriesInstanceUID", ""))
    if series_uid is not None and series_uid != file_series:
        raise InputError(
            f"{path} belongs to series {file_series or '(no UID)'}, not to the requested "
            f"series {series_uid}; give the directory to choose among its series."
        )
    if not file_series:
        return _read_volume(path, "DICOM")
    return _read_dicom_directory(path.parent, file_series)


# ---------------------------------------------------------------------------------------------
# Atomic output


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file under a temporary name and move it onto ``path`` only on success.

    Yields a path with the *same file name* as ``path`` inside a hidden staging directory
    ``.<name>.tmp-<hex>`` next to it (same file system, so the final rename is atomic). The
    name keeps its extension, so writers pick the format from it, and writers that add
    companion files (``.mhd`` + ``.zraw``, ``.nhdr`` + ``.raw.gz``) find their references
    right after the move. On success every file in the staging directory is moved next to
    ``path`` (companions first, ``path`` last); on any exception, KeyboardInterrupt
    included, the staging directory is removed and ``path`` is left as it was.

    Missing parent directories are created.

    Raises:
        OutputExistsError: ``path`` (or a companion file) exists and ``overwrite`` is False.
        InputError: ``path`` is a directory, or its directory cannot be created or written.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target} is a directory; give a file name, e.g. {target / 'fused.nii.gz'}.")
    _refuse_existing(target, overwrite)
    staging = _make_staging_directory(target)
    try:
        yield staging / target.name
        _publish_files(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_directory(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Fill a directory under a temporary name and rename it onto ``path`` only on success.

    Yields an empty hidden staging directory ``.<name>.tmp-<hex>`` next to ``path``. On success
    it is renamed to ``path``; an existing ``path`` (allowed with ``overwrite``, or when it is
    an empty directory) is moved aside first and deleted only after the rename worked. On
    any exception the staging directory is removed and ``path`` is left as it was.

    Raises:
        OutputExistsError: ``path`` exists (and is not an empty directory) and ``overwrite``
            is False.
        InputError: the parent directory cannot be created or written.
    """
    target = Path(path)
    _refuse_existing(target, overwrite)
    staging = _make_staging_directory(target)
    try:
        yield staging
        _publish_directory(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _occupied(path: Path) -> bool:
    """True when writing ``path`` would replace something; an empty directory counts as free."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return os.path.lexists(path)


def _refuse_existing(target: Path, overwrite: bool) -> None:
    refuse_existing_outputs([target], overwrite=overwrite)


def refuse_existing_outputs(paths, *, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` for the first of ``paths`` (``None`` entries skipped) that
    exists, unless ``overwrite``: the check every command runs before its slow part."""
    for target in paths:
        if target is not None and not overwrite and _occupied(Path(target)):
            raise OutputExistsError(
                f"{target} already exists. Pass --overwrite on the command line or overwrite=True "
                "in Python to replace it, or choose another output path."
            )


def _make_staging_directory(target: Path) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot create the output directory {parent}: {error.strerror or error}. "
            "Choose another output location."
        ) from error
    staging = parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as error:
        raise InputError(
            f"Cannot write to the output directory {parent}: {error.strerror or error}. "
            "Choose a writable output location."
        ) from error
    return staging


def _publish_files(staging: Path, target: Path, overwrite: bool) -> None:
    main = staging / target.name
    if not main.exists():
        raise RuntimeError(f"nothing was written to {main} inside atomic_output; nothing to publish")
    companions = [p for p in staging.iterdir() if p.name != target.name]
    if not overwrite:
        destinations = [target.parent / p.name for p in [main, *companions]]
        clashes = [d for d in destinations if os.path.lexists(d)]
        if clashes:
            raise OutputExistsError(
                f"{', '.join(map(str, clashes))} already exist(s). Pass --overwrite on the command "
                "line or overwrite=True in Python to replace, or choose another output path."
            )
    created: list[Path] = []
    try:
        for companion in companions:
            destination = target.parent / companion.name
            existed = os.path.lexists(destination)
            os.replace(companion, destination)
            if not existed:
                created.append(destination)
        os.replace(main, target)
    except BaseException:
        for destination in created:  # a header without its data (or vice versa) is half-written
            destination.unlink(missing_ok=True)
        raise


def _publish_directory(staging: Path, target: Path, overwrite: bool) -> None:
    _refuse_existing(target, overwrite)  # again: something may have appeared while we wrote
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink()


# ---------------------------------------------------------------------------------------------
# Writing


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
    :func:`write_dicom_series`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        InputError: unsupported extension, an image the format cannot hold, or a write failure.
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"write_image expects a SimpleITK image, got {type(image).__name__}.")
    target = Path(path)
    extension = _extension(target)
    if extension in DICOM_EXTENSIONS or extension == "":
        raise InputError(
            f"{target}: a DICOM series is written as a directory; use "
            "write_dicom_series(image, directory), or give a file extension such as .nii.gz."
        )
    if extension in VOLUME_FORMATS:
        with atomic_output(target, overwrite=overwrite) as temporary:
            # ITK's NIfTI writer accepts lower-case extensions only: write so, then rename.
            written = temporary.with_name(temporary.name[: -len(extension)] + extension)
            try:
                sitk.WriteImage(image, str(written), useCompression=compress)
            except RuntimeError as error:
                raise InputError(
                    f"Could not write {target}: {_itk_reason(error)}. Check free disk space and "
                    "that the format can hold this pixel type."
                ) from error
            os.replace(written, temporary)
        return
    if extension in PICTURE_FORMATS:
        array = _picture_array(image, target, extension)  # checked before anything is created
        with atomic_output(target, overwrite=overwrite) as temporary:
            _write_picture(array, temporary, extension, compress)
        return
    raise InputError(
        f"{target}: unsupported output type {extension!r}. Supported: {SUPPORTED_FORMATS_TEXT}."
    )


# Every series is written as Secondary Capture: the IOD needs no acquisition parameters we do
# not have, and GDCM/ITK (hence Slicer) still read the image plane geometry from it.
_SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
_UINT16_LEVELS = 65534  # quantisation steps for float data; one spare level absorbs DS rounding


def write_dicom_series(
    image: sitk.Image,
    directory: PathLike,
    *,
    modality: str = "OT",
    series_description: str = "MedFusion",
    overwrite: bool = False,
) -> None:
    """Write a 3D scalar image as a DICOM series, one file per slice, atomically.

    Each file carries ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness and SpacingBetweenSlices (mm), and all share Study/Series/FrameOfReference
    UIDs. Pixels are stored as 16 bits:

    * integer images (and float images holding only integers) that fit ``uint16`` or
      ``int16`` are stored exactly (slope 1, intercept 0);
    * anything else is quantised to 65535 levels over its min..max with RescaleSlope /
      RescaleIntercept, so values read back with an error of at most ``slope / 2``
      (``(max - min) / 131068``).

    DICOM slices are stacked along the normal ``row x column``; an image whose third axis
    points the other way (a left-handed direction matrix) is written with its slices reversed,
    which describes the same voxels in space, so reading it back gives a physically identical
    image indexed from the other end.

    Args:
        image: 3D scalar image; any real pixel type.
        directory: the series directory to create (parents are created).
        modality: DICOM Modality code, e.g. ``"CT"``, ``"MR"``, ``"OT"`` (other).
        series_description: SeriesDescription, up to 64 characters.
        overwrite: replace an existing non-empty ``directory``.

    Raises:
        InputError: not a 3D scalar image, a sheared direction, non-finite values, or a bad
            modality/description.
        OutputExistsError: ``directory`` exists, is not empty and ``overwrite`` is False.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not isinstance(image, sitk.Image):
        raise InputError(f"write_dicom_series expects a SimpleITK image, got {type(image).__name__}.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"A DICOM series is written from a 3D scalar image; this one is {image.GetDimension()}D "
            f"with {image.GetNumberOfComponentsPerPixel()} component(s). Write a picture or a "
            "volume format (.nii.gz, .nrrd, .mha) instead."
        )
    modality = modality.strip().upper()
    if not modality or len(modality) > 16 or not all(c.isalnum() or c == "_" for c in modality):
        raise InputError(f"Modality {modality!r} is not a DICOM code; use e.g. 'CT', 'MR', 'PT' or 'OT'.")
    if len(series_description) > 64:
        raise InputError(
            f"series_description has {len(series_description)} characters; DICOM allows 64. Shorten it."
        )

    array = sitk.GetArrayFromImage(image)  # (slices, rows, columns)
    if np.iscomplexobj(array):
        raise InputError("Complex pixels cannot be written to DICOM; take the magnitude first.")
    origin, direction, slice_direction, array = _dicom_slice_geometry(image, array)
    stored, slope, intercept = _dicom_pixels(array)
    spacing_x, spacing_y, spacing_z = image.GetSpacing()
    row_cosines = direction[:, 0]  # DICOM "row" direction: along a row, i.e. increasing x index
    column_cosines = direction[:, 1]  # along a column, i.e. increasing y index

    ds = _decimal_string
    now = datetime.datetime.now()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    real_low, real_high = float(array.min()), float(array.max())
    digits = max(4, len(str(stored.shape[0])))
    with atomic_output_directory(directory, overwrite=overwrite) as staging:
        for index in range(stored.shape[0]):
            position = origin + index * spacing_z * slice_direction
            instance_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = _SECONDARY_CAPTURE_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = instance_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            slice_ = Dataset()
            slice_.file_meta = meta
            slice_.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for any series description
            slice_.ImageType = ["DERIVED", "SECONDARY"]
            slice_.SOPClassUID = _SECONDARY_CAPTURE_IMAGE_STORAGE
            slice_.SOPInstanceUID = instance_uid
            slice_.StudyInstanceUID = study_uid
            slice_.SeriesInstanceUID = series_uid
            slice_.FrameOfReferenceUID = frame_uid
            slice_.StudyDate = slice_.SeriesDate = slice_.ContentDate = now.strftime("%Y%m%d")
            slice_.StudyTime = slice_.SeriesTime = slice_.ContentTime = now.strftime("%H%M%S")
            slice_.Modality = modality
            slice_.SeriesDescription = series_description
            slice_.Manufacturer = "MedFusion"
            slice_.ConversionType = "WSD"  # workstation
            for empty_type2 in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                "ReferringPhysicianName", "StudyID", "AccessionNumber",
                                "PositionReferenceIndicator"):
                setattr(slice_, empty_type2, "")
            slice_.SeriesNumber = 1
            slice_.InstanceNumber = index + 1
            slice_.ImagePositionPatient = [ds(v) for v in position]
            slice_.ImageOrientationPatient = [ds(v) for v in (*row_cosines, *column_cosines)]
            slice_.PixelSpacing = [ds(spacing_y), ds(spacing_x)]  # row spacing, then column spacing
            slice_.SliceThickness = ds(spacing_z)
            slice_.SpacingBetweenSlices = ds(spacing_z)
            slice_.SliceLocation = ds(float(position @ slice_direction))
            slice_.SamplesPerPixel = 1
            slice_.PhotometricInterpretation = "MONOCHROME2"
            slice_.Rows, slice_.Columns = stored.shape[1], stored.shape[2]
            slice_.BitsAllocated = slice_.BitsStored = 16
            slice_.HighBit = 15
            slice_.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
            slice_.RescaleIntercept = intercept
            slice_.RescaleSlope = slope
            slice_.RescaleType = "US"  # unspecified units
            slice_.WindowCenter = ds((real_low + real_high) / 2)
            slice_.WindowWidth = ds(max(real_high - real_low, 1.0))
            slice_.PixelData = stored[index].astype(stored.dtype.newbyteorder("<")).tobytes()
            pydicom.dcmwrite(staging / f"slice_{index + 1:0{digits}d}.dcm", slice_, enforce_file_format=True)


def _decimal_string(value: float) -> str:
    """A DICOM DS value: at most 16 characters, as precise as that allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _dicom_slice_geometry(image: sitk.Image, array: np.ndarray):
    """Origin, direction and pixel array arranged so slices stack along ``row x column``.

    Returns ``(origin (3,), direction (3, 3) with axes as columns, slice_direction (3,), array)``.
    """
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    row, column, slice_axis = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, column)
    orthonormal = (
        abs(row @ column) < 1e-4
        and abs(np.linalg.norm(normal) - 1) < 1e-4
        and abs(abs(normal @ slice_axis) - 1) < 1e-4
    )
    if not orthonormal:
        raise InputError(
            "The image's direction matrix is not orthonormal (a sheared grid), which DICOM "
            "cannot describe. Resample it onto an orthonormal grid, or write .nii.gz/.nrrd/.mha."
        )
    origin = np.array(image.GetOrigin(), dtype=float)
    if normal @ slice_axis < 0:
        # Same voxels, indexed from the last slice: DICOM's slice order follows the normal.
        origin = np.array(image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1)), dtype=float)
        array = array[::-1]
    return origin, direction, normal, array


def _dicom_pixels(array: np.ndarray) -> tuple[np.ndarray, str, str]:
    """16-bit stored values and the (slope, intercept) DS strings that map them back.

    ``real = stored * float(slope) + float(intercept)``; the stored array is ``uint16`` or
    ``int16``.
    """
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(
            "The image contains NaN or infinite values, which DICOM cannot store; replace them first."
        )
    low, high = array.min(), array.max()
    holds_integers = np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.rint(array))
    if holds_integers and low >= 0 and high <= 65535:
        return array.astype(np.uint16), "1", "0"
    if holds_integers and low >= -32768 and high <= 32767:
        return array.astype(np.int16), "1", "0"
    # Slope and intercept are what the reader will parse back, so quantise with those values.
    intercept_text = _decimal_string(float(low))
    intercept = float(intercept_text)
    span = float(high) - intercept
    slope_text = _decimal_string(span / _UINT16_LEVELS) if span > 0 else "1"
    slope = float(slope_text)
    stored = np.rint((array.astype(np.float64) - intercept) / slope)
    return np.clip(stored, 0, 65535).astype(np.uint16), slope_text, intercept_text
