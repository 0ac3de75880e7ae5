"""DICOM series: discovery, reading and writing.

SimpleITK's GDCM series reader gives pixels and geometry (slices sorted by position); pydicom
inspects headers (series UID, description, modality) to list series and to explain problems, and
writes series (:func:`write_dicom_series`).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import PathLike, atomic_output_directory
from MedFusionLib.io.volumes import itk_reason, read_volume

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")


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


def has_dicom_preamble(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom_directory(directory: Path, series_uid: str | None) -> sitk.Image:
    """Read the one DICOM series in ``directory``, or the one ``series_uid`` names; refuse an
    ambiguous choice (listing the series), a directory without DICOM and a series with a gap."""
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
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice headers, for the checks below
    try:
        with _itk_warnings_silenced():  # the uneven-spacing warning becomes the error below
            image = reader.Execute()
    except RuntimeError as error:
        # ITK refuses slices of different sizes with a bare "Size: [...]": say which and why.
        _require_one_kind_of_slice([_header_fields(_dicom_header(f)) for f in chosen.files], chosen, directory)
        raise InputError(
            f"Could not read DICOM series {chosen.uid} in {directory}: {itk_reason(error)}. "
            "Check that all files of the series are present and complete."
        ) from error
    _require_one_kind_of_slice(
        [_reader_fields(reader, index) for index in range(len(chosen.files))], chosen, directory
    )
    _require_even_slice_spacing(image, reader, chosen, directory)
    if chosen.modality:
        # The series reader keeps no header on the volume; the Modality tells later steps it is a CT.
        image.SetMetaData("0008|0060", chosen.modality)
    return image


# Per slice: (orientation: 6 direction cosines, (rows, columns), pixel spacing in mm), or None
# where a header lacks a field.
SliceFields = tuple[tuple[float, ...] | None, tuple[int, int] | None, tuple[float, ...] | None]
_ORIENTATION_TAG, _ROWS_TAG, _COLUMNS_TAG, _PIXEL_SPACING_TAG = "0020|0037", "0028|0010", "0028|0011", "0028|0030"


def _numbers(text: str | None) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in str(text).replace("[", "").replace("]", "").replace(",", "\\").split("\\"))
    except ValueError:
        return None


def _reader_fields(reader: sitk.ImageSeriesReader, index: int) -> SliceFields:
    """The fields of slice ``index`` as the series reader kept them."""

    def text(tag: str) -> str | None:
        return reader.GetMetaData(index, tag) if reader.HasMetaDataKey(index, tag) else None

    rows, columns = text(_ROWS_TAG), text(_COLUMNS_TAG)
    size = (int(rows), int(columns)) if rows is not None and columns is not None else None
    return _numbers(text(_ORIENTATION_TAG)), size, _numbers(text(_PIXEL_SPACING_TAG))


def _header_fields(header) -> SliceFields:
    """The fields of one slice from its pydicom header."""
    orientation, spacing = header.get("ImageOrientationPatient"), header.get("PixelSpacing")
    rows, columns = header.get("Rows"), header.get("Columns")
    return (
        None if orientation is None else tuple(float(v) for v in orientation),
        None if rows is None or columns is None else (int(rows), int(columns)),
        None if spacing is None else tuple(float(v) for v in spacing),
    )


def _require_one_kind_of_slice(fields: list[SliceFields], series: DicomSeriesInfo, directory: Path) -> None:
    """Refuse a series that mixes slices of different orientations, sizes or pixel spacings (a
    localizer or a reformat filed under the same SeriesInstanceUID): one volume cannot hold them,
    and ITK would either fail or stack them as if they were one grid."""
    what = ("orientations (ImageOrientationPatient)", "sizes (Rows × Columns)", "pixel spacings (PixelSpacing)")
    for position, name in enumerate(what):
        values = [slice_[position] for slice_ in fields if slice_[position] is not None]
        if not values:
            continue
        first = np.asarray(values[0], dtype=float)
        differing = [v for v in values if len(v) != len(first) or not np.allclose(v, first, rtol=1e-4, atol=1e-4)]
        if differing:
            raise InputError(
                f"DICOM series {series.uid} in {directory} mixes slices of different {name}: "
                f"{tuple(values[0])} and {tuple(differing[0])} ({len(differing)} of {len(values)} slices differ), "
                "so they do not form one volume (a localizer or a reformat filed in the same series?). Move the "
                "odd files out of the folder, or export the series again as one volume."
            )


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
    along_normal = positions @ normal  # mm
    order = np.argsort(along_normal, kind="stable")
    steps = np.diff(along_normal[order])
    typical = float(np.median(steps))
    doubled = np.flatnonzero(steps <= 0.01 * abs(typical))
    if typical > 0 and doubled.size:
        first, second = series.files[order[doubled[0]]].name, series.files[order[doubled[0] + 1]].name
        raise InputError(
            f"DICOM series {series.uid} in {directory}: {doubled.size} of its {len(series.files)} slice files "
            f"repeat a position (e.g. {first} and {second} lie at one place), so a slice is duplicated "
            "(copied twice, or two acquisitions in one series). Remove the duplicate files, or export the series again."
        )
    gaps = np.diff(along_normal)  # mm between consecutive slices along the slice normal, in ITK's order
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


def read_dicom_file(path: Path, series_uid: str | None) -> sitk.Image:
    """One file stands for its whole series, read from the file's directory."""
    file_series = str(_dicom_header(path).get("SeriesInstanceUID", ""))
    if series_uid is not None and series_uid != file_series:
        raise InputError(
            f"{path} belongs to series {file_series or '(no UID)'}, not to the requested "
            f"series {series_uid}; give the directory to choose among its series."
        )
    if not file_series:
        return read_volume(path, "DICOM")
    return read_dicom_directory(path.parent, file_series)


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
