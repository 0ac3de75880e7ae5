"""Quality-assurance pictures of a registration: check the alignment at a glance.

:func:`qa_figure` shows the reference and the registered moving image on three orthogonal planes
through the reference body's centre, twice: as a checkerboard (tiles alternate between the two,
so a misalignment breaks every contour at the tile borders) and as an edge overlay (the moving
image's edges in magenta on the reference in grey: they must follow its anatomy).
:func:`write_qa` writes that picture and a small JSON of the registration's figures into a
folder (``medfusion fuse/register --qa DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from MedFusionLib.core.files import atomic_output

PANEL_SIZE = 256  # pixels along each panel's longer side
TILE_MM = 16.0  # checkerboard tile edge
_LABEL_HEIGHT = 18
EDGE_COLOUR = np.array([255, 0, 220], dtype=np.float32)  # magenta: visible on grey, on any colour map
QA_FILES = ("qa.png", "qa.json")

# Plane -> (image column direction, image row direction) in LPS, radiological convention: the
# patient's right on the left; anterior (axial) or superior (coronal, sagittal) at the top.
_PLANES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def plane_slice(image: sitk.Image, plane: str, centre: tuple[float, float, float]) -> np.ndarray:
    """The ``plane`` through ``centre`` (mm, LPS) of ``image``, resampled to square pixels over
    the image's whole field of view: float32 ``(rows, columns)``, at most :data:`PANEL_SIZE` on
    the longer side, whatever the image's direction matrix. Outside the image: its minimum."""
    columns, rows = (np.asarray(v) for v in _PLANES[plane])
    normal = np.cross(columns, rows)
    corners = _corners(image)
    extent_c = corners @ columns
    extent_r = corners @ rows
    width, height = extent_c.max() - extent_c.min(), extent_r.max() - extent_r.min()
    pixel = max(width, height) / PANEL_SIZE
    size = [max(1, int(round(width / pixel))), max(1, int(round(height / pixel))), 1]
    origin = columns * extent_c.min() + rows * extent_r.min() + normal * float(np.dot(centre, normal))
    direction = np.stack([columns, rows, normal], axis=1).ravel()
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(origin + 0.5 * pixel * (columns + rows)),
        (pixel, pixel, pixel),
        tuple(direction),
        background,
    )
    return sitk.GetArrayFromImage(resampled)[0]


