"""Fused volumes back into the patient's study: derived DICOM series a PACS files beside the source.

A fused volume lies on the reference's voxel grid, so when the reference was read from DICOM its
fused series belongs to the same patient, study and frame of reference. :func:`target_study`
re-reads the reference series' headers (pydicom, no pixels) and returns the attributes to copy;
:func:`write_derived_series` writes one volume as a new series of that study, one file per slice,
atomically (staged in a hidden directory, renamed when complete). Each slice carries a Source
Image Sequence pointing at the reference slice at the same position.

Which IOD (Information Object Definition, the DICOM "file type") each volume is written as:

* grey volumes of a CT or MR study: **CT Image Storage** / **MR Image Storage**, the single-frame
  IODs that every viewer stacks into a volume (Image Plane module, Frame of Reference). highdicom
  (0.28) has no constructor for them (its ``Image`` reads, its only single-frame writer is
  ``SCImage``), so these are built with pydicom here. The values are fused intensities, not
  Hounsfield units or MR signal: RescaleType ``US`` (unspecified) says so, which the CT Image
  module allows, and ImageType is ``DERIVED\\SECONDARY``.
* colour (RGB functional fusion) and grey volumes of any other modality: **Secondary Capture**
  with highdicom's ``SCImage``. No colour IOD with a mandatory 3D geometry exists (CT, MR and their
  enhanced forms are monochrome only); SC allows RGB, and the Image Plane and Frame of Reference
  attributes added to it are what GDCM/ITK (3D Slicer) and most viewers stack by.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import PathLike, atomic_output_directory
from MedFusionLib.io.dicom import (
    _decimal_string,
    _dicom_header,
    _dicom_pixels,
    _dicom_slice_geometry,
    has_dicom_preamble,
    list_dicom_series,
)

_log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
_GREY_IOD_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
# Patient and study attributes a derived series copies from its reference (General Study, Patient).
PATIENT_STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip
# A reference slice matches a derived slice when their positions along the normal differ by less
# than this share of the slice spacing (DS rounding of positions is far below it).
_POSITION_TOLERANCE = 0.01
_HIGHDICOM_MISSING = (
    "Writing DICOM needs the package highdicom: pip install 'medfusion[dicom]' (or pip install highdicom)."
)


@dataclass(frozen=True)
class ReferenceSlice:
    """One file of the reference series: its SOP Class/Instance UIDs and where it lies (mm)."""

    sop_class_uid: str
    sop_instance_uid: str
    position: tuple[float, float, float]


@dataclass(frozen=True)
class PatientAttributes:
    """Patient attributes for a new study (the reference was not DICOM); empty strings stay empty.

    ``birth_date``: ``YYYYMMDD``; ``sex``: ``M``, ``F``, ``O`` or empty.
    """

    name: str = ""
    id: str = ""
    birth_date: str = ""
    sex: str = ""

    def __post_init__(self) -> None:
        if self.sex not in ("", "M", "F", "O"):
            raise InputError(f"patient sex {self.sex!r}: DICOM allows M, F or O (or leave it empty).")
        if self.birth_date and not (len(self.birth_date) == 8 and self.birth_date.isdigit()):
            raise InputError(f"patient birth date {self.birth_date!r}: give it as YYYYMMDD, e.g. 19700131.")
        for what, value in (("name", self.name), ("ID", self.id)):
            if len(value) > 64:
                raise InputError(f"patient {what} has {len(value)} characters; DICOM allows 64.")


@dataclass(frozen=True)
class TargetStudy:
    """The study (and frame of reference) that derived series are written into.

    ``attributes``: patient and study attributes (DICOM keyword -> value), copied from the
    reference or made for a new study. ``frame_of_reference_uid``: the reference's when it has
    one. ``modality``: the reference's Modality ("" when unknown). ``reference_slices``: the
    reference series' files (empty when the reference was not DICOM). ``reference_series_uid`` /
    ``reference_description``: for the Derivation Description. ``notes``: what could not be
    copied and what was done instead (also logged as warnings). ``series_numbers``: Series Numbers
    already used by the series beside the reference; new series take the next free ones.
    """

    attributes: dict[str, object]
    frame_of_reference_uid: str
    modality: str = ""
    reference_slices: tuple[ReferenceSlice, ...] = ()
    reference_series_uid: str = ""
    reference_description: str = ""
    notes: tuple[str, ...] = ()
    series_numbers: set[int] = field(default_factory=set)

    @property
    def from_reference(self) -> bool:
        """Whether the study is the reference's own (not a new one)."""
        return bool(self.reference_slices)

    def claim_series_number(self) -> int:
        """The lowest Series Number above every one in use; marks it used."""
        number = max(self.series_numbers, default=0) + 1
        self.series_numbers.add(number)
        return number


