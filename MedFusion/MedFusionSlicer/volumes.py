"""MRML volume nodes <-> SimpleITK images, with the geometry kept exactly.

Slicer describes a volume by its IJK-to-RAS matrix (columns: the voxel axes scaled by the
spacing, in RAS mm; last column: the RAS position of voxel (0, 0, 0)); SimpleITK by origin,
spacing and a direction matrix in LPS mm. The two differ only by the sign of the first two world
axes, so with ``F = diag(-1, -1, 1)``::

    direction_LPS = F @ directions_RAS        origin_LPS = F @ origin_RAS        spacing: same

A node under a linear parent transform is converted with the transform applied (its world
geometry), because that is where the user sees it; a non-linear parent transform must be hardened
first. Voxel arrays are copied, never shared with VTK.

Transforms and files go through Slicer's own storage nodes, so an ITK transform file written by
MedFusionLib is read exactly as Slicer's "Add data" would read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from MedFusionLib.core.errors import InputError

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
# Largest deviation from orthonormal accepted in a direction matrix: what float64 round-off of a
# rotation leaves, far below any real shear.
_ORTHONORMAL_TOLERANCE = 1e-6


def _array_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _vtk_matrix_from_array(values: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(values[row, column]))
    return matrix


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """The ``(4, 4)`` float64 IJK-to-RAS matrix of ``volume_node`` in world coordinates.

    Includes a linear parent transform; raises :class:`InputError` for a non-linear one.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _array_from_vtk_matrix(ijk_to_ras)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"volume '{volume_node.GetName()}' is under the non-linear transform '{parent.GetName()}'; "
                "harden it first (Data module: right-click the volume > Harden transform)"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = _array_from_vtk_matrix(to_world) @ matrix
    return matrix


def _is_multi_component(volume_node) -> bool:
    """A vector (e.g. RGB), tensor or diffusion-weighted volume node, or one whose voxels have
    several components. (In MRML a vector volume node *is a* scalar volume node.)"""
    image = volume_node.GetImageData()
    return (
        volume_node.IsA("vtkMRMLTensorVolumeNode")  # vector volume nodes derive from it
        or volume_node.IsA("vtkMRMLDiffusionWeightedVolumeNode")
        or (image is not None and image.GetNumberOfScalarComponents() != 1)
    )


def _volume_array(volume_node, vector: bool = False) -> np.ndarray:
    """A copy of the voxels, ``(K, J, I)`` = SimpleITK's ``(z, y, x)`` order (``(K, J, I, C)`` for a
    vector volume when ``vector``), original dtype."""
    if volume_node is None:
        raise InputError("no volume was given; select a volume node")
    colour = vector and volume_node.IsA("vtkMRMLVectorVolumeNode")
    if (
        not volume_node.IsA("vtkMRMLScalarVolumeNode")
        or volume_node.IsA("vtkMRMLLabelMapVolumeNode")
        or (not colour and _is_multi_component(volume_node))
    ):
        raise InputError(
            f"'{volume_node.GetName()}' is a {volume_node.GetClassName()}; MedFusion fuses scalar (grey-scale) "
            "volumes. Convert colour or vector volumes to a scalar volume first (Vector to Scalar Volume module)."
        )
    if volume_node.GetImageData() is None or volume_node.GetImageData().GetNumberOfPoints() == 0:
        raise InputError(f"volume '{volume_node.GetName()}' has no voxels; load image data into it first")
    from slicer.util import arrayFromVolume

    return np.array(arrayFromVolume(volume_node), copy=True)


def image_from_volume_node(volume_node, vector: bool = False) -> sitk.Image:
    """A SimpleITK image with the voxels and world geometry of a scalar volume node.

    Returns a 3D image with the node's pixel type; origin, spacing and direction in LPS mm.
    ``vector``: also accept a vector volume node (e.g. the RGB result of a functional fusion),
    returned as a vector image with the node's components. Raises :class:`InputError` for a
    missing, empty, label-map or (unless ``vector``) vector node, a non-linear parent transform,
    or a parent transform with shear or scaling (not expressible as origin/spacing/direction).
    """
    voxels = _volume_array(volume_node, vector)
    matrix = world_ijk_to_ras(volume_node)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    directions_ras = axes / spacing
    if not np.allclose(directions_ras.T @ directions_ras, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
        raise InputError(
            f"volume '{volume_node.GetName()}' is sheared by its parent transform; harden the transform "
            "and resample the volume (Resample Scalar/Vector/DWI Volume module) before fusing"
        )
    image = sitk.GetImageFromArray(voxels, isVector=voxels.ndim == 4)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in _LPS_FROM_RAS @ matrix[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (_LPS_FROM_RAS @ directions_ras).ravel()))
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The ``(4, 4)`` IJK-to-RAS matrix of a 3D SimpleITK image (LPS geometry -> RAS)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = (_LPS_FROM_RAS @ direction) * np.array(image.GetSpacing())
    matrix[:3, 3] = _LPS_FROM_RAS @ np.array(image.GetOrigin())
    return matrix


