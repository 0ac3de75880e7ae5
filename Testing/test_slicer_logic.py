"""The Slicer module's logic on a real vtkMRMLScene (slicer-core): in process and in a worker process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("slicer_core", reason="the slicer-core wheel (a real MRML scene) is not available for this Python")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

import slicer  # noqa: E402
import vtk  # noqa: E402

from conftest import SMALL_SIZE, SMALL_SPACING, oblique  # noqa: E402
from MedFusionLib.errors import FusionCancelled, InputError  # noqa: E402
from MedFusionLib.phantom import DEMO_MISALIGNMENT, make_head_phantom  # noqa: E402
from MedFusionLib.pipeline import fuse_volumes  # noqa: E402
from MedFusionSlicer.logic import FusionLogic  # noqa: E402
from MedFusionSlicer.volumes import add_volume_node_from_image, image_from_volume_node  # noqa: E402
from MedFusionSlicer.worker import Finished, FusionJob, Message, Progress, overall_fraction, parse_progress_line  # noqa: E402


@pytest.fixture()
def scene_pair(phantom_pair):
    """A scene holding the aligned CT/MR phantom on an oblique grid, and its two nodes."""
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, oblique(phantom_pair.ct), "CT")
    mr = add_volume_node_from_image(scene, oblique(phantom_pair.mr), "MR")
    return scene, ct, mr


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_process_equals_the_library_and_lies_on_the_reference_grid(scene_pair):
    """The logic adds nothing of its own: its output is fuse_volumes' output, on the reference's grid."""
    scene, ct, mr = scene_pair
    stages = []
    nodes = FusionLogic().process(ct, mr, registration="none", model="laplacian", device="cpu",
                                  progress=lambda stage, done, total: stages.append((stage, done, total)))
    assert nodes.fusedNode.GetScene() is scene and nodes.fusedNode.GetName() == "CT + MR fused"
    assert nodes.registeredNode is None and nodes.transformNode is None and nodes.device == "cpu"
    np.testing.assert_allclose(_ijk_to_ras(nodes.fusedNode), _ijk_to_ras(ct), atol=1e-9)
    expected = fuse_volumes(image_from_volume_node(ct), image_from_volume_node(mr), model="laplacian", device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.fusedNode), sitk.GetArrayFromImage(expected.fused))
    assert stages[-1][0] == "fuse" and stages[-1][1] == stages[-1][2] > 0
    assert nodes.fusedNode.GetDisplayNode() is not None


def test_process_registers_and_keeps_registered_volume_and_transform():
    """A misaligned MR on its own grid: registered volume and transform become nodes; the transform
    node maps reference points to where the phantom's known motion put them."""
    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                                moving_spacing=(3.0, 3.0, 4.0), seed=1)
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    mr = add_volume_node_from_image(scene, phantom.mr, "MR")
    messages = []
    nodes = FusionLogic().process(ct, mr, registration="rigid", backend="simpleitk", model="average", device="cpu",
                                  log=messages.append)
    assert nodes.registeredNode.GetName() == "MR registered"
    np.testing.assert_allclose(_ijk_to_ras(nodes.registeredNode), _ijk_to_ras(ct), atol=1e-9)
    assert nodes.transformNode.GetName() == "MR to CT" and nodes.transformNode.IsLinear()
    from_parent = vtk.vtkMatrix4x4()
    nodes.transformNode.GetMatrixTransformFromParent(from_parent)
    centre_lps = np.array(phantom.ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in SMALL_SIZE]))
    found_ras = np.array(from_parent.MultiplyPoint((*(centre_lps * [-1, -1, 1]), 1.0))[:3])
    truth_ras = np.array(phantom.reference_to_moving.TransformPoint(centre_lps.tolist())) * [-1, -1, 1]
    assert np.linalg.norm(found_ras - truth_ras) < 2.0  # mm, on a 3.5 mm grid
    assert any("fused on cpu" in message for message in messages)