@dataclass(frozen=True)
class DerivedSeries:
    """A written series: its directory, Series Instance UID and number, SOP Class and files."""

    directory: Path
    series_uid: str
    series_number: int
    sop_class_uid: str
    files: tuple[Path, ...]


def _dicom_series_of(source: PathLike, series_uid: str | None):
    """The DicomSeriesInfo that ``source`` (a directory or one file of a series) reads, or None
    when it is not DICOM."""
    path = Path(source)
    if path.is_dir():
        series = list_dicom_series(path)
        if series_uid is None and len(series) == 1:
            return series[0], series
        matches = [info for info in series if info.uid == series_uid]
        return (matches[0] if matches else None), series
    if path.is_file() and (path.suffix.lower() in (".dcm", ".dicom", ".ima") or has_dicom_preamble(path)):
        uid = series_uid or str(_dicom_header(path).get("SeriesInstanceUID", ""))
        series = list_dicom_series(path.parent)
        matches = [info for info in series if info.uid == uid]
        return (matches[0] if matches else None), series
    return None, []


def target_study(
    reference: PathLike | sitk.Image,
    *,
    series_uid: str | None = None,
    patient: PatientAttributes = PatientAttributes(),
) -> TargetStudy:
    """The study derived series of ``reference`` go into.

    ``reference``: the path the reference was read from (a DICOM directory or one of its files, or
    any other image file), or an in-memory image (then a new study). ``series_uid``: the reference
    series when its directory holds several. ``patient``: used only for a new study.

    A DICOM reference gives its patient and study attributes, Frame of Reference UID, modality and
    slices (headers only, read with pydicom). Without a Study Instance UID, or without a Frame of
    Reference UID, a new one is made and :attr:`TargetStudy.notes` says so: the derived series then
    cannot be filed with (or be known to share the grid of) the reference.
    """
    import pydicom.uid

    chosen, beside = (None, []) if isinstance(reference, sitk.Image) else _dicom_series_of(reference, series_uid)
    if chosen is None:
        note = (
            "the reference was not read from DICOM, so the DICOM output is a new study"
            + (" with the patient attributes given" if patient != PatientAttributes() else " with empty patient data")
            + " and its own frame of reference"
        )
        _log.warning(note)
        return TargetStudy(attributes=_new_study_attributes(patient), frame_of_reference_uid=pydicom.uid.generate_uid(),
                           notes=(note,))  # fmt: skip
    headers = [_dicom_header(path) for path in chosen.files]
    first = headers[0]
    series_name = chosen.uid or f"in {chosen.files[0].parent} (it has no Series Instance UID)"
    attributes = {keyword: first.get(keyword, "") for keyword in PATIENT_STUDY_ATTRIBUTES}
    notes = []
    if not str(first.get("StudyInstanceUID", "")).strip():
        new_study = _new_study_attributes(PatientAttributes())
        attributes.update({k: v for k, v in new_study.items() if not k.startswith("Patient")})
        notes.append(
            f"the reference series {series_name} has no Study Instance UID, so its fused series cannot join its "
            "study: it is written in a new study with the reference's patient attributes. Give the reference "
            "as exported by the PACS (with its study) to file the result beside it"
        )
    frame_uid = str(first.get("FrameOfReferenceUID", "")).strip()
    if not frame_uid:
        frame_uid = pydicom.uid.generate_uid()
        notes.append(
            f"the reference series {series_name} has no Frame of Reference UID; the fused series gets a new one, so "
            "a viewer will not know that it lies on the reference's grid (the positions are still the reference's)"
        )
    slices = tuple(
        ReferenceSlice(
            sop_class_uid=str(header.get("SOPClassUID", "")),
            sop_instance_uid=str(header.get("SOPInstanceUID", "")),
            position=tuple(float(v) for v in header.get("ImagePositionPatient", (np.nan,) * 3)),
        )
        for header in headers
    )
    if not all(s.sop_instance_uid and s.sop_class_uid for s in slices):
        notes.append(
            f"slices of the reference series {series_name} have no SOP Class/Instance UID (an anonymiser removed "
            "them?), so the fused slices cannot name their source slices: their Source Image Sequence is left out"
        )
    for note in notes:
        _log.warning(note)
    numbers = set()
    for info in beside:
        number = _dicom_header(info.files[0]).get("SeriesNumber", None)
        if number not in (None, ""):
            numbers.add(int(number))
    return TargetStudy(
        attributes=attributes,
        frame_of_reference_uid=frame_uid,
        modality=str(first.get("Modality", "")),
        reference_slices=slices,
        reference_series_uid=chosen.uid,
        reference_description=str(first.get("SeriesDescription", "")),
        notes=tuple(notes),
        series_numbers=numbers,
    )


