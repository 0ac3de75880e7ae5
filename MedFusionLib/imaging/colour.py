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


# -- colour maps for functional volumes (PET, SPECT) ---------------------------------------------
#
# Each map is a list of control points (position in [0, 1], R, G, B in 0-255), linear in between;
# 0 is no uptake (black for every map, so a cold voxel adds no colour and the MRI shows through
# in grey), 1 the top of the display range. The two Harvard maps are fitted to the Whole Brain
# Atlas pictures the models were trained and scored on (bench/fit_colour_maps.py: a principal
# curve through their colours, parametrised by arc length); the script prints how far the
# pictures' pixels lie from them. Names are listed in core/choices.py (FUNCTIONAL_COLOUR_MAPS).
COLOUR_MAPS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    # Harvard PET (FDG): black, dark blue, blue, a pale blue-green, yellow, orange, red, magenta.
    "harvard-pet": (
        (0.0, 0, 0, 0), (0.091, 0, 1, 89), (0.182, 0, 37, 181), (0.273, 19, 93, 229), (0.364, 87, 143, 167),
        (0.455, 148, 183, 106), (0.545, 212, 226, 42), (0.636, 254, 207, 0), (0.727, 255, 102, 0),
        (0.818, 255, 13, 13), (0.909, 255, 0, 115), (1.0, 255, 0, 213),
    ),
    # Harvard SPECT (perfusion): black, a dark grey-teal, violet, pink, orange, a pale pink-white.
    "harvard-spect": (
        (0.0, 0, 0, 0), (0.091, 22, 38, 39), (0.182, 49, 55, 86), (0.273, 80, 14, 131), (0.364, 130, 39, 133),
        (0.455, 176, 78, 122), (0.545, 210, 97, 81), (0.636, 241, 110, 29), (0.727, 255, 144, 73),
        (0.818, 255, 166, 124), (0.909, 255, 191, 182), (1.0, 255, 218, 245),
    ),
    # The "hot" (heated-body) scale of PET viewers: black, red, yellow, white.
    "hot": ((0.0, 0, 0, 0), (0.375, 255, 0, 0), (0.75, 255, 255, 0), (1.0, 255, 255, 255)),
    # A rainbow that starts at black (as PET viewers' rainbow does): black, blue, cyan, green,
    # yellow, red. A jet that starts at dark blue would tint every cold voxel blue.
    "rainbow": (
        (0.0, 0, 0, 0), (0.15, 0, 0, 160), (0.3, 0, 0, 255), (0.45, 0, 255, 255),
        (0.6, 0, 255, 0), (0.75, 255, 255, 0), (1.0, 255, 0, 0),
    ),
}


def _control_points(name: str) -> np.ndarray:
    try:
        return np.asarray(COLOUR_MAPS[name], dtype=np.float64)
    except KeyError:
        raise InputError(f"unknown colour map {name!r}; choose one of {', '.join(COLOUR_MAPS)}") from None


def apply_colour_map(values: np.ndarray, name: str) -> np.ndarray:
    """Colours of ``values`` through the named map (linear between its control points).

    Args:
        values: any shape, in [0, 1] (clipped): 0 = no uptake, 1 = top of the display range.
        name: a key of :data:`COLOUR_MAPS`.

    Returns:
        float32 ``values.shape + (3,)``, RGB in [0, 255].
    """
    points = _control_points(name)
    flat = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    channels = [np.interp(flat, points[:, 0], points[:, channel]).astype(np.float32) for channel in (1, 2, 3)]
    return np.stack(channels, axis=-1)


def colour_map_table(name: str, entries: int = 256) -> np.ndarray:
    """The named map sampled at ``entries`` evenly spaced values of [0, 1]: ``(entries, 3)`` float32 RGB in [0, 255]."""
    return apply_colour_map(np.linspace(0.0, 1.0, entries), name)


def colour_map_luminance(values: np.ndarray, name: str) -> np.ndarray:
    """Y (BT.601 luma, [0, 1]) of ``values`` seen through the named map: what a fusion model sees of a
    colour-mapped functional image. float32, ``values``' shape."""
    rgb = apply_colour_map(values, name)
    return (rgb @ np.asarray([_KR, _KG, _KB], dtype=np.float32)) / np.float32(255.0)


def scalar_from_colour(
    rgb: np.ndarray, name: str, entries: int = 256, chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """Invert a colour map: for each RGB colour, the value in [0, 1] whose map colour is nearest.

    Recovers the uptake scale of a pseudo-colour picture (e.g. a Harvard PET picture through
    ``harvard-pet``), to quantisation of ``entries`` steps.

    Args:
        rgb: ``(..., 3)`` in [0, 255].

    Returns:
        ``(values, distance)``: float32 arrays of shape ``rgb.shape[:-1]``: the value in [0, 1],
        and the RGB distance (0-255 units) from the colour to the map, which says how well the
        picture follows the map.
    """
    colours = _colour_array(rgb, "rgb").reshape(-1, 3).astype(np.float32)
    table = colour_map_table(name, entries)
    values = np.empty(len(colours), dtype=np.float32)
    distance = np.empty(len(colours), dtype=np.float32)
    table_norms = (table**2).sum(axis=1)
    for start in range(0, len(colours), chunk):
        block = colours[start : start + chunk]
        # Squared distances to every table entry, (block, entries), without a (block, entries, 3) temporary.
        squared = (block**2).sum(axis=1, keepdims=True) - 2.0 * block @ table.T + table_norms
        nearest = squared.argmin(axis=1)
        values[start : start + chunk] = nearest / np.float32(entries - 1)
        distance[start : start + chunk] = np.sqrt(np.maximum(squared[np.arange(len(block)), nearest], 0.0))
    shape = np.shape(rgb)[:-1]
    return values.reshape(shape), distance.reshape(shape)
