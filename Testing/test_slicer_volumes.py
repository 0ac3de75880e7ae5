"""MRML volume nodes <-> SimpleITK images in a real vtkMRMLScene (slicer-core): geometry kept exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer_core", reason="the slicer-core wheel (a real MRML scene) is not available for this Python")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

import slicer
import vtk

from MedFusionLib.core.errors import InputError
from MedFusionSlicer.volumes import (
    add_volume_node_from_image,
    image_from_volume_node,
    load_transform_node,
    load_volume_node,
)


def _image(
    size=(7, 5, 4), spacing=(0.7, 1.3, 2.9), origin=(-12.5, 40.25, 7.0), angles=(0.3, -0.5, 1.1), dtype=np.int16
):
    """An oblique, anisotropic image with a non-zero origin and distinct voxel values."""
    values = np.arange(np.prod(size), dtype=dtype).reshape(size[::-1])
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles)
    image.SetDirection(rotation.GetMatrix())
    return image


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, atol=1e-9):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_round_trip_keeps_voxels_geometry_and_type(dtype):
    scene = slicer.vtkMRMLScene()
    image = _image(dtype=dtype)
    node = add_volume_node_from_image(scene, image, "oblique")
    back = image_from_volume_node(node)
    _assert_same_geometry(image, back)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    # Voxel (i, j, k) of the node is at the same physical point as in the image (RAS = LPS with x, y negated).
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = np.array(matrix.MultiplyPoint((3, 2, 1, 1))[:3])
    lps = np.array(image.TransformIndexToPhysicalPoint((3, 2, 1)))
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)


def test_node_geometry_matches_slicers_own_nrrd_writer(tmp_path):
    """Slicer's NRRD writer (RAS -> LPS done by Slicer itself) and our conversion agree."""
    scene = slicer.vtkMRMLScene()
    node = add_volume_node_from_image(scene, _image(angles=(-0.2, 0.9, 0.4)), "oblique")
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(tmp_path / "by_slicer.nrrd"))
    assert storage.WriteData(node)
    written_by_slicer = sitk.ReadImage(str(tmp_path / "by_slicer.nrrd"))
    ours = image_from_volume_node(node)
    _assert_same_geometry(written_by_slicer, ours, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written_by_slicer), sitk.GetArrayViewFromImage(ours))


def test_slicers_reader_and_ours_agree_on_a_nifti_file(tmp_path):
    image = _image(spacing=(1.0, 0.5, 3.0), origin=(100.0, -20.0, 55.5))
    path = tmp_path / "volume.nii.gz"
    sitk.WriteImage(image, str(path))
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, path)
    assert node.GetScene() is scene and node.GetName() == "volume"
    _assert_same_geometry(sitk.ReadImage(str(path)), image_from_volume_node(node), atol=1e-5)


def test_linear_parent_transform_is_applied_to_the_geometry():
    scene = slicer.vtkMRMLScene()
    image = _image(angles=(0.0, 0.0, 0.0))
    node = add_volume_node_from_image(scene, image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = vtk.vtkMatrix4x4()  # 90 degrees about S, then 10 mm towards R
    for row, values in enumerate(([0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1])):
        for column, value in enumerate(values):
            to_parent.SetElement(row, column, value)
    transform.SetMatrixTransformToParent(to_parent)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = image_from_volume_node(node)
    ras_local = np.array(image.TransformIndexToPhysicalPoint((2, 3, 1))) * [-1, -1, 1]
    ras_world = np.array([-ras_local[1] + 10, ras_local[0], ras_local[2]])
    np.testing.assert_allclose(
        np.array(world.TransformIndexToPhysicalPoint((2, 3, 1))) * [-1, -1, 1], ras_world, atol=1e-9
    )


def test_non_linear_parent_transform_and_shear_are_refused(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = add_volume_node_from_image(scene, _image(), "warped")
    bspline = sitk.BSplineTransformInitializer(sitk.Image(8, 8, 8, sitk.sitkFloat32), [2, 2, 2])
    bspline.SetParameters([0.5] * len(bspline.GetParameters()))
    sitk.WriteTransform(bspline, str(tmp_path / "warp.h5"))
    warp = load_transform_node(scene, tmp_path / "warp.h5", "warp")
    assert not warp.IsLinear()
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="non-linear transform 'warp'.*harden"):
        image_from_volume_node(node)

    shear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 1, 0.4)
    shear.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(shear.GetID())
    with pytest.raises(InputError, match="sheared"):
        image_from_volume_node(node)


def test_label_maps_vector_and_empty_nodes_are_refused():
    scene = slicer.vtkMRMLScene()
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InputError, match="scalar"):
        image_from_volume_node(labels)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        image_from_volume_node(empty)
    with pytest.raises(InputError, match="no volume"):
        image_from_volume_node(None)


def test_itk_transform_file_is_read_as_transform_from_parent(tmp_path):
    """An ITK reference->moving transform becomes the node's transform from parent, in RAS."""
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (5.0, -6.0, 7.0))
    sitk.WriteTransform(euler, str(tmp_path / "rigid.tfm"))
    scene = slicer.vtkMRMLScene()
    node = load_transform_node(scene, tmp_path / "rigid.tfm", "rigid")
    assert node.IsA("vtkMRMLLinearTransformNode") and node.GetScene() is scene
    from_parent = vtk.vtkMatrix4x4()
    node.GetMatrixTransformFromParent(from_parent)
    point_lps = np.array([10.0, -4.0, 22.0])
    expected_ras = np.array(euler.TransformPoint(point_lps.tolist())) * [-1, -1, 1]
    got_ras = np.array(from_parent.MultiplyPoint((*(point_lps * [-1, -1, 1]), 1.0))[:3])
    np.testing.assert_allclose(got_ras, expected_ras, atol=1e-9)


def test_rgb_images_become_vector_nodes_and_come_back_only_when_asked():
    """A colour fusion's RGB uint8 result is a vtkMRMLVectorVolumeNode with its geometry; it is read
    back (to be written) with vector=True, and never taken as a grey-scale input."""
    from MedFusionSlicer.volumes import is_scalar_volume, update_volume_node_from_image

    scene = slicer.vtkMRMLScene()
    grey = _image(dtype=np.uint8)
    channel = sitk.GetArrayFromImage(grey)
    values = np.stack([channel, 255 - channel, channel], -1)
    rgb = sitk.GetImageFromArray(values.astype(np.uint8), isVector=True)
    rgb.CopyInformation(grey)
    node = add_volume_node_from_image(scene, rgb, "colour")
    assert node.GetClassName() == "vtkMRMLVectorVolumeNode"
    assert node.GetDisplayNode().IsA("vtkMRMLVectorVolumeDisplayNode")
    back = image_from_volume_node(node, vector=True)
    _assert_same_geometry(rgb, back)
    assert back.GetPixelID() == sitk.sitkVectorUInt8 and back.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), values)
    with pytest.raises(InputError, match="grey-scale"):
        image_from_volume_node(node)  # as an input: refused, with what to do
    assert not is_scalar_volume(node) and is_scalar_volume(add_volume_node_from_image(scene, grey, "grey"))
    with pytest.raises(InputError, match="cannot hold"):
        update_volume_node_from_image(node, grey)
    with pytest.raises(InputError, match="cannot hold"):
        update_volume_node_from_image(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"), rgb)