def _new_study_attributes(patient: PatientAttributes) -> dict[str, object]:
    import pydicom.uid

    now = datetime.datetime.now()
    return {
        "PatientName": patient.name, "PatientID": patient.id, "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex, "StudyInstanceUID": pydicom.uid.generate_uid(),
        "StudyDate": now.strftime("%Y%m%d"), "StudyTime": now.strftime("%H%M%S"), "AccessionNumber": "",
        "StudyID": "", "ReferringPhysicianName": "", "StudyDescription": "",
    }  # fmt: skip


def write_derived_series(
    image: sitk.Image,
    directory: PathLike,
    study: TargetStudy,
    *,
    series_description: str,
    derivation_description: str,
    modality: str | None = None,
    overwrite: bool = False,
) -> DerivedSeries:
    """Write ``image`` as a new series of ``study`` in ``directory``, one file per slice, atomically.

    Args:
        image: 3D, on the reference's grid for a study read from a reference; scalar (any real
            type: stored as 16 bits, exactly for integers that fit, else quantised to 65535 levels
            over min..max with RescaleSlope/Intercept) or RGB uint8 (3 components).
        directory: the series directory to create.
        study: from :func:`target_study`; its next free Series Number is taken.
        series_description: SeriesDescription, at most 64 characters.
        derivation_description: how the image was made (model, registration, source series), at
            most 1024 characters.
        modality: DICOM Modality; default the study's (``OT`` when unknown). CT and MR are written
            as CT/MR Image Storage, others and RGB as Secondary Capture (module docstring).
        overwrite: replace an existing non-empty ``directory``.

    Raises:
        InputError: not 3D, another component count, a sheared grid, non-finite values, text too
            long, or highdicom missing.
        OutputExistsError: ``directory`` exists, is not empty and ``overwrite`` is False.
    """
    import pydicom
    from pydicom.uid import generate_uid

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise InputError(
            f"A DICOM series is written from a 3D grey or RGB volume; this one is {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s). Write a picture or a .nii.gz instead."
        )
    if len(series_description) > 64:
        raise InputError(f"series description {series_description!r} is longer than DICOM's 64 characters")
    if len(derivation_description) > 1024:
        raise InputError("derivation description is longer than DICOM's 1024 characters")
    colour = image.GetNumberOfComponentsPerPixel() == 3
    if colour and image.GetPixelID() != sitk.sitkVectorUInt8:
        raise InputError("An RGB volume is written to DICOM as 8 bits per channel; cast it to uint8 first.")
    modality = (modality or ("OT" if colour else study.modality) or "OT").strip().upper()
    sop_class = SECONDARY_CAPTURE_IMAGE_STORAGE
    if not colour:
        sop_class = _GREY_IOD_BY_MODALITY.get(modality, SECONDARY_CAPTURE_IMAGE_STORAGE)
    if sop_class == SECONDARY_CAPTURE_IMAGE_STORAGE:
        try:
            import highdicom  # noqa: F401  (fail before anything is written)
        except ImportError:
            raise InputError(_HIGHDICOM_MISSING) from None

    array = sitk.GetArrayFromImage(image)  # (slices, rows, columns[, 3])
    origin, direction, normal, array = _dicom_slice_geometry(image, array)
    spacing_x, spacing_y, spacing_z = image.GetSpacing()
    positions = origin + np.arange(array.shape[0])[:, None] * spacing_z * normal
    sources = _matching_reference_slices(study, positions, normal, spacing_z)
    if study.from_reference and not any(sources):
        raise InputError(
            "the image does not lie on the reference series' slices (no slice position matches), so it cannot be "
            "written as a derived series of it; write the fused volume (on the reference grid) instead"
        )
    if colour:
        stored, slope, intercept, window = array, None, None, None
    else:
        stored, slope, intercept = _dicom_pixels(array)
        window = (float(array.min()), float(array.max()))
    series_uid = generate_uid()
    series_number = study.claim_series_number()
    now = datetime.datetime.now()
    digits = max(4, len(str(array.shape[0])))
    files = []
    with atomic_output_directory(directory, overwrite=overwrite) as staging:
        for index in range(array.shape[0]):
            common = _SliceAttributes(
                study=study, sop_class_uid=sop_class, sop_instance_uid=generate_uid(), series_uid=series_uid,
                series_number=series_number, instance_number=index + 1, modality=modality,
                series_description=series_description, derivation_description=derivation_description, now=now,
                position=positions[index], row=direction[:, 0], column=direction[:, 1], normal=normal,
                pixel_spacing=(spacing_y, spacing_x), slice_spacing=spacing_z, source=sources[index],
            )  # fmt: skip
            if sop_class == SECONDARY_CAPTURE_IMAGE_STORAGE:
                dataset = _secondary_capture_slice(common, stored[index], slope, intercept, window)
            else:
                dataset = _cross_sectional_slice(common, stored[index], slope, intercept, window)
            name = f"{index + 1:0{digits}d}.dcm"
            pydicom.dcmwrite(staging / name, dataset, enforce_file_format=True)
            files.append(Path(directory) / name)
    return DerivedSeries(Path(directory), series_uid, series_number, sop_class, tuple(files))


