"""Judging a registration by eye, without Qt: a checkerboard of the reference and the registered
moving volume, and the slice-view settings for fading and flickering between them.

The usual ways (as in Slicer's own registration modules): reference as background and registered
moving volume as foreground with a fade (foreground opacity) slider; a flicker that shows one,
then the other; and a checkerboard volume whose squares alternate between the two, where a
misalignment shows as broken edges at the squares' borders. The slice-view functions change only
views that show the given volumes (never every view of the layout) and touch MRML nodes only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when a checkerboard is made: the panel imports this module at Slicer start-up
    import SimpleITK as sitk

# Squares along the longest axis of the checkerboard: big enough to recognise anatomy inside a
# square, small enough for many borders to cross edges.
CHECKERBOARD_SQUARES = 8
# Percentiles that map each volume to [0, 1] for the checkerboard, so that a CT in HU and an MR in
# arbitrary units are comparable side by side.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0


def _display_scaled(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]  # percentiles of a million voxels suffice
    low, high = np.percentile(sample, (_LOW_PERCENTILE, _HIGH_PERCENTILE))
    if high <= low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def checkerboard_image(
    reference: sitk.Image, registered: sitk.Image, squares: int = CHECKERBOARD_SQUARES
) -> sitk.Image:
    """A float32 volume on the reference grid whose squares alternate between the reference and
    the registered moving volume, each scaled to [0, 1] between its 1st and 99th percentile.

    The square edge is the same number of voxels along every axis: the longest axis gets
    ``squares`` squares. Raises ``ValueError`` if the two are not on one grid.
    """
    import SimpleITK as sitk

    if reference.GetSize() != registered.GetSize():
        raise ValueError(
            f"the registered volume {registered.GetSize()} is not on the reference grid {reference.GetSize()}"
        )
    a = _display_scaled(sitk.GetArrayViewFromImage(reference))
    b = _display_scaled(sitk.GetArrayViewFromImage(registered))
    edge = max(1, int(np.ceil(max(a.shape) / squares)))
    indices = np.indices(a.shape, sparse=True)
    parity = sum(index // edge for index in indices) % 2
    board = np.where(parity == 0, a, b).astype(np.float32)
    image = sitk.GetImageFromArray(board)
    image.CopyInformation(reference)
    return image


def composite_nodes_showing(scene, node_ids) -> list:
    """The slice composite nodes of ``scene`` whose background or foreground is one of ``node_ids``."""
    wanted = {node_id for node_id in node_ids if node_id}
    found = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetBackgroundVolumeID() in wanted or composite.GetForegroundVolumeID() in wanted:
            found.append(composite)
    return found


def set_foreground_opacity(scene, node_ids, opacity: float) -> int:
    """Set the foreground opacity of the views showing one of ``node_ids`` (MedFusion's result, or
    the pair being compared); other views keep theirs. Returns how many views changed."""
    composites = composite_nodes_showing(scene, node_ids)
    for composite in composites:
        composite.SetForegroundOpacity(float(opacity))
    return len(composites)


def show_pair(scene, background_id: str, foreground_id: str, opacity: float) -> int:
    """Every slice view: ``background_id`` under ``foreground_id`` at ``opacity``. For an explicit
    user action (Apply, Compare), like ``slicer.util.setSliceViewerLayers``. Returns the count."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(count):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background_id)
        composite.SetForegroundVolumeID(foreground_id)
        composite.SetForegroundOpacity(float(opacity))
    return count


def composite_nodes_comparing(scene, background_id: str, foreground_id: str) -> list:
    """The slice composite nodes of ``scene`` that show exactly ``background_id`` under
    ``foreground_id`` (the pair being compared), not the other way round."""
    return [
        composite
        for composite in composite_nodes_showing(scene, (background_id, foreground_id))
        if composite.GetBackgroundVolumeID() == background_id and composite.GetForegroundVolumeID() == foreground_id
    ]


def fade(scene, background_id: str, foreground_id: str, opacity: float) -> int:
    """The fade between the pair: the foreground opacity of the views comparing them (background
    ``background_id`` under foreground ``foreground_id``); returns how many views changed (0: no
    view compares them, e.g. right after Apply, which shows the fused volume)."""
    composites = composite_nodes_comparing(scene, background_id, foreground_id)
    for composite in composites:
        composite.SetForegroundOpacity(float(opacity))
    return len(composites)


def flicker(scene, background_id: str, foreground_id: str, show_foreground: bool) -> int:
    """One flicker step in the views comparing the pair: the foreground fully shown or hidden."""
    return fade(scene, background_id, foreground_id, 1.0 if show_foreground else 0.0)