def update_volume_node_from_image(volume_node, image: sitk.Image) -> None:
    """Replace the voxels and geometry of ``volume_node`` with those of a 3D ``image``: scalar for
    a scalar volume node, several components (e.g. RGB) for a ``vtkMRMLVectorVolumeNode``.

    The node ends up directly in world coordinates: a parent transform it had is removed, so the
    volume lies exactly on the image's grid. Pixel type is kept.
    """
    components = image.GetNumberOfComponentsPerPixel()
    wanted = "a vector" if volume_node.IsA("vtkMRMLVectorVolumeNode") else "a scalar"
    if image.GetDimension() != 3 or (components > 1) != (wanted == "a vector"):
        raise InputError(
            f"{wanted} volume node ('{volume_node.GetName()}') cannot hold a {image.GetDimension()}D image "
            f"with {components} component(s) per voxel"
        )
    from slicer.util import updateVolumeFromArray

    volume_node.SetAndObserveTransformNodeID(None)
    volume_node.SetIJKToRASMatrix(_vtk_matrix_from_array(ijk_to_ras_from_image(image)))
    updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))


def volume_node_class(image: sitk.Image) -> str:
    """The MRML class that holds ``image``: a vector volume for several components per voxel (RGB)."""
    return "vtkMRMLVectorVolumeNode" if image.GetNumberOfComponentsPerPixel() > 1 else "vtkMRMLScalarVolumeNode"


def add_volume_node_from_image(scene, image: sitk.Image, name: str):
    """A new volume node in ``scene`` holding ``image`` (:func:`volume_node_class`), with display nodes."""
    volume_node = scene.AddNewNodeByClass(volume_node_class(image), scene.GenerateUniqueName(name))
    update_volume_node_from_image(volume_node, image)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def load_volume_node(scene, path: str | Path, name: str | None = None):
    """Read a volume file into a new scalar volume node with Slicer's own reader, or a folder
    holding one DICOM series with MedFusionLib's DICOM reader (its checks included).

    This is how Slicer's "Add data" reads NRRD, NIfTI, MHA, ...; the node is added to ``scene``
    only when reading succeeded. Raises :class:`InputError` naming the file otherwise.
    """
    path = Path(path)
    if path.is_dir():  # the headless script's DICOM reference (its series goes back as DICOM)
        from MedFusionLib.io import read_image

        return add_volume_node_from_image(scene, read_image(path), name or path.name)
    if not path.is_file():
        raise InputError(f"volume file {path} not found")
    volume_node = slicer.vtkMRMLScalarVolumeNode()
    volume_node.SetName(scene.GenerateUniqueName(name or _stem(path)))
    storage_node = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage_node.SetFileName(str(path))
    storage_node.SetSingleFile(True)  # one file is one volume, never a guessed series of files
    if not storage_node.ReadData(volume_node):
        raise InputError(
            f"Slicer could not read {path} as a volume; check that it is an image file (NRRD, NIfTI, MHA, ...)"
        )
    scene.AddNode(volume_node)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def load_transform_node(scene, path: str | Path, name: str, into=None):
    """Read an ITK transform file (``.tfm``, ``.h5``) into a new transform node of ``scene``, or
    into the existing node ``into`` when it is of the right class (else a new node is made).

    ITK files hold the resampling transform (reference -> moving); Slicer reads it as the node's
    transform *from parent*, so placing the moving volume under the node aligns it with the
    reference. Linear files give a ``vtkMRMLLinearTransformNode``, others a ``vtkMRMLTransformNode``.
    """
    transform = sitk.ReadTransform(str(path))
    linear = transform.IsLinear() and not isinstance(transform, sitk.CompositeTransform)
    wanted = "vtkMRMLLinearTransformNode" if linear else "vtkMRMLTransformNode"
    reuse = into is not None and into.GetScene() is scene and into.GetClassName() == wanted
    node = into if reuse else (slicer.vtkMRMLLinearTransformNode() if linear else slicer.vtkMRMLTransformNode())
    storage_node = slicer.vtkMRMLTransformStorageNode()
    storage_node.SetFileName(str(path))
    if not storage_node.ReadData(node):
        raise InputError(f"Slicer could not read the transform file {path}")
    if not reuse:
        node.SetName(scene.GenerateUniqueName(name))
        scene.AddNode(node)
    return node


def is_scalar_volume(node) -> bool:
    """A grey-scale volume MedFusion can fuse: a scalar volume node that is not a label map nor a
    vector (colour), tensor or diffusion-weighted volume."""
    return (
        node is not None
        and node.IsA("vtkMRMLScalarVolumeNode")
        and not node.IsA("vtkMRMLLabelMapVolumeNode")
        and not _is_multi_component(node)
    )


def scalar_volumes(scene, exclude=()) -> list:
    """The scene's scalar (not label-map) volume nodes in scene order, without ``exclude``."""
    excluded = {node.GetID() for node in exclude if node is not None}
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if is_scalar_volume(node) and node.GetID() not in excluded and node.GetAttribute("MedFusion.role") is None:
            nodes.append(node)
    return nodes


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