def _matching_reference_slices(
    study: TargetStudy, positions: np.ndarray, normal: np.ndarray, spacing: float
) -> list[ReferenceSlice | None]:
    """Per derived slice, the reference slice at the same position (None where none is)."""
    if not study.reference_slices:
        return [None] * len(positions)
    reference = np.array([s.position for s in study.reference_slices], dtype=float)
    matches = []
    for position in positions:
        distance = np.linalg.norm(reference - position, axis=1)
        best = int(np.nanargmin(distance)) if np.isfinite(distance).any() else -1
        close = best >= 0 and distance[best] <= _POSITION_TOLERANCE * spacing
        matches.append(study.reference_slices[best] if close else None)
    return matches


@dataclass
class _SliceAttributes:
    """What every derived slice carries, whatever its IOD."""

    study: TargetStudy
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    series_number: int
    instance_number: int
    modality: str
    series_description: str
    derivation_description: str
    now: datetime.datetime
    position: np.ndarray
    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    source: ReferenceSlice | None

    def apply(self, dataset) -> None:
        """Patient, study, series, frame of reference, equipment, image plane, derivation."""
        from pydicom.dataset import Dataset

        from MedFusionLib import __version__

        ds = _decimal_string
        dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names and descriptions of any script
        for keyword, value in self.study.attributes.items():
            if keyword == "StudyDescription" and not value:
                continue  # type 3: absent rather than empty
            setattr(dataset, keyword, value)
        dataset.SOPClassUID = self.sop_class_uid
        dataset.SOPInstanceUID = self.sop_instance_uid
        dataset.SeriesInstanceUID = self.series_uid
        dataset.SeriesNumber = self.series_number
        dataset.InstanceNumber = self.instance_number
        dataset.Modality = self.modality
        dataset.SeriesDescription = self.series_description
        dataset.SeriesDate = dataset.ContentDate = self.now.strftime("%Y%m%d")
        dataset.SeriesTime = dataset.ContentTime = self.now.strftime("%H%M%S")
        dataset.FrameOfReferenceUID = self.study.frame_of_reference_uid
        dataset.PositionReferenceIndicator = ""
        # General Series, type 2C (for paired body parts): a fused volume of both sides has none to give.
        dataset.Laterality = None
        dataset.Manufacturer = "MedFusion"
        dataset.SoftwareVersions = f"MedFusion {__version__}"
        dataset.BurnedInAnnotation = "NO"
        dataset.DerivationDescription = self.derivation_description
        dataset.ImagePositionPatient = [ds(v) for v in self.position]
        dataset.ImageOrientationPatient = [ds(v) for v in (*self.row, *self.column)]
        dataset.PixelSpacing = [ds(v) for v in self.pixel_spacing]  # between rows, then between columns
        dataset.SliceThickness = ds(self.slice_spacing)
        dataset.SpacingBetweenSlices = ds(self.slice_spacing)
        dataset.SliceLocation = ds(float(self.position @ self.normal))
        if self.source is not None and self.source.sop_instance_uid and self.source.sop_class_uid:
            purpose = Dataset()  # DCM 121322: the reference slice this one was computed on
            purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
            purpose.CodeMeaning = "Source image for image processing operation"
            item = Dataset()
            item.ReferencedSOPClassUID = self.source.sop_class_uid
            item.ReferencedSOPInstanceUID = self.source.sop_instance_uid
            item.PurposeOfReferenceCodeSequence = [purpose]
            dataset.SourceImageSequence = [item]