def test_process_overwrites_a_chosen_output_node(scene_pair):
    scene, ct, mr = scene_pair
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my fusion")
    before = scene.GetNumberOfNodes()
    nodes = FusionLogic().process(ct, mr, output, registration="none", model="maximum", device="cpu")
    assert nodes.fusedNode is output and output.GetName() == "my fusion"
    assert slicer.util.arrayFromVolume(output).shape == slicer.util.arrayFromVolume(ct).shape
    assert scene.GetNumberOfNodes() == before + 1  # only the output's display node


def test_failed_and_cancelled_runs_leave_the_scene_as_it_was(scene_pair, phantom_pair):
    scene, ct, mr = scene_pair
    constant = sitk.Image(phantom_pair.mr)
    constant *= 0
    flat = add_volume_node_from_image(scene, oblique(constant), "flat")
    before = _node_ids(scene)
    with pytest.raises(InputError, match="constant"):
        FusionLogic().process(ct, flat, registration="none", model="average", device="cpu")
    assert _node_ids(scene) == before
    with pytest.raises(FusionCancelled):
        FusionLogic().process(ct, mr, registration="none", model="average", device="cpu", cancel=lambda: True)
    assert _node_ids(scene) == before
    with pytest.raises(InputError, match="same node"):
        FusionLogic().process(ct, ct, registration="none")
    with pytest.raises(InputError, match="must not be one of the inputs"):
        FusionLogic().process(ct, mr, mr, registration="none")


def test_model_choices_list_the_registry_and_which_models_can_run():
    from MedFusionLib.models import list_models, model_spec
    from MedFusionLib.models.pretrained import weights_status
    from MedFusionLib.pipeline import DEFAULT_MODEL

    choices = FusionLogic.modelChoices()
    assert [choice.name for choice in choices] == list_models()
    assert [choice.name for choice in choices if choice.default] == [DEFAULT_MODEL]
    for choice in choices:
        assert choice.description == model_spec(choice.name).description and choice.description
        runs = not model_spec(choice.name).learned or weights_status(choice.name) == "ok"
        assert choice.usable == runs and bool(choice.note) == (not runs)
    assert next(choice for choice in choices if choice.name == DEFAULT_MODEL).usable


def test_input_problem_explains_why_apply_is_disabled(scene_pair, phantom_pair):
    scene, ct, mr = scene_pair
    problem = FusionLogic.inputProblem
    assert "reference" in problem(None, mr, None, "rigid")
    assert "moving" in problem(ct, None, None, "rigid")
    assert "same" in problem(ct, ct, None, "rigid")
    assert "output" in problem(ct, mr, mr, "rigid")
    assert problem(ct, mr, None, "none") is None
    shifted = sitk.Image(oblique(phantom_pair.mr))
    shifted.SetOrigin([value + 1.0 for value in shifted.GetOrigin()])
    other_grid = add_volume_node_from_image(scene, shifted, "shifted MR")
    assert "different voxel grids" in problem(ct, other_grid, None, "none")
    assert problem(ct, other_grid, None, "rigid") is None


def test_library_fallback_messages_reach_the_log_callback(scene_pair):
    """Out of memory inside the library (here a model that cannot take more than two slices at
    once) is retried with smaller batches by MedFusionLib, and the console user is told."""
    scene, ct, mr = scene_pair

    class AtMostTwoSlices(torch.nn.Module):
        def forward(self, a, b):
            if a.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return torch.maximum(a, b)

    messages = []
    nodes = FusionLogic().process(ct, mr, registration="none", model=AtMostTwoSlices(), device="cpu", batchSize=8,
                                  log=messages.append)
    assert messages[:2] == ["out of memory on cpu; retrying with 4 slices per batch",
                            "out of memory on cpu; retrying with 2 slices per batch"]
    expected = fuse_volumes(image_from_volume_node(ct), image_from_volume_node(mr), model="maximum", device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.fusedNode), sitk.GetArrayFromImage(expected.fused))


