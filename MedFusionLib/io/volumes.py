"""Volumes read and written with SimpleITK: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``),
MetaImage (``.mha``, ``.mhd``). Origin, spacing (mm) and direction travel with the image.

NIfTI is checked beyond what ITK's reader does, where ITK would silently hand over something else
than the file says: a truncated file (ITK fills the missing voxels with zeros), NaN/Inf voxels in a
float file (ITK turns NaN into 0), voxel sizes that are zero, negative or not finite (ITK makes
them 1 or positive), a sheared or singular sform, 1-bit voxels, and a scale slope ITK would ignore
(infinite, or zero/NaN beside an intercept). A slope of 0 or NaN alone means "not scaled" (the
NIfTI standard's 0; nibabel and ITK write NaN, and BraTS files carry it) and is accepted. What
every image must be, whatever its format, is checked by the gate (:mod:`MedFusionLib.io.gate`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import atomic_output
from MedFusionLib.core.resources import require_memory

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


def file_extension(path: Path) -> str:
    """The lower-case extension, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def itk_reason(error: RuntimeError) -> str:
    """The useful last line of a SimpleITK exception, without source-file noise."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    return reason.removeprefix("sitk::ERROR:").strip()


def read_volume(path: Path, format_name: str) -> sitk.Image:
    """Read a volume file of ``format_name`` (a value of :data:`VOLUME_FORMATS`, or ``"DICOM"`` for a
    lone DICOM file), refusing before allocation when its voxels would not fit in memory."""
    if format_name == "NIfTI":
        _require_sound_nifti_header(path)
        _require_complete_nifti(path)
    if format_name == "NRRD":
        _require_sound_nrrd_axes(path)
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
            f"Could not read {path} as {format_name}: {itk_reason(error)}. Check that the "
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


# NIfTI datatype codes ITK cannot read (1-bit voxels) and what to say about them.
_NIFTI_BINARY = 1
# Relative tolerance for an sform's columns to count as orthogonal: writers' rounding stays near 1e-6.
_SFORM_TOLERANCE = 1e-3


def _require_sound_nifti_header(path: Path) -> None:
    """Refuse what ITK's NIfTI reader would silently change: 1-bit voxels (unreadable), voxel
    sizes that are zero, negative or not finite (made 1 or positive), a sheared, singular or
    non-finite sform (an ITK error without the fix, or a quiet fall-back to the qform), and a scale
    slope that is infinite, or zero/NaN beside an intercept (ignored, so the values would be off)."""
    import nibabel

    try:
        with (gzip.open(path, "rb") if file_extension(path) == ".nii.gz" else open(path, "rb")) as stream:
            head = stream.read(4)
            stream.seek(0)
            size = max(int.from_bytes(head, "little"), int.from_bytes(head, "big")) if len(head) == 4 else 0
            header_class = nibabel.Nifti2Header if size == 540 else nibabel.Nifti1Header
            header = header_class.from_fileobj(stream, check=False)
    except Exception as error:  # nibabel and gzip raise many types for a damaged header
        raise InputError(
            f"Could not read {path} as NIfTI: the header is damaged ({error}). Check that the "
            "file is complete and really NIfTI (re-export or re-download it)."
        ) from error
    if int(header["datatype"]) == _NIFTI_BINARY:
        raise InputError(
            f"{path} stores 1-bit (boolean) voxels: a mask, not a scan. Give the scan itself, or save "
            "the mask as 8-bit integers (uint8) if a mask is really what you want to fuse."
        )
    spatial = max(1, min(3, int(header["dim"][0])))
    voxel_sizes = np.asarray(header["pixdim"][1 : spatial + 1], dtype=np.float64)
    if not (np.isfinite(voxel_sizes).all() and (voxel_sizes > 0).all()):
        raise InputError(
            f"{path}: its voxel size (pixdim) is {tuple(float(v) for v in voxel_sizes)} mm; each must be a "
            "positive finite number (ITK would quietly replace it). Fix the header (e.g. nibabel's "
            "header.set_zooms) or re-export the scan."
        )
    if int(header["sform_code"]) > 0:
        _require_sound_sform(path, np.asarray(header.get_sform(), dtype=np.float64)[:3, :spatial])
    slope, intercept = float(header["scl_slope"]), float(header["scl_inter"])
    unset_slope = slope == 0 or np.isnan(slope)
    if np.isinf(slope) or (unset_slope and np.isfinite(intercept) and intercept != 0):
        raise InputError(
            f"{path}: its scale slope is {slope} (with intercept {intercept}), so its stored values cannot be "
            "turned into real ones (readers would ignore the scaling). Re-export the scan, or fix scl_slope "
            "in the header (1 for unscaled data)."
        )


def _require_sound_sform(path: Path, columns: np.ndarray) -> None:
    """The sform's voxel axes (``columns``: 3 × D, mm per voxel) must be finite, non-zero and
    orthogonal: ITK only supports orthonormal directions times positive spacings."""
    lengths = np.linalg.norm(columns, axis=0)
    if not np.isfinite(columns).all() or (lengths == 0).any():
        raise InputError(
            f"{path}: its sform (voxel-to-world matrix) is singular or not finite, so the voxels have no "
            "position in space. Fix the header or re-export the scan from the scanner or the tool that made it."
        )
    unit = columns / lengths
    gram = unit.T @ unit
    if np.abs(gram - np.eye(gram.shape[0])).max() > _SFORM_TOLERANCE:
        raise InputError(
            f"{path}: its sform (voxel-to-world matrix) is sheared (its voxel axes are not perpendicular), "
            "which MedFusion's image model cannot hold. Resample it onto a grid with perpendicular axes "
            "(e.g. in 3D Slicer, or with nibabel.processing.resample_from_to), then retry."
        )


def _require_sound_nrrd_axes(path: Path) -> None:
    """Refuse NRRD voxel axes ITK would quietly change (a non-finite spacing becomes 1) or fail on
    with a bare matrix row (axes that are parallel or zero: a singular grid)."""
    with open(path, "rb") as stream:
        header = stream.read(1 << 16).split(b"\n\n", 1)[0].decode("latin-1")
    fields = dict(line.split(":", 1) for line in header.splitlines()[1:] if ":" in line and not line.startswith("#"))
    directions = fields.get("space directions", "").replace("none", "")
    try:
        vectors = [[float(v) for v in vector.split(",")] for vector in directions.replace(")", "").split("(")[1:]]
        spacings = [float(v) for v in fields.get("spacings", "").split()]
    except ValueError:
        return  # a header ITK's reader will judge itself, with its own message
    domain_axes = sum(kind in ("domain", "space") for kind in fields.get("kinds", "").split())
    problem = ""
    if fields.get("space directions") and domain_axes > len(vectors):
        problem = f"{domain_axes - len(vectors)} of its spatial axes have no direction ('none'; a NaN spacing written)"
    elif spacings and not all(np.isfinite(v) and v > 0 for v in spacings):
        problem = f"its spacings are {spacings}"
    elif vectors and not np.isfinite(vectors).all():
        problem = "its space directions are not finite"
    elif vectors and len({len(v) for v in vectors}) == 1 and len(vectors) == len(vectors[0]):
        if abs(np.linalg.det(np.asarray(vectors))) < 1e-12:
            problem = "its space directions are singular (parallel or zero axes)"
    if problem:
        raise InputError(
            f"{path}: {problem}, so its voxels have no size or place in space. Fix the header's 'space "
            "directions' (or 'spacings') with the scanner's axes in mm, or re-export the scan."
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
    if file_extension(path) == ".nii.gz":
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


def write_volume(image: sitk.Image, target: Path, extension: str, *, overwrite: bool, compress: bool) -> None:
    """Write ``image`` to ``target`` atomically in the volume format ``extension`` names (a key of
    :data:`VOLUME_FORMATS`), keeping pixel type and geometry; ``compress`` gzips NRRD/MetaImage data."""
    with atomic_output(target, overwrite=overwrite) as temporary:
        # ITK's NIfTI writer accepts lower-case extensions only: write so, then rename.
        written = temporary.with_name(temporary.name[: -len(extension)] + extension)
        try:
            sitk.WriteImage(image, str(written), useCompression=compress)
        except RuntimeError as error:
            raise InputError(
                f"Could not write {target}: {itk_reason(error)}. Check free disk space and "
                "that the format can hold this pixel type."
            ) from error
        os.replace(written, temporary)
