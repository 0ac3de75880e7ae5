"""What Slicer's slice views show after the panel's runs, rendered through slicer-core's real
``vtkMRMLSliceLogic`` (the layer pipeline the views draw from: background, foreground, opacity,
window/level, colour tables, vector volume display) for the Red (axial), Yellow (sagittal) and
Green (coronal) views, with the pixels checked against the volumes' own voxels.

With ``MEDFUSION_VIEW_PICTURES=<folder>`` the tests also write the pictures the README shows
(``docs/slicer-view-*.png``): ``MEDFUSION_VIEW_PICTURES=docs python -m pytest Testing/test_slicer_views.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="the slicer-core wheel (a real MRML scene) is not available for this Python")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

import slicer
import vtk
from test_slicer_widget import _add, _apply_ready, _choose, _wait, phantoms, stand  # noqa: F401 (fixtures)
from vtk.util.numpy_support import vtk_to_numpy

VIEWS = ("Red", "Yellow", "Green")


def render(standin, view: str) -> np.ndarray:
    """The view's picture as the slice logic blends it: ``(rows, columns, 3)`` uint8, top row first."""
    logic = standin.app.layoutManager().logics[view]
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    columns, rows, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def voxels_under(standin, view: str, node) -> tuple[np.ndarray, np.ndarray]:
    """The ``node``'s voxel value (nearest voxel; components last) under each pixel of ``view``,
    and where the pixel lies inside the volume; both top row first, like :func:`render`."""
    logic = standin.app.layoutManager().logics[view]
    columns, rows, _ = logic.GetSliceNode().GetDimensions()
    xy_to_ras = logic.GetSliceNode().GetXYToRAS()
    ras_to_ijk = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(ras_to_ijk)
    to_ijk = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)]) @ np.array(
        [[xy_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)]
    )
    y, x = np.mgrid[0:rows, 0:columns]
    xy = np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
    ijk = np.rint(to_ijk @ xy)[:3].astype(int)
    voxels = slicer.util.arrayFromVolume(node)  # (k, j, i[, components])
    inside = np.all((ijk >= 0) & (ijk < np.array(voxels.shape[:3][::-1])[:, None]), axis=0)
    i, j, k = (np.clip(ijk[a], 0, voxels.shape[2 - a] - 1) for a in range(3))
    values = voxels[k, j, i].reshape(rows, columns, *voxels.shape[3:])
    return values[::-1], inside.reshape(rows, columns)[::-1]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def save(name: str, pictures: list[np.ndarray]) -> None:
    """Side by side, 4 px apart, as ``<MEDFUSION_VIEW_PICTURES>/slicer-view-<name>.png``."""
    folder = os.environ.get("MEDFUSION_VIEW_PICTURES")
    if not folder:
        return
    from PIL import Image

    gap = np.full((pictures[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([part for picture in pictures for part in (picture, gap)][:-1], axis=1)
    Image.fromarray(row).save(Path(folder) / f"slicer-view-{name}.png", optimize=True)


@pytest.fixture()
def registered_run(stand, phantoms):  # noqa: F811 (pytest fixtures)
    """The panel after a rigid registration and fusion of the misaligned phantom CT and MR."""
    panel, ct, mr = _apply_ready(stand, phantoms, registration="rigid")
    panel.ui.applyButton.click()
    _wait(panel)
    assert stand.dialogs == [], stand.dialogs
    return panel, ct, slicer.util.getNode("CT + MR fused (average)"), slicer.util.getNode("MR registered")


def test_the_fused_grey_volume_in_the_three_views(stand, registered_run):  # noqa: F811
    """After Apply each view shows the fused volume (grey: R = G = B), pixel for pixel its voxels
    through its window; the reference overlay off (overlay opacity 0)."""
    panel, ct, fused, registered = registered_run
    panel.ui.referenceOpacitySliderWidget.value = 0.0
    pictures = []
    for view in VIEWS:
        picture = render(stand, view)
        values, inside = voxels_under(stand, view, fused)
        assert inside.mean() > 0.3, view
        assert np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])
        assert correlation(picture[..., 0][inside], values[inside]) > 0.9, view
        pictures.append(picture)
    save("fused", pictures)


def test_fade_shows_reference_then_mix_then_registered(stand, registered_run):  # noqa: F811
    """The fade slider at 0 shows the reference, at 1 the registered moving volume, at 0.5 their
    mix (within rounding), in every view."""
    panel, ct, fused, registered = registered_run
    shown = {}
    for fade in (0.0, 0.5, 1.0):
        panel.ui.fadeSliderWidget.value = fade
        shown[fade] = [render(stand, view).astype(int) for view in VIEWS]
    for index, view in enumerate(VIEWS):
        reference, inside = voxels_under(stand, view, ct)
        moving, _ = voxels_under(stand, view, registered)
        assert correlation(shown[0.0][index][..., 0][inside], reference[inside]) > 0.9, view
        assert correlation(shown[1.0][index][..., 0][inside], moving[inside]) > 0.9, view
        mix = (shown[0.0][index] + shown[1.0][index]) / 2
        assert np.abs(shown[0.5][index] - mix).max() <= 1.5, view
        assert np.abs(shown[0.0][index] - shown[1.0][index]).mean() > 5, view  # two different pictures
    save("fade", [shown[fade][0].astype(np.uint8) for fade in (0.0, 0.5, 1.0)])


def test_checkerboard_alternates_reference_and_registered(stand, registered_run):  # noqa: F811
    panel, ct, fused, registered = registered_run
    panel.ui.checkerboardButton.click()
    board = slicer.util.getNode("CT / MR checkerboard")
    pictures = []
    for view in VIEWS:
        picture = render(stand, view)
        values, inside = voxels_under(stand, view, board)
        reference, _ = voxels_under(stand, view, ct)
        assert correlation(picture[..., 0][inside], values[inside]) > 0.9, view
        assert correlation(picture[..., 0][inside], reference[inside]) < 0.9, view  # squares of the other volume
        pictures.append(picture)
    save("checkerboard", pictures)


def test_colour_fusion_in_colour_and_the_source_map_overlay(stand, phantoms):  # noqa: F811
    """The RGB functional fusion: the vector volume display passes 0..255 unchanged, so each pixel
    is the fused voxel's colour. The source map over it (overlay opacity 0.5): bluer where the MR
    gave the fused value, redder where the PET did."""
    mr, pet = _add(stand, phantoms[1], "MR"), _add(stand, phantoms[2], "PET")
    panel = stand.widget()
    stand.enter(panel)
    panel.ui.referenceVolumeSelector.setCurrentNode(mr)
    panel.ui.movingVolumeSelector.setCurrentNode(pet)
    _choose(panel.ui.registrationComboBox, "resample")
    _choose(panel.ui.functionalComboBox, "harvard-pet")
    panel.ui.modelComboBox.pick(panel.ui.modelComboBox.findData("maximum"))  # a share of 0 or 1, not 0.5
    panel.ui.sourceMapCheckBox.checked = True
    panel.ui.applyButton.click()
    _wait(panel)
    assert stand.dialogs == [], stand.dialogs
    fused = slicer.util.getNode("MR + PET fused (maximum, harvard-pet)")
    share = slicer.util.getNode("MR + PET source map (maximum, harvard-pet)")
    panel.ui.referenceOpacitySliderWidget.value = 0.0
    colour = []
    for view in VIEWS:
        picture = render(stand, view).astype(int)
        values, inside = voxels_under(stand, view, fused)
        assert np.median(np.abs(picture[inside] - values[inside])) <= 2, view
        assert (np.abs(picture[..., 0] - picture[..., 2])[inside] > 30).mean() > 0.02, view  # coloured, not grey
        colour.append(picture.astype(np.uint8))
    save("colour", colour)
    panel.ui.referenceOpacitySliderWidget.value = 0.5
    table = share.GetDisplayNode().GetColorNode()
    entries = table.GetNumberOfColors()
    colours = np.array([table.GetLookupTable().GetTableValue(entry)[:3] for entry in range(entries)]) * 255
    overlay = []
    for index, view in enumerate(VIEWS):
        picture = render(stand, view).astype(float)
        shares, inside = voxels_under(stand, view, share)
        # The source map's window is 0..1 over its whole table: half of its colour over half of the fusion's.
        expected = (
            0.5 * colour[index] + 0.5 * colours[np.clip(np.rint(shares * (entries - 1)), 0, entries - 1).astype(int)]
        )
        assert np.median(np.abs(picture[inside] - expected[inside])) <= 3, view
        assert np.ptp(shares[inside]) > 0.3, view  # the map says something here
        overlay.append(picture.astype(np.uint8))
    save("sourcemap", overlay)
