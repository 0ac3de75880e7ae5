"""How MedFusion's result volumes look in the slice views, set on MRML nodes only (no Qt).

* A colour (functional) fusion is an RGB uint8 ``vtkMRMLVectorVolumeNode``. Slicer passes a
  vector volume's components through its window/level, so the window is fixed to 0..255: the
  colours shown are the colours computed.
* The source map (per voxel, the moving image's share of the fused value: 0 = the reference,
  0.5 = either, 1 = the moving image) goes through a blue-white-red colour table with a fixed
  0..1 window, so one colour means one share in every run, and can carry a colour legend that
  says what the ends mean.
"""

from __future__ import annotations

ROLE_ATTRIBUTE = "MedFusion.role"
SOURCE_MAP_COLORS_ROLE = "source map colours"
SOURCE_MAP_COLOR_NODE_NAME = "MedFusion source map"
SOURCE_MAP_LEGEND_TITLE = "0 reference \u00b7 0.5 either \u00b7 1 moving"
# Blue (the reference) through white (either) to red (the moving image): the end colours of
# Moreland's cool-warm map, with white in the middle so "either" reads as no colour at all.
_REFERENCE_RGB = (0.230, 0.299, 0.754)
_EITHER_RGB = (1.0, 1.0, 1.0)
_MOVING_RGB = (0.706, 0.016, 0.150)
_TABLE_SIZE = 256  # many colours: a continuous map (Slicer's legend uses numbers, not names, above 20)


def diverging_colour(share: float) -> tuple[float, float, float]:
    """The colour of a share in [0, 1]: blue at 0, white at 0.5, red at 1, linear in between."""
    share = min(max(share, 0.0), 1.0)
    if share <= 0.5:
        start, end, t = _REFERENCE_RGB, _EITHER_RGB, share / 0.5
    else:
        start, end, t = _EITHER_RGB, _MOVING_RGB, (share - 0.5) / 0.5
    return tuple(a + (b - a) * t for a, b in zip(start, end))


def source_map_color_node(scene):
    """The scene's colour table for source maps (``vtkMRMLColorTableNode``), made on first use."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) == SOURCE_MAP_COLORS_ROLE:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", SOURCE_MAP_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(_TABLE_SIZE)
    for entry in range(_TABLE_SIZE):
        node.SetColor(entry, *diverging_colour(entry / (_TABLE_SIZE - 1)), 1.0)
    node.SetAttribute(ROLE_ATTRIBUTE, SOURCE_MAP_COLORS_ROLE)
    return node


def _display_node(volume_node):
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    return volume_node.GetDisplayNode()


def show_rgb(volume_node) -> None:
    """An RGB uint8 vector volume shown with its own colours (window 0..255, no auto window)."""
    display = _display_node(volume_node)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 255.0)


def show_source_map(volume_node) -> None:
    """A source map through the blue-white-red table, window fixed to 0..1."""
    display = _display_node(volume_node)
    display.SetAndObserveColorNodeID(source_map_color_node(volume_node.GetScene()).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)


def set_source_map_legend(volume_node, visible: bool):
    """Show (creating it the first time) or hide the colour legend of a source map node, titled
    :data:`SOURCE_MAP_LEGEND_TITLE` with the labels 0.0, 0.5 and 1.0. Returns the legend display
    node, or ``None`` when there is none to hide or the scene cannot make one."""
    import slicer

    if not visible:
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(volume_node)
        if legend is not None:
            legend.SetVisibility(False)
        return legend
    scene = volume_node.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        # Slicer's Colors module registers it in the application's scene; a scene of its own
        # (slicer-core, a script) may not have it yet.
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volume_node)
    if legend is None:
        return None
    legend.SetTitleText(SOURCE_MAP_LEGEND_TITLE)
    legend.SetNumberOfLabels(3)
    legend.SetLabelFormat("%.1f")
    legend.SetVisibility(True)
    return legend
