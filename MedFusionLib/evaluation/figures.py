"""Figures people look at: source A, source B and the fused image side by side, as a PNG.

Volumes are shown in radiological convention (patient's right on the image's left, anterior or
superior at the top) at their physical aspect ratio, whatever their direction matrix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from MedFusionLib.core.files import atomic_output

PANEL_SIZE = 256  # pixels along the longer side of each panel
_LABEL_HEIGHT = 22


def display_slice(image: sitk.Image, plane: str = "axial", index: int | None = None) -> np.ndarray:
    """One slice of ``image`` as an 8-bit display array.

    A 2D image is returned as is (scalar -> ``(H, W)``, RGB -> ``(H, W, 3)``), windowed to its 1st
    to 99.5th percentile. A 3D image is reoriented to LPS, the slice at ``index`` (default: the
    middle) along ``plane`` is taken, flipped so superior is up for coronal and sagittal views,
    and resized to its physical aspect ratio. Returns uint8.
    """
    if image.GetDimension() == 3:
        oriented = sitk.DICOMOrient(image, "LPS")
        values = sitk.GetArrayFromImage(oriented)  # [z (I->S), y (A->P), x (R->L)]
        spacing_x, spacing_y, spacing_z = oriented.GetSpacing()
        if plane == "axial":
            position = values.shape[0] // 2 if index is None else index
            pixels, aspect = values[position], spacing_y / spacing_x
        elif plane == "coronal":
            position = values.shape[1] // 2 if index is None else index
            pixels, aspect = values[::-1, position, :], spacing_z / spacing_x
        elif plane == "sagittal":
            position = values.shape[2] // 2 if index is None else index
            pixels, aspect = values[::-1, :, position], spacing_z / spacing_y
        else:
            raise ValueError(f"unknown plane {plane!r}")
    else:
        pixels, aspect = sitk.GetArrayFromImage(image), image.GetSpacing()[1] / image.GetSpacing()[0]
    if pixels.dtype != np.uint8:
        low, high = np.percentile(pixels, [1.0, 99.5])
        pixels = np.clip((pixels.astype(np.float32) - low) / max(high - low, 1e-7) * 255.0, 0, 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    physical_height = height * aspect
    scale = PANEL_SIZE / max(physical_height, width)
    size = (max(int(round(width * scale)), 1), max(int(round(physical_height * scale)), 1))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def comparison_figure(panels: dict[str, sitk.Image], planes: tuple[str, ...] = ("axial",)) -> Image.Image:
    """A grid with one column per labelled image and one row per plane (rows ignored for 2D).

    Typical use: ``{"CT (reference)": ct, "MR (registered)": mr, "fused": fused}``, the seed's
    three panels. Each panel is labelled above; panels are centred in ``PANEL_SIZE`` squares.
    """
    rows = planes if next(iter(panels.values())).GetDimension() == 3 else ("2d",)
    cell = PANEL_SIZE + _LABEL_HEIGHT
    figure = Image.new("RGB", (PANEL_SIZE * len(panels), cell * len(rows)), "black")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for row, plane in enumerate(rows):
        for column, (label, image) in enumerate(panels.items()):
            pixels = Image.fromarray(display_slice(image, plane if plane != "2d" else "axial")).convert("RGB")
            left = column * PANEL_SIZE + (PANEL_SIZE - pixels.width) // 2
            top = row * cell + _LABEL_HEIGHT + (PANEL_SIZE - pixels.height) // 2
            figure.paste(pixels, (left, top))
            caption = label if plane == "2d" else f"{label} · {plane}"
            draw.text((column * PANEL_SIZE + 6, row * cell + 5), caption, fill="white", font=font)
    return figure


def save_figure(figure: Image.Image, path, overwrite: bool = False) -> None:
    """Write a figure as PNG, atomically (see :func:`~MedFusionLib.core.files.atomic_output`)."""
    with atomic_output(path, overwrite=overwrite) as temporary:
        figure.save(temporary, format="PNG")