def test_worker_job_matches_in_process_result_and_reports_progress(scene_pair):
    """The GUI path (medfusion fuse in a separate process on temporary NRRD files) gives the same
    fused volume as the console path, with JSON progress parsed along the way."""
    scene, ct, mr = scene_pair
    logic = FusionLogic()
    before = _node_ids(scene)
    job = logic.startJob(ct, mr, registration="none", model="laplacian", device="cpu")
    try:
        events = job.wait(timeout=240)
        assert _node_ids(scene) == before  # nothing is added while the job runs
        assert job.state == "succeeded", job.error
        progress = [event for event in events if isinstance(event, Progress)]
        assert progress and progress[-1].stage == "fuse" and progress[-1].done == progress[-1].total
        assert isinstance(events[-1], Finished) and events[-1].state == "succeeded"
        via_worker = logic.finishJob(job, ct, mr)
    finally:
        job.cleanup()
    assert not job.folder.exists()
    direct = logic.process(ct, mr, registration="none", model="laplacian", device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(via_worker.fusedNode), slicer.util.arrayFromVolume(direct.fusedNode))
    np.testing.assert_allclose(_ijk_to_ras(via_worker.fusedNode), _ijk_to_ras(ct), atol=1e-6)


def test_worker_job_with_registration_imports_registered_volume_and_transform():
    """GUI path with rigid registration: the worker's registered volume and ITK transform file come
    back as nodes; the transform agrees with the phantom's known motion."""
    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                                moving_spacing=(3.0, 3.0, 4.0), seed=1)
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    mr = add_volume_node_from_image(scene, phantom.mr, "MR")
    logic = FusionLogic()
    job = logic.startJob(ct, mr, registration="rigid", backend="simpleitk", model="average", device="cpu")
    try:
        events = job.wait(timeout=300)
        assert job.state == "succeeded", job.error
        assert any(isinstance(event, Progress) and event.stage == "register" for event in events)
        nodes = logic.finishJob(job, ct, mr)
    finally:
        job.cleanup()
    np.testing.assert_allclose(_ijk_to_ras(nodes.registeredNode), _ijk_to_ras(ct), atol=1e-6)
    from_parent = vtk.vtkMatrix4x4()
    nodes.transformNode.GetMatrixTransformFromParent(from_parent)
    centre_lps = np.array(phantom.ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in SMALL_SIZE]))
    found_ras = np.array(from_parent.MultiplyPoint((*(centre_lps * [-1, -1, 1]), 1.0))[:3])
    truth_ras = np.array(phantom.reference_to_moving.TransformPoint(centre_lps.tolist())) * [-1, -1, 1]
    assert np.linalg.norm(found_ras - truth_ras) < 2.0


def test_worker_failure_carries_the_library_message(scene_pair):
    scene, ct, mr = scene_pair
    before = _node_ids(scene)
    job = FusionLogic().startJob(ct, mr, registration="none", model="no-such-model", device="cpu")
    try:
        events = job.wait(timeout=240)
    finally:
        job.cleanup()
    assert job.state == "failed" and "unknown model 'no-such-model'" in job.error
    assert events[-1] == Finished("failed", job.error)
    with pytest.raises(InputError, match="has not succeeded"):
        FusionLogic().finishJob(job, ct, mr)
    assert _node_ids(scene) == before


def test_cancel_ends_the_worker_process_group(tmp_path):
    """Cancel kills the process and its children at once (a worker that would run for minutes)."""
    sleeper = [sys.executable, "-c", "import subprocess, sys, time; "
               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); print('started', flush=True); time.sleep(120)"]
    job = FusionJob(tmp_path, command=sleeper)
    job.start()
    while not any(isinstance(event, Message) for event in job.poll()):
        job._reader.join(0.05)
    job.cancel()
    assert job._process.poll() is not None
    assert job.poll() == [Finished("cancelled", "cancelled by the user")]
    assert job.state == "cancelled"


def test_progress_lines_are_parsed_strictly():
    assert parse_progress_line('{"stage": "fuse", "done": 3, "total": 40}\n') == Progress("fuse", 3, 40)
    assert parse_progress_line("medfusion: error: the moving image is constant") is None
    assert parse_progress_line('{"stage": "fuse"}') is None
    assert parse_progress_line("{not json") is None
    assert overall_fraction(Progress("register", 1, 1), registering=True) == pytest.approx(0.3)
    assert overall_fraction(Progress("fuse", 20, 40), registering=True) == pytest.approx(0.65)
    assert overall_fraction(Progress("fuse", 20, 40), registering=False) == pytest.approx(0.5)