def _file_meta(sop_class: str, sop_instance: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _cross_sectional_slice(
    common: _SliceAttributes, pixels: np.ndarray, slope: str, intercept: str, window: tuple[float, float]
):
    """One CT or MR Image Storage slice (pydicom: highdicom has no constructor for these IODs)."""
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.file_meta = _file_meta(common.sop_class_uid, common.sop_instance_uid)
    common.apply(dataset)
    # Value 3 is required: AXIAL (a cross-section) for CT; for MR none of the defined terms fits, so OTHER.
    dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if common.modality == "CT" else "OTHER"]
    dataset.AcquisitionNumber = None  # type 2: present, empty
    if common.modality == "CT":
        dataset.KVP = None
    else:  # MR Image module: a computed image has no pulse sequence; RM = research mode, the code for that
        dataset.ScanningSequence, dataset.SequenceVariant = "RM", "NONE"
        for keyword in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"):
            setattr(dataset, keyword, None)
    dataset.PatientPosition = ""  # General Series, type 2C for CT and MR
    _grey_pixels(dataset, pixels, slope, intercept)
    _set_window(dataset, window)
    return dataset


def _set_window(dataset, window: tuple[float, float]) -> None:
    """VOI LUT: the whole value range, so the first view shows everything."""
    low, high = window
    dataset.WindowCenter = _decimal_string((low + high) / 2)
    dataset.WindowWidth = _decimal_string(max(high - low, 1e-6))


def _grey_pixels(dataset, pixels: np.ndarray, slope: str, intercept: str) -> None:
    """Image Pixel and Modality LUT attributes of a 16-bit grey slice."""
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    dataset.RescaleIntercept, dataset.RescaleSlope = intercept, slope
    dataset.RescaleType = "US"  # unspecified: fused intensities, not Hounsfield units
    dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def _secondary_capture_slice(
    common: _SliceAttributes, pixels: np.ndarray, slope: str | None, intercept: str | None, window
):
    """One Secondary Capture slice (highdicom's SCImage), grey 16-bit or RGB 8-bit, with the
    Image Plane and Frame of Reference attributes that let viewers stack it."""
    import highdicom

    attributes = common.study.attributes
    colour = pixels.ndim == 3
    grey = pixels if colour or pixels.dtype == np.uint16 else pixels.astype(np.int32) + 32768  # SC: unsigned only
    sc = highdicom.sc.SCImage(
        pixel_array=grey.astype(np.uint8 if colour else np.uint16),
        photometric_interpretation="RGB" if colour else "MONOCHROME2",
        bits_allocated=8 if colour else 16,
        coordinate_system="PATIENT",
        study_instance_uid=str(attributes["StudyInstanceUID"]),
        series_instance_uid=common.series_uid,
        series_number=common.series_number,
        sop_instance_uid=common.sop_instance_uid,
        instance_number=common.instance_number,
        manufacturer="MedFusion",
        patient_orientation=(_orientation_letter(common.row), _orientation_letter(common.column)),
        pixel_spacing=common.pixel_spacing,
    )
    common.apply(sc)
    sc.ConversionType = "WSD"  # workstation: computed, not digitised
    if not colour:
        real_intercept = float(intercept) - (32768 * float(slope) if pixels.dtype != np.uint16 else 0.0)
        sc.RescaleIntercept, sc.RescaleSlope = _decimal_string(real_intercept), slope
        sc.RescaleType = "US"
        _set_window(sc, window)
    return sc


def _orientation_letter(cosines: Sequence[float]) -> str:
    """The patient direction (L, P, H / R, A, F) an in-plane axis points to most (LPS+ axes)."""
    axis = int(np.argmax(np.abs(cosines)))
    return ("LR", "PA", "HF")[axis][0 if cosines[axis] > 0 else 1]


