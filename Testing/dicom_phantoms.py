"""A synthetic CT as a DICOM series with a scanner's tags: the reference for the DICOM export tests.

The phantom is in Hounsfield units: air -1000 around a water body (40 HU) with a bone ring (700 HU)
and a patient table below it, stored as a CT scanner stores it (unsigned 16 bits, intercept -1024).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def ct_phantom_hu(slices: int, rows: int, columns: int) -> np.ndarray:
    """(slices, rows, columns) int16 HU: body ellipse, bone ring, table in the lowest rows."""
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = rows * 0.45, columns / 2
    radius = ((y - cy) / (rows * 0.32)) ** 2 + ((x - cx) / (columns * 0.4)) ** 2
    section = np.full((rows, columns), -1000, np.int16)
    section[radius < 1] = 40
    section[(radius > 0.55) & (radius < 0.75)] = 700
    section[int(rows * 0.85) : int(rows * 0.9), 2:-2] = 300  # the table
    volume = np.repeat(section[None], slices, axis=0)
    # A lesion that changes from slice to slice, so slice order is visible.
    for k in range(slices):
        volume[k, int(cy) - 2 : int(cy) + 2, int(cx) - 6 + k : int(cx) - 2 + k] = 120
    return volume


def write_ct_series(
    directory: Path,
    *,
    shape: tuple[int, int, int] = (6, 24, 28),
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.5),  # (between columns, between rows, between slices)
    row_cosines=(1.0, 0.0, 0.0),
    column_cosines=(0.0, 1.0, 0.0),
    origin=(-10.0, -12.5, 30.0),
    drop: tuple[str, ...] = (),
) -> dict:
    """Write the phantom as a CT series in ``directory``, one file per slice, slices along
    ``row x column``; ``drop`` names attributes to leave out (e.g. ``"StudyInstanceUID"``).

    Returns the series' identity: patient/study attributes, UIDs and the per-slice SOP Instance UIDs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(row_cosines, float), np.asarray(column_cosines, float)
    normal = np.cross(row, column)
    hu = ct_phantom_hu(*shape)
    identity = {
        "PatientName": "Doe^Jane",
        "PatientID": "MF-0042",
        "PatientBirthDate": "19610314",
        "PatientSex": "F",
        "StudyInstanceUID": generate_uid(),
        "StudyDate": "20260401",
        "StudyTime": "101500",
        "AccessionNumber": "ACC123456",
        "StudyID": "4711",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "CT ABDOMEN",
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": 3,
        "FrameOfReferenceUID": generate_uid(),
    }
    instances = []
    for index in range(shape[0]):
        uid = generate_uid()
        instances.append(uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, uid
        for keyword, value in identity.items():
            if keyword not in drop:
                setattr(ds, keyword, value)
        ds.SeriesDescription = "Abdomen 2.5 mm"
        ds.Modality = "CT"
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Phantom CT"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.PatientPosition = "HFS"
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "ABDOMEN"
        position = np.asarray(origin, float) + index * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.SliceLocation = f"{position @ normal:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = (hu[index].astype(np.int32) + 1024).astype("<u2").tobytes()
        # File names in reverse slice order: readers must sort by position, and so must the matching.
        pydicom.dcmwrite(directory / f"IM{shape[0] - index:04d}", ds, enforce_file_format=True)
    return {**identity, "instances": instances, "hu": hu}
