"""Figures people look at, drawn with one font and written as PNG.

* :func:`comparison_figure`: source A, source B and the fused image side by side, volumes in
  radiological convention (patient's right on the image's left, anterior or superior at the top)
  at their physical aspect ratio, whatever their direction matrix.
* :func:`examples_figure`: the evaluation's grid of example pairs and each method's fused image.
* :func:`flicker_figure`: a fused volume's inter-slice consistency against its sources.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from MedFusionLib.core.files import atomic_output
from MedFusionLib.evaluation.scoring import PIXELWISE_MAX_LABEL, Example, VolumeEvaluation
from MedFusionLib.imaging.colour import rgb_to_ycbcr, ycbcr_to_rgb

PANEL_SIZE = 256  # pixels along the longer side of each comparison panel
TILE = 192  # pixels per image in the evaluation's example grid (many columns)
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
    font = _font(10)
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


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _display_rgb(levels: np.ndarray, colour_source: np.ndarray | None) -> Image.Image:
    """8-bit gray levels as an RGB tile; with ``colour_source``, its chroma on these levels as Y."""
    if colour_source is None:
        rgb = np.repeat(levels.astype(np.uint8)[..., None], 3, axis=-1)
    else:
        ycbcr = rgb_to_ycbcr(colour_source)
        ycbcr[..., 0] = levels
        rgb = np.clip(np.round(ycbcr_to_rgb(ycbcr)), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.BILINEAR)


def examples_figure(examples: list[Example], title: str) -> Image.Image:
    """A grid: one row per example pair; columns A, B, then each method's fused image.

    Images are shown at their 8-bit levels, unwindowed, so brightness differences between
    methods are real. Fused PET/SPECT is shown in colour (fused Y with the source's chroma).
    """
    if not examples:
        raise ValueError("examples_figure needs at least one example")
    methods = list(examples[0].fused)
    columns = ["A: MRI", f"B: {examples[0].images.pair.other_modality}", *methods]
    label_height, title_height = 24, 30
    figure = Image.new("RGB", (TILE * len(columns), title_height + label_height + TILE * len(examples)), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((8, 6), title, fill="black", font=_font(16))
    for column, label in enumerate(columns):
        draw.text((column * TILE + 6, title_height + 4), label, fill="black", font=_font(14))
    for row, example in enumerate(examples):
        images = example.images
        tiles = [
            _display_rgb(images.source_a, None),
            Image.fromarray(images.other_rgb).resize((TILE, TILE), Image.Resampling.BILINEAR)
            if images.other_rgb is not None
            else _display_rgb(images.source_b, None),
            *(_display_rgb(example.fused[m], images.other_rgb) for m in methods),
        ]
        top = title_height + label_height + row * TILE
        for column, tile in enumerate(tiles):
            figure.paste(tile, (column * TILE, top))
        draw.text((4, top + 4), images.pair.pair_id, fill="yellow", font=_font(12))
    return figure


LINE_COLOURS = {
    "fused": (200, 30, 30),
    "A": (30, 90, 200),
    "B": (30, 150, 60),
    PIXELWISE_MAX_LABEL: (120, 120, 120),
}


def _line_chart(series: dict[str, np.ndarray], width: int, height: int, x_label: str, y_label: str) -> Image.Image:
    """A minimal line chart of equally long series (NaN gaps allowed), with axes and a legend."""
    chart = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(chart)
    left, right, top, bottom = 60, 20, 44, 40
    length = max(len(values) for values in series.values())
    peak = max(float(np.nanmax(values)) for values in series.values() if np.any(np.isfinite(values)))
    peak = peak if peak > 0 else 1.0

    def point(index: int, value: float) -> tuple[float, float]:
        x = left + (width - left - right) * index / max(length - 1, 1)
        y = height - bottom - (height - top - bottom) * value / (1.05 * peak)
        return x, y

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for fraction in (0.0, 0.5, 1.0):
        value = fraction * peak
        _, y = point(0, value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{value:.1f}", fill="black", font=_font(11))
    for index in np.linspace(0, length - 1, min(length, 6)).round().astype(int):
        x, _ = point(int(index), 0)
        draw.line([(x, height - bottom), (x, height - bottom + 4)], fill="black")
        draw.text((x - 6, height - bottom + 6), str(int(index)), fill="black", font=_font(11))
    draw.text((left, height - 16), x_label, fill="black", font=_font(12))
    draw.text((4, 2), y_label, fill="black", font=_font(12))
    for name, values in series.items():
        colour = LINE_COLOURS.get(name, (0, 0, 0))
        segment: list[tuple[float, float]] = []
        for index, value in enumerate(values):
            if np.isfinite(value):
                segment.append(point(index, float(value)))
            elif segment:
                draw.line(segment, fill=colour, width=2)
                segment = []
        if len(segment) > 1:
            draw.line(segment, fill=colour, width=2)
    x = 4  # legend: one row above the plot, clear of the curves
    for name in series:
        draw.line([(x, 28), (x + 20, 28)], fill=LINE_COLOURS.get(name, (0, 0, 0)), width=3)
        draw.text((x + 24, 21), name, fill="black", font=_font(12))
        x += 24 + int(draw.textlength(name, font=_font(12))) + 16
    return chart


def _reformat(volume: np.ndarray, spacing: tuple[float, float, float] | None) -> Image.Image:
    """The middle (slice, column) plane of ``(S, H, W)``: stripes of slice-wise fusion run across it."""
    plane = volume[:, volume.shape[1] // 2, :][::-1]  # first slice at the bottom
    height = plane.shape[0] * (spacing[0] / spacing[2] if spacing else 1.0)
    picture = Image.fromarray(plane.astype(np.uint8)).convert("RGB")
    scale = TILE / max(height, plane.shape[1])
    size = (max(1, round(plane.shape[1] * scale)), max(1, round(height * scale)))
    return picture.resize(size, Image.Resampling.NEAREST)


def flicker_figure(volume: VolumeEvaluation, title: str = "Inter-slice consistency") -> Image.Image:
    """Consecutive-slice change of fused vs sources, and reformats across the fusion axis.

    Left: mean absolute 8-bit change between neighbouring slices, for the fused volume, each
    source and the pixelwise larger source change (what a pixelwise rule cannot exceed). A
    fused curve above the grey one is flicker. Right: planes through the slice axis of A, B and
    the fused volume, where slice-wise artefacts appear as horizontal stripes.
    """
    chart = _line_chart(volume.slice_changes, 560, 300, "slice gap", "mean |change| (8-bit levels)")
    reformats = [("A", volume.source_a), ("B", volume.source_b), ("fused", volume.fused)]
    tiles = [(label, _reformat(values, volume.spacing)) for label, values in reformats]
    tiles_width = sum(tile.width for _, tile in tiles) + 10 * len(tiles)
    figure = Image.new("RGB", (chart.width + tiles_width + 10, max(chart.height, TILE + 24) + 50), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((8, 6), title, fill="black", font=_font(16))
    text = (f"flicker ratio (fused / pixelwise max): median {volume.median_flicker:.2f}, "
            f"worst {volume.worst_flicker:.2f}")
    draw.text((8, 28), text, fill="black", font=_font(12))
    figure.paste(chart, (0, 50))
    x = chart.width + 10
    for label, tile in tiles:
        draw.text((x, 52), f"{label}, across slices", fill="black", font=_font(12))
        figure.paste(tile, (x, 72))
        x += tile.width + 10
    return figure
