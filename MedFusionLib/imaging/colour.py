"""Colour: RGB <-> full-range YCbCr (ITU-R BT.601), the space colour PET/SPECT is fused in.

The fused luminance replaces Y and the colour source's Cb/Cr are kept, as in the fusion literature.
"""

from __future__ import annotations

import numpy as np

from MedFusionLib.core.errors import InputError

# ITU-R BT.601 luma weights; full-range YCbCr as in JPEG/JFIF (Y, Cb, Cr all in [0, 255],
# chroma centred on 128).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def _colour_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0 or array.shape[-1] != 3:
        raise InputError(f"{name} must have shape (..., 3); got {array.shape}.")
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB to full-range YCbCr (ITU-R BT.601 weights, JPEG/JFIF convention).

    ``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = 128 + (B - Y) / 1.772``,
    ``Cr = 128 + (R - Y) / 1.402``.

    Args:
        rgb: array ``(..., 3)`` in [0, 255], any real dtype.

    Returns:
        ``(..., 3)`` array of Y, Cb, Cr in [0, 255]; ``float32`` for ``float32`` input, else
        ``float64``. Exactly inverted by :func:`ycbcr_to_rgb` (up to float rounding).
    """
    rgb = _colour_array(rgb, "rgb")
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = _KR * red + _KG * green + _KB * blue
    chroma_blue = 128.0 + (blue - luma) / (2.0 * (1.0 - _KB))
    chroma_red = 128.0 + (red - luma) / (2.0 * (1.0 - _KR))
    return np.stack([luma, chroma_blue, chroma_red], axis=-1).astype(rgb.dtype, copy=False)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Full-range YCbCr (BT.601, JPEG convention) back to RGB; the inverse of :func:`rgb_to_ycbcr`.

    Args:
        ycbcr: array ``(..., 3)`` of Y, Cb, Cr in [0, 255], any real dtype.

    Returns:
        ``(..., 3)`` RGB, ``float32`` for ``float32`` input, else ``float64``. Not clipped: a
        fused Y with the original Cb/Cr can fall slightly outside [0, 255], so clip (and round)
        before converting to ``uint8``.
    """
    ycbcr = _colour_array(ycbcr, "ycbcr")
    luma, chroma_blue, chroma_red = ycbcr[..., 0], ycbcr[..., 1] - 128.0, ycbcr[..., 2] - 128.0
    red = luma + 2.0 * (1.0 - _KR) * chroma_red
    blue = luma + 2.0 * (1.0 - _KB) * chroma_blue
    green = (luma - _KR * red - _KB * blue) / _KG
    return np.stack([red, green, blue], axis=-1).astype(ycbcr.dtype, copy=False)
