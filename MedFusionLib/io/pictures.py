"""2D pictures read and written with Pillow: PNG, JPEG, BMP, TIFF.

They carry no geometry (spacing 1, origin 0, identity direction on reading; geometry is dropped on
writing). Grayscale gives a scalar image; colour gives a 3-component ``uint8`` image, except that a
colour picture whose three channels are equal is returned as scalar grayscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError

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


def read_picture(path: Path, format_name: str) -> sitk.Image:
    """Read a single-page picture of ``format_name`` (a value of :data:`PICTURE_FORMATS`) as a 2D
    scalar image, or a 3-component ``uint8`` image for colour."""
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
        if format_name == "TIFF" and _tiff_sample(path) == (16, _TIFF_FLOAT):
            raise InputError(
                f"{path} holds 16-bit floating-point (half precision) samples, which are not read here. "
                "Save it with 32-bit float samples (e.g. numpy .astype('float32')), or as a volume (.nii.gz, .nrrd)."
            ) from error
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


_TIFF_FLOAT = 3  # SampleFormat: IEEE floating point
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 258, 339


def _tiff_sample(path: Path) -> tuple[int, int] | None:
    """``(bits per sample, sample format)`` of a TIFF's first image, read from its first directory
    (Pillow refuses some sample types before it shows any tag); ``None`` if it cannot be read."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            order = {b"II": "<", b"MM": ">"}[head[:2]]
            file.seek(int(np.frombuffer(head[4:8], f"{order}u4")[0]))
            count = int(np.frombuffer(file.read(2), f"{order}u2")[0])
            entries = np.frombuffer(file.read(12 * count), np.dtype([("tag", f"{order}u2"), ("type", f"{order}u2"),
                                                                     ("count", f"{order}u4"), ("value", "V4")]))
    except (OSError, KeyError, ValueError, IndexError):
        return None
    found = {_TIFF_BITS_PER_SAMPLE: 1, _TIFF_SAMPLE_FORMAT: 1}  # the TIFF defaults: 1 bit, unsigned integer
    for entry in entries:
        if entry["tag"] in found and entry["count"] <= 2:  # SHORT values held in the entry itself
            found[int(entry["tag"])] = int(np.frombuffer(bytes(entry["value"])[:2], f"{order}u2")[0])
    return found[_TIFF_BITS_PER_SAMPLE], found[_TIFF_SAMPLE_FORMAT]


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


def picture_array(image: sitk.Image, path: Path, extension: str) -> np.ndarray:
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


def write_picture(array: np.ndarray, temporary: Path, extension: str, compress: bool) -> None:
    """Save an array from :func:`picture_array` to ``temporary`` in the format of ``extension``."""
    from PIL import Image

    format_name = PICTURE_FORMATS[extension]
    options: dict = {}
    if format_name == "JPEG":
        options = {"quality": 95, "subsampling": 0}  # no chroma subsampling: colour maps stay sharp
    elif format_name == "TIFF" and compress:
        options = {"compression": "tiff_deflate"}
    Image.fromarray(array).save(temporary, format=format_name, **options)