def _corners(image: sitk.Image) -> np.ndarray:
    extremes = [(-0.5, size - 0.5) for size in image.GetSize()]
    grid = np.stack(np.meshgrid(*extremes, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.asarray([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in grid])


def _display(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Grey levels in [0, 1]: through ``(level, width)`` when given, else the 1st..99.5th percentile."""
    if window is not None:
        level, width = window
        low, high = level - width / 2.0, level + width / 2.0
    else:
        low, high = np.percentile(values, [1.0, 99.5])
    return np.clip((values - low) / max(high - low, 1e-7), 0.0, 1.0)


def _edges(grey: np.ndarray) -> np.ndarray:
    """Where ``grey`` (in [0, 1]) has a strong edge: gradient magnitude of a lightly smoothed copy
    above its 96th percentile and a quarter of its maximum. Bool, the shape of ``grey``."""
    smooth = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(grey.astype(np.float32)), 1.0)
    )
    rows, columns = np.gradient(smooth)
    magnitude = np.hypot(rows, columns)
    if not magnitude.any():
        return np.zeros_like(grey, dtype=bool)
    return magnitude > max(np.percentile(magnitude, 96.0), 0.25 * magnitude.max())


def qa_figure(
    reference: sitk.Image,
    registered: sitk.Image,
    centre: tuple[float, float, float],
    reference_window: tuple[float, float] | None = None,
    moving_window: tuple[float, float] | None = None,
    title: str = "",
) -> Image.Image:
    """Checkerboard (top row) and edge overlay (bottom row) of ``reference`` and ``registered``
    (the moving image on the reference grid) on the axial, coronal and sagittal planes through
    ``centre`` (mm). Windows are ``(level, width)`` in the image's units, or None for percentiles.
    ``title`` is printed on top (e.g. the confidence summary). Returns an RGB picture."""
    planes = tuple(_PLANES)
    title_height = _LABEL_HEIGHT if title else 0
    cell = PANEL_SIZE + _LABEL_HEIGHT
    figure = Image.new("RGB", (PANEL_SIZE * len(planes), title_height + 2 * cell), "black")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    if title:
        draw.text((6, 3), title, fill="white", font=font)
    for column, plane in enumerate(planes):
        fixed = _display(plane_slice(reference, plane, centre), reference_window)
        moving = _display(plane_slice(registered, plane, centre), moving_window)
        pixel = max(_extent(reference, plane)) / PANEL_SIZE
        tile = max(2, int(round(TILE_MM / pixel)))
        rows, columns = np.indices(fixed.shape)
        board = np.where(((rows // tile + columns // tile) % 2) == 0, fixed, moving)
        overlay = np.repeat(fixed[..., None] * 255.0, 3, axis=-1)
        overlay[_edges(moving)] = EDGE_COLOUR
        for row, (label, pixels) in enumerate(
            (
                (f"checkerboard · {plane}", np.repeat(board[..., None] * 255.0, 3, axis=-1)),
                (f"moving edges on reference · {plane}", overlay),
            )
        ):
            picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            left = column * PANEL_SIZE + (PANEL_SIZE - picture.width) // 2
            top = title_height + row * cell + _LABEL_HEIGHT + (PANEL_SIZE - picture.height) // 2
            figure.paste(picture, (left, top))
            draw.text((column * PANEL_SIZE + 6, title_height + row * cell + 4), label, fill="white", font=font)
    return figure


def _extent(image: sitk.Image, plane: str) -> tuple[float, float]:
    corners = _corners(image)
    return tuple(float(np.ptp(corners @ np.asarray(axis))) for axis in _PLANES[plane])


def write_qa(
    directory: str | Path,
    reference: sitk.Image,
    registered: sitk.Image,
    centre: tuple[float, float, float],
    figures: dict,
    reference_window: tuple[float, float] | None = None,
    moving_window: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``qa.png`` (:func:`qa_figure`) and ``qa.json`` (``figures``: the registration's
    numbers, JSON-ready) into ``directory`` (created if needed), atomically; returns the paths.

    Raises:
        OutputExistsError: a QA file exists there and ``overwrite`` is False.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    confidence = figures.get("confidence") or {}
    title = confidence.get("summary", "")
    figure = qa_figure(reference, registered, centre, reference_window, moving_window, title=_shorten(title))
    png, record = directory / QA_FILES[0], directory / QA_FILES[1]
    with atomic_output(png, overwrite=overwrite) as temporary:
        figure.save(temporary, format="PNG")
    with atomic_output(record, overwrite=overwrite) as temporary:
        Path(temporary).write_text(json.dumps(figures, indent=2, sort_keys=True, default=_plain) + "\n")
    return [png, record]


def _shorten(text: str, limit: int = 120) -> str:
    """The first sentence of ``text``, cut to ``limit`` characters (a picture's title line)."""
    first = text.split(". ")[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-ready")


def registration_figures(result) -> dict:
    """The numbers of a :class:`~MedFusionLib.registration.RegistrationResult` a person checks,
    JSON-ready: preset, backend, seconds, mutual information before/after (positive nats), the
    confidence, the transform as a 3×3 matrix and translation (reference → moving, mm) where it is
    linear, and the orientation search's five best poses with their coarse scores."""
    from dataclasses import asdict

    from MedFusionLib.registration.transforms import affine_parts

    figures = {
        "preset": result.preset,
        "backend": result.backend,
        "seconds": round(result.seconds, 3),
        "mutual_information_before": round(-result.metric_before, 4),
        "mutual_information_after": round(-result.metric_after, 4),
        "confidence": asdict(result.confidence) if result.confidence is not None else None,
    }
    parts = affine_parts(result.transform)
    if parts is not None:
        figures["matrix"] = np.round(parts[0], 6).tolist()
        figures["offset_mm"] = np.round(parts[1], 4).tolist()
    if result.search is not None:
        figures["orientation_search"] = {
            "seconds": round(result.search.seconds, 3),
            "best_poses": [
                {"pose": c.label, "mutual_information": round(c.metric, 4)} for c in result.search.candidates[:5]
            ],
        }
    return figures


def write_registration_qa(directory: str | Path, reference, result, overwrite: bool = False) -> list[Path]:
    """:func:`write_qa` for a registration ``result`` of ``result.registered`` onto ``reference``
    (a :class:`~MedFusionLib.io.gate.PreparedScan`, or an image, which goes through the gate):
    planes through the reference body's centre, a CT shown through the window fusion uses by
    default (:data:`~MedFusionLib.core.choices.DEFAULT_CT_WINDOW`), other images by percentiles."""
    from MedFusionLib.core.choices import DEFAULT_CT_WINDOW
    from MedFusionLib.imaging.normalization import resolve_ct_window
    from MedFusionLib.io.gate import prepare_input
    from MedFusionLib.registration.checks import foreground

    scan = prepare_input(reference, "reference", volume=True, scalar=True)
    ct_window = resolve_ct_window(DEFAULT_CT_WINDOW)
    return write_qa(
        directory,
        scan.image,
        result.registered,
        foreground(scan.image, scan.body_mask()).centroid,
        registration_figures(result),
        ct_window if scan.is_ct else None,
        ct_window if result.registered_is_ct else None,
        overwrite=overwrite,
    )