def series_numbers_beside(folder: Path, study_uid: str) -> set[int]:
    """Series Numbers of this study's series in the subfolders of ``folder`` (one header each).

    Earlier runs usually wrote their series beside this one's; a new series takes a number above
    theirs too. (What a PACS already holds cannot be seen from here; ``series_number`` can be set.)
    """
    numbers = set()
    if not folder.is_dir():
        return numbers
    for subfolder in folder.iterdir():
        if not subfolder.is_dir() or subfolder.name.startswith("."):
            continue
        first = next((f for f in sorted(subfolder.iterdir()) if f.is_file()), None)
        if first is None or not has_dicom_preamble(first):
            continue
        header = _dicom_header(first)
        if str(header.get("StudyInstanceUID", "")) == study_uid and header.get("SeriesNumber", None) not in (None, ""):
            numbers.add(int(header.SeriesNumber))
    return numbers


def describe_source(source: PathLike | sitk.Image, series_uid: str | None = None) -> str:
    """How a Derivation Description names an input: ``MR series <UID> ("T1 axial")`` for DICOM,
    the file name otherwise."""
    if isinstance(source, sitk.Image):
        return "an image given in memory"
    chosen, _ = _dicom_series_of(source, series_uid)
    if chosen is None:
        return f"file {Path(source).name}"
    described = f' ("{chosen.description}")' if chosen.description else ""
    return f"{chosen.modality or 'DICOM'} series {chosen.uid}{described}"


def source_modality(source: PathLike | sitk.Image, series_uid: str | None = None) -> str:
    """The DICOM Modality of ``source`` ("" when it is not DICOM or has none)."""
    if isinstance(source, sitk.Image):
        return source.GetMetaData("0008|0060").strip() if source.HasMetaDataKey("0008|0060") else ""
    chosen, _ = _dicom_series_of(source, series_uid)
    return chosen.modality if chosen is not None else ""


def write_fusion_as_dicom(
    result,
    *,
    reference: PathLike | sitk.Image,
    moving: PathLike | sitk.Image,
    fused_directory: PathLike,
    registered_directory: PathLike | None = None,
    source_map_directory: PathLike | None = None,
    reference_series: str | None = None,
    moving_series: str | None = None,
    patient: PatientAttributes = PatientAttributes(),
    overwrite: bool = False,
) -> tuple[TargetStudy, list[DerivedSeries]]:
    """Write a :class:`~MedFusionLib.fusion.pipeline.FusionResult` as derived series of the reference's study.

    The step after fusion: ``reference``/``moving`` are the sources fusion read (paths, so their
    DICOM headers can be re-read; ``*_series`` pick a series in a folder of several). Writes the
    fused volume to ``fused_directory`` and, when given, the registered moving volume and the
    source map; each series names the model, the registration and both source series. A grey
    fused volume keeps the reference's modality (CT/MR Image Storage), an RGB one (functional
    fusion) is Secondary Capture. Returns the study written into (its ``notes`` say what could
    not be copied) and the series, in that order.
    """
    from MedFusionLib import __version__

    study = target_study(reference, series_uid=reference_series, patient=patient)
    targets = [d for d in (fused_directory, registered_directory, source_map_directory) if d is not None]
    for parent in {Path(d).resolve().parent for d in targets}:
        study.series_numbers.update(series_numbers_beside(parent, str(study.attributes["StudyInstanceUID"])))
    registration = "none"
    if result.registration is not None:
        registration = f"{getattr(result.registration, 'preset', '?')} ({getattr(result.registration, 'backend', '?')})"
    sources = (
        f"reference {describe_source(reference, reference_series)}, moving {describe_source(moving, moving_series)}"
    )
    how = f"model {result.model}, registration {registration}"
    derivation = f"MedFusion {__version__}: {{what}} of {sources}; {how}."
    kind = "fused colour" if result.fused.GetNumberOfComponentsPerPixel() == 3 else "fused"
    outputs = [(result.fused, fused_directory, f"MedFusion {kind} ({result.model})", "fusion", None)]
    if registered_directory is not None:
        modality = source_modality(moving, moving_series) or "OT"
        outputs.append((result.registered_moving, registered_directory, f"MedFusion registered {modality}",
                        "the moving image resampled on the reference grid", modality))  # fmt: skip
    if source_map_directory is not None:
        if result.source_map is None:
            raise InputError("no source map was computed; run fusion with source_map=True to write one")
        share = "per voxel, the moving image's share of the fused value (0 reference, 1 moving)"
        outputs.append((result.source_map, source_map_directory, "MedFusion source map (0 ref, 1 moving)", share, "OT"))
    written = []
    for image, directory, description, what, modality in outputs:
        written.append(
            write_derived_series(
                image, directory, study, series_description=description[:64],
                derivation_description=derivation.format(what=what)[:1024], modality=modality, overwrite=overwrite,
            )  # fmt: skip
        )
    return study, written
