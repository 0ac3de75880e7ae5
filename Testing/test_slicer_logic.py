"""The Slicer module's logic on a real vtkMRMLScene (slicer-core): in process, on the warm worker,
the output-node policy, the registration check, the demo volumes and the input checks."""

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
from conftest import SMALL_SIZE, SMALL_SPACING, oblique

from MedFusionLib.core.errors import FusionCancelled, InputError
from MedFusionLib.fusion.options import FusionOptions, OptionsError
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT, make_head_phantom
from MedFusionSlicer import dependencies
from MedFusionSlicer.compare import checkerboard_image, flicker, set_foreground_opacity, show_pair
from MedFusionSlicer.logic import FusionLogic, apply_state
from MedFusionSlicer.results import RegistrationSummary
from MedFusionSlicer.volumes import add_volume_node_from_image, image_from_volume_node, load_transform_node
from MedFusionSlicer.worker import Finished, Notice, Progress


@pytest.fixture()
def scene_pair(phantom_pair):
    """A scene holding the aligned CT/MR phantom on an oblique grid, and its two nodes."""
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, oblique(phantom_pair.ct), "CT")
    mr = add_volume_node_from_image(scene, oblique(phantom_pair.mr), "MR")
    return scene, ct, mr


@pytest.fixture(scope="module")
def misaligned_phantom():
    return make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                             moving_spacing=(3.0, 3.0, 4.0), seed=1)  # fmt: skip


@pytest.fixture(scope="module")
def logic():
    """One logic, so one warm worker, for the module's worker tests; ended at the end."""
    fusion_logic = FusionLogic()
    yield fusion_logic
    fusion_logic.stopWorker()


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _assert_transform_matches_phantom(transform_node, phantom):
    from_parent = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromParent(from_parent)
    centre_lps = np.array(phantom.ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in SMALL_SIZE]))
    found_ras = np.array(from_parent.MultiplyPoint((*(centre_lps * [-1, -1, 1]), 1.0))[:3])
    truth_ras = np.array(phantom.reference_to_moving.TransformPoint(centre_lps.tolist())) * [-1, -1, 1]
    assert np.linalg.norm(found_ras - truth_ras) < 2.0  # mm, on a 3.5 mm grid


# --- in process (console, headless) --------------------------------------------------------------


def test_process_equals_the_library_and_lies_on_the_reference_grid(scene_pair):
    """The logic adds nothing of its own: its output is fuse_volumes' output, on the reference's grid."""
    scene, ct, mr = scene_pair
    stages = []
    nodes = FusionLogic().process(
        ct,
        mr,
        registration="none",
        model="laplacian",
        device="cpu",
        progress=lambda stage, done, total: stages.append((stage, done, total)),
    )
    assert nodes.fusedNode.GetScene() is scene and nodes.fusedNode.GetName() == "CT + MR fused (laplacian)"
    assert nodes.registeredNode is None and nodes.transformNode is None and nodes.checkerboardNode is None
    assert nodes.registration is None and nodes.device == "cpu"
    assert nodes.options == FusionOptions(registration="none", model="laplacian", device="cpu")
    np.testing.assert_allclose(_ijk_to_ras(nodes.fusedNode), _ijk_to_ras(ct), atol=1e-9)
    expected = fuse_volumes(
        image_from_volume_node(ct),
        image_from_volume_node(mr),
        FusionOptions(registration="none", model="laplacian", device="cpu"),
    )
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.fusedNode), sitk.GetArrayFromImage(expected.fused))
    assert stages[-1][0] == "fuse" and stages[-1][1] == stages[-1][2] > 0
    assert nodes.fusedNode.GetDisplayNode() is not None


def test_process_defaults_are_the_librarys(scene_pair):
    """The console's defaults are FusionOptions' (registration auto: none on one grid), and a bad
    value is refused with the library's OptionsError naming the choices."""
    _, ct, mr = scene_pair
    nodes = FusionLogic().process(ct, mr, model="average")
    assert nodes.options == FusionOptions(model="average")
    assert nodes.registeredNode is None  # auto: the two share a grid
    with pytest.raises(OptionsError, match="rigid"):
        FusionLogic().process(ct, mr, registration="elastic")
    with pytest.raises(OptionsError, match="unknown fusion option"):
        FusionLogic().process(ct, mr, registrtion="rigid")


def test_process_registers_and_reports_the_registration(misaligned_phantom):
    """A misaligned MR on its own grid: registered volume, transform and checkerboard become nodes;
    the transform agrees with the phantom's known motion; the summary reaches the log."""
    phantom = misaligned_phantom
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    mr = add_volume_node_from_image(scene, phantom.mr, "MR")
    messages = []
    nodes = FusionLogic().process(
        ct, mr, registration="rigid", backend="simpleitk", model="average", device="cpu", log=messages.append
    )
    assert nodes.registeredNode.GetName() == "MR registered"
    np.testing.assert_allclose(_ijk_to_ras(nodes.registeredNode), _ijk_to_ras(ct), atol=1e-9)
    np.testing.assert_allclose(_ijk_to_ras(nodes.checkerboardNode), _ijk_to_ras(ct), atol=1e-9)
    assert nodes.transformNode.GetName() == "MR to CT" and nodes.transformNode.IsLinear()
    _assert_transform_matches_phantom(nodes.transformNode, phantom)
    summary = nodes.registration
    assert summary.preset == "rigid" and summary.backend == "simpleitk"
    assert summary.metric_after < summary.metric_before  # Mattes MI as ITK reports it: lower is better
    assert summary.text() in messages and any("fused with average on cpu" in message for message in messages)


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


def test_console_without_packages_says_how_to_install(scene_pair, monkeypatch):
    """No torch in Slicer's Python: the console call says which packages and the command that
    installs them, and the scene stays as it was."""
    scene, ct, mr = scene_pair
    absent = dependencies.Requirement("medfusion-no-such-package", "1.0", False, "testing")
    monkeypatch.setattr(dependencies, "REQUIREMENTS", (*dependencies.REQUIREMENTS, absent))
    before = _node_ids(scene)
    with pytest.raises(
        dependencies.DependenciesMissing, match=r"medfusion-no-such-package>=1\.0.*installDependencies\(\)"
    ):
        FusionLogic().process(ct, mr, registration="none", model="average")
    assert _node_ids(scene) == before


# --- output policy (B12) -------------------------------------------------------------------------


def test_output_policy_one_node_per_inputs_and_model(scene_pair, phantom_pair):
    """Runs on the same inputs and model update their node; another model or other inputs get
    their own; a chosen output is overwritten and not marked as MedFusion's."""
    scene, ct, mr = scene_pair
    logic = FusionLogic()
    first = logic.process(ct, mr, registration="none", model="average", device="cpu").fusedNode
    again = logic.process(ct, mr, registration="none", model="average", device="cpu").fusedNode
    other_model = logic.process(ct, mr, registration="none", model="maximum", device="cpu").fusedNode
    assert again is first and other_model is not first
    assert other_model.GetName() == "CT + MR fused (maximum)"
    mr2 = add_volume_node_from_image(scene, oblique(phantom_pair.mr), "MR2")
    other_inputs = logic.process(ct, mr2, registration="none", model="average", device="cpu").fusedNode
    assert other_inputs is not first and other_inputs.GetName() == "CT + MR2 fused (average)"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(first), slicer.util.arrayFromVolume(again))
    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my fusion")
    before = scene.GetNumberOfNodes()
    written = logic.process(ct, mr, chosen, registration="none", model="maximum", device="cpu").fusedNode
    assert written is chosen and chosen.GetName() == "my fusion" and chosen.GetAttribute("MedFusion.role") is None
    assert scene.GetNumberOfNodes() == before + 1  # only the chosen node's display node
    assert logic.resultNode(scene, "fused", ct, mr, "maximum") is other_model


def test_default_model_auto_names_the_network_that_ran(scene_pair):
    """The default model, "auto", resolves by the device (on the CPU: the light network); the fused
    node's name and MedFusion.model attribute say which network made it, so a later run of that
    network by name updates the same node."""
    from MedFusionLib.core.choices import DEFAULT_MODEL_BY_DEVICE

    scene, ct, mr = scene_pair
    logic = FusionLogic()
    messages = []
    nodes = logic.process(ct, mr, registration="none", device="cpu", log=messages.append)
    light = DEFAULT_MODEL_BY_DEVICE["cpu"]
    assert nodes.options.model == "auto" and nodes.model == light == "emfusion"
    assert nodes.fusedNode.GetName() == f"CT + MR fused ({light})"
    assert nodes.fusedNode.GetAttribute("MedFusion.model") == light
    assert any(f"fused with {light} on cpu" in message for message in messages)
    by_name = logic.process(ct, mr, registration="none", device="cpu", model=light)
    assert by_name.fusedNode is nodes.fusedNode and by_name.model == light


def test_model_choices_offer_auto_first_as_the_default():
    from MedFusionLib.core.choices import MODEL_CHOICES
    from MedFusionSlicer.server import model_choices

    choices = FusionLogic.modelChoices()
    assert [choice.name for choice in choices][0] == MODEL_CHOICES[0] == "auto"
    assert {choice.name for choice in choices} == set(MODEL_CHOICES)  # the names-only list the panel shows first
    auto = choices[0]
    assert auto.name == "auto" and auto.default and auto.usable and auto.note == "emfusion here"
    assert [choice.name for choice in choices if choice.default] == ["auto"]
    assert model_choices()[0]["name"] == "auto"


def test_registration_results_are_updated_not_piled_up(misaligned_phantom):
    phantom = misaligned_phantom
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    mr = add_volume_node_from_image(scene, phantom.mr, "MR")
    logic = FusionLogic()
    first = logic.process(ct, mr, registration="rigid", backend="simpleitk", model="average", device="cpu")
    count = scene.GetNumberOfNodes()
    second = logic.process(ct, mr, registration="rigid", backend="simpleitk", model="maximum", device="cpu")
    assert second.registeredNode is first.registeredNode and second.checkerboardNode is first.checkerboardNode
    assert second.transformNode is first.transformNode and second.transformNode.GetName() == "MR to CT"
    assert second.fusedNode is not first.fusedNode  # another model: its own fused node
    assert scene.GetNumberOfNodes() == count + 2  # only that node and its display node


def test_transform_file_read_into_an_existing_node(tmp_path):
    scene = slicer.vtkMRMLScene()
    sitk.WriteTransform(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.0, (1.0, 2.0, 3.0)), str(tmp_path / "a.tfm"))
    sitk.WriteTransform(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.2, 0.0, (4.0, 5.0, 6.0)), str(tmp_path / "b.tfm"))
    node = load_transform_node(scene, tmp_path / "a.tfm", "T")
    again = load_transform_node(scene, tmp_path / "b.tfm", "T", into=node)
    assert again is node and scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1
    from_parent = vtk.vtkMatrix4x4()
    node.GetMatrixTransformFromParent(from_parent)
    assert from_parent.GetElement(0, 3) == pytest.approx(-4.0)  # LPS x 4 mm is RAS -4 mm


# --- registration check (item 3) -----------------------------------------------------------------


def test_checkerboard_alternates_the_two_scaled_volumes():
    reference = sitk.GetImageFromArray(np.linspace(0, 1000, 16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16))
    reference.SetSpacing((0.5, 0.7, 2.0))
    moving = sitk.GetImageFromArray(np.full((16, 16, 16), 7.0, dtype=np.float32) + np.arange(16, dtype=np.float32))
    moving.CopyInformation(reference)
    board = checkerboard_image(reference, moving, squares=4)  # squares of 4 voxels
    values = sitk.GetArrayFromImage(board)
    assert board.GetSpacing() == reference.GetSpacing() and values.dtype == np.float32
    assert 0.0 <= values.min() and values.max() <= 1.0
    a, b = sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(moving)
    # Voxel (0,0,0) is in a reference square, (0,0,4) in a moving one: each keeps its source's order.
    assert values[0, 0, 4] != values[0, 0, 3] and values[0, 0, 5] >= values[0, 0, 4]
    same_square_ref = values[0, 0, 0:4]
    assert np.all(np.diff(same_square_ref) >= 0) and np.all(np.diff(a[0, 0, 0:4]) > 0)
    assert values[0, 0, 4] == pytest.approx(
        (b[0, 0, 4] - np.percentile(b, 1)) / (np.percentile(b, 99) - np.percentile(b, 1)), abs=1e-5
    )
    with pytest.raises(ValueError, match="not on the reference grid"):
        checkerboard_image(reference, sitk.Image(8, 8, 8, sitk.sitkFloat32))


def test_view_settings_change_only_the_views_showing_medfusions_nodes():
    """Fade and the reference-opacity slider touch only views whose layers are MedFusion's nodes
    (B7); flicker switches the foreground of the compared pair on and off."""
    scene = slicer.vtkMRMLScene()
    reference, registered, other = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name).GetID() for name in "ABC")
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    for view in views:
        view.SetForegroundOpacity(0.25)
    assert show_pair(scene, reference, registered, 0.5) == 3
    views[2].SetBackgroundVolumeID(other)  # the user shows something else there
    views[2].SetForegroundVolumeID(None)
    views[2].SetForegroundOpacity(0.25)
    assert set_foreground_opacity(scene, [registered], 0.8) == 2
    assert [view.GetForegroundOpacity() for view in views] == [pytest.approx(0.8), pytest.approx(0.8), 0.25]
    assert flicker(scene, reference, registered, False) == 2
    assert [view.GetForegroundOpacity() for view in views] == [0.0, 0.0, 0.25]
    assert flicker(scene, reference, registered, True) == 2
    assert views[0].GetForegroundOpacity() == 1.0 and views[2].GetForegroundOpacity() == 0.25


def test_registration_summary_from_events_with_and_without_confidence():
    plain = RegistrationSummary.from_report(
        {"preset": "rigid", "backend": "elastix", "metric_before": -0.3, "metric_after": -0.62, "seconds": 2.4}
    )
    assert plain.doubtful is None and plain.text() == "rigid registration (elastix, 2.4 s): metric -0.300 -> -0.620"
    doubtful = RegistrationSummary.from_report(
        {"preset": "rigid", "confidence": {"doubtful": True, "summary": "MI barely improved"}}
    )
    assert doubtful.doubtful is True and "DOUBTFUL: MI barely improved" in doubtful.text()
    confident = RegistrationSummary.from_report(
        {"preset": "affine", "confidence": {"doubtful": False, "summary": "good overlap"}}
    )
    assert confident.text().endswith("; good overlap") and "DOUBTFUL" not in confident.text()
    assert RegistrationSummary.from_report(None) is None and RegistrationSummary.from_report({}) is None


# --- inputs (B9, B10, B13) and the demo (item 4) ---------------------------------------------------


def test_input_problem_explains_why_apply_is_disabled(scene_pair, phantom_pair, tmp_path):
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
    # B9: a non-linear parent transform is a reason, not an exception in the GUI observer.
    bspline = sitk.BSplineTransformInitializer(sitk.Image(8, 8, 8, sitk.sitkFloat32), [2, 2, 2])
    sitk.WriteTransform(bspline, str(tmp_path / "warp.h5"))
    mr.SetAndObserveTransformNodeID(load_transform_node(scene, tmp_path / "warp.h5", "warp").GetID())
    assert "non-linear transform 'warp'" in problem(ct, mr, None, "rigid") and "harden" in problem(
        ct, mr, None, "rigid"
    )
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert "label map" in problem(labels, ct, None, "rigid")


def test_apply_is_disabled_while_installing_or_running():
    assert apply_state(None, running=False, installing=False)[0] is True
    enabled, tooltip = apply_state(None, running=False, installing=True)
    assert not enabled and "Installing" in tooltip
    assert apply_state(None, running=True, installing=False) == (False, "A fusion is running; Cancel stops it.")
    assert apply_state("Select the moving volume.", running=False, installing=False) == (
        False,
        "Select the moving volume.",
    )


def test_default_inputs_skip_label_maps_and_medfusion_results(phantom_pair):
    scene = slicer.vtkMRMLScene()
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    labels.SetAndObserveImageData(vtk.vtkImageData())
    ct = add_volume_node_from_image(scene, phantom_pair.ct, "CT")
    fused = add_volume_node_from_image(scene, phantom_pair.ct, "old fusion")
    fused.SetAttribute("MedFusion.role", "fused")
    mr = add_volume_node_from_image(scene, phantom_pair.mr, "MR")
    assert FusionLogic.defaultInputs(scene) == (ct, mr)
    assert FusionLogic.defaultInputs(scene, labels, None) == (ct, mr)  # a label map is never kept as reference
    assert FusionLogic.defaultInputs(scene, mr, None) == (mr, ct)
    assert FusionLogic.defaultInputs(slicer.vtkMRMLScene()) == (None, None)


def test_demo_volumes_are_the_demo_phantom_and_need_registration():
    scene = slicer.vtkMRMLScene()
    ct, mr = FusionLogic.loadDemoVolumes(scene, size=(32, 40, 28))
    assert (ct.GetName(), mr.GetName()) == ("MedFusion demo CT", "MedFusion demo MR")
    assert slicer.util.arrayFromVolume(ct).shape == (28, 40, 32)
    assert FusionLogic.inputProblem(ct, mr, None, "none") is not None  # the MR lies on its own grid
    assert FusionLogic.inputProblem(ct, mr, None, "rigid") is None
    assert (
        slicer.util.arrayFromVolume(ct).min() < -900 < 500 < slicer.util.arrayFromVolume(ct).max()
    )  # CT in HU: air and bone
    assert FusionLogic.defaultInputs(scene) == (ct, mr)


# --- on the warm worker (the panel's path) ---------------------------------------------------------


def test_worker_job_matches_in_process_result_and_reports_progress(scene_pair, logic):
    """The panel's path (the warm worker on uncompressed NRRD files) gives the same fused volume as
    the console path, with progress parsed along the way, and adds nothing while it runs."""
    scene, ct, mr = scene_pair
    before = _node_ids(scene)
    job = logic.startJob(ct, mr, registration="none", model="laplacian", device="cpu")
    try:
        events = job.wait(timeout=240)
        assert _node_ids(scene) == before
        assert job.state == "succeeded", job.error
        progress = [event for event in events if isinstance(event, Progress)]
        assert progress and progress[-1].stage == "fuse" and progress[-1].done == progress[-1].total
        assert isinstance(events[-1], Finished) and events[-1].state == "succeeded"
        assert job.report["device"] == "cpu" and job.report["model"] == "laplacian"
        via_worker = logic.finishJob(job)
    finally:
        job.cleanup()
    assert not job.folder.exists()
    direct = fuse_volumes(
        image_from_volume_node(ct),
        image_from_volume_node(mr),
        FusionOptions(registration="none", model="laplacian", device="cpu"),
    )
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(via_worker.fusedNode), sitk.GetArrayFromImage(direct.fused)
    )
    np.testing.assert_allclose(_ijk_to_ras(via_worker.fusedNode), _ijk_to_ras(ct), atol=1e-6)
    assert via_worker.device == "cpu" and via_worker.seconds is not None
    assert via_worker.model == "laplacian" and via_worker.fusedNode.GetName() == "CT + MR fused (laplacian)"


def test_worker_job_with_the_default_model_names_the_network_that_ran(scene_pair, logic):
    """Model "auto" on the worker: its report and the imported node name the concrete network."""
    scene, ct, mr = scene_pair
    job = logic.startJob(ct, mr, registration="none", device="cpu")
    try:
        job.wait(timeout=240)
        assert job.state == "succeeded", job.error
        assert job.options["model"] == "auto" and job.report["model"] == "emfusion"
        nodes = logic.finishJob(job)
    finally:
        job.cleanup()
    assert nodes.model == "emfusion" and nodes.fusedNode.GetName() == "CT + MR fused (emfusion)"
    assert nodes.fusedNode.GetAttribute("MedFusion.model") == "emfusion"


def test_worker_job_with_registration_imports_all_results(misaligned_phantom, logic):
    """With rigid registration: registered volume, transform and checkerboard come back as nodes,
    the transform agrees with the phantom's motion, and the registration event is the summary."""
    phantom = misaligned_phantom
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    mr = add_volume_node_from_image(scene, phantom.mr, "MR")
    job = logic.startJob(
        ct, mr, registration="rigid", backend="simpleitk", model="average", device="cpu", keepFiles=True
    )
    try:
        events = job.wait(timeout=300)
        assert job.state == "succeeded", job.error
        assert any(isinstance(event, Progress) and event.stage == "register" for event in events)
        assert any(isinstance(event, Notice) and event.name == "registration" for event in events)
        nodes = logic.finishJob(job)
        job.cleanup()
        assert job.folder.is_dir()  # B8: "keep temporary files" was captured at start
        assert b"encoding: raw" in job.fused_path.read_bytes()[:1000]  # uncompressed NRRD both ways
        assert b"encoding: raw" in (job.folder / "reference.nrrd").read_bytes()[:1000]
    finally:
        job.keep_files = False
        job.cleanup()
    np.testing.assert_allclose(_ijk_to_ras(nodes.registeredNode), _ijk_to_ras(ct), atol=1e-6)
    assert nodes.checkerboardNode is not None and nodes.registration.preset == "rigid"
    _assert_transform_matches_phantom(nodes.transformNode, phantom)


def test_job_captures_its_inputs_and_refuses_when_they_vanished(scene_pair, logic):
    """B8: finishJob uses the nodes captured at start (the panel may have been left); an input
    deleted during the run is reported, and nothing is added."""
    scene, ct, mr = scene_pair
    job = logic.startJob(ct, mr, registration="none", model="average", device="cpu")
    try:
        job.wait(timeout=240)
        scene.RemoveNode(mr)
        before = _node_ids(scene)
        with pytest.raises(InputError, match="moving volume was removed"):
            logic.finishJob(job)
        assert _node_ids(scene) == before
    finally:
        job.cleanup()


def test_worker_failure_carries_the_library_message(scene_pair, logic):
    """A run the worker refuses (CUDA asked for where there is none) fails with the library's
    one-line reason; nothing is added. (Last in this file: it restarts the worker with the GPU visible.)"""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a CUDA run would succeed")
    scene, ct, mr = scene_pair
    before = _node_ids(scene)
    job = logic.startJob(ct, mr, registration="none", model="average", device="cuda")
    try:
        events = job.wait(timeout=240)
    finally:
        job.cleanup()
    assert job.state == "failed" and "cuda" in job.error.lower() and "Traceback" not in job.error
    assert events[-1] == Finished("failed", job.error)
    with pytest.raises(InputError, match="has not succeeded"):
        logic.finishJob(job)
    assert _node_ids(scene) == before


# --- functional (PET/SPECT) colour fusion and the source map (issue #14) ------------------------------


@pytest.fixture(scope="module")
def mr_and_pet():
    """The demo's misaligned MR on a small grid and the phantom PET in the MR's frame of reference
    (a hybrid PET/MR), as images."""
    from MedFusionLib.imaging.functional_phantom import make_functional_phantom

    phantom = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                                moving_spacing=(3.0, 3.0, 4.0), seed=1)  # fmt: skip
    return phantom.mr, make_functional_phantom("pet", misalignment=DEMO_MISALIGNMENT)


@pytest.fixture()
def scene_mr_pet(mr_and_pet):
    scene = slicer.vtkMRMLScene()
    mr = add_volume_node_from_image(scene, mr_and_pet[0], "MR")
    pet = add_volume_node_from_image(scene, mr_and_pet[1], "PET")
    return scene, mr, pet


def test_colour_fusion_is_an_rgb_vector_node_shown_with_its_own_colours(scene_mr_pet):
    """functional: the fused node is a uint8 RGB vtkMRMLVectorVolumeNode on the reference's grid,
    voxel for voxel the library's result, shown with the window 0..255 (the computed colours);
    the source map is a scalar node equal to the library's, through the blue-white-red table with
    the window fixed to 0..1."""
    scene, mr, pet = scene_mr_pet
    options = FusionOptions(registration="resample", functional="harvard-pet", functional_range="0,12",
                            model="laplacian", device="cpu")  # fmt: skip
    nodes = FusionLogic().process(mr, pet, options=options, sourceMap=True)
    expected = fuse_volumes(image_from_volume_node(mr), image_from_volume_node(pet), options, source_map=True)
    fused = nodes.fusedNode
    assert fused.IsA("vtkMRMLVectorVolumeNode") and fused.GetName() == "MR + PET fused (laplacian, harvard-pet)"
    voxels = slicer.util.arrayFromVolume(fused)
    assert voxels.dtype == np.uint8 and voxels.shape == (*slicer.util.arrayFromVolume(mr).shape, 3)
    np.testing.assert_array_equal(voxels, sitk.GetArrayFromImage(expected.fused))
    np.testing.assert_allclose(_ijk_to_ras(fused), _ijk_to_ras(mr), atol=1e-9)
    display = fused.GetDisplayNode()
    assert display.IsA("vtkMRMLVectorVolumeDisplayNode") and not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (255.0, 127.5)

    share = nodes.sourceMapNode
    assert share.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert share.GetName() == "MR + PET source map (laplacian, harvard-pet)"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(share), sitk.GetArrayFromImage(expected.source_map))
    np.testing.assert_allclose(_ijk_to_ras(share), _ijk_to_ras(mr), atol=1e-9)
    share_display = share.GetDisplayNode()
    assert not share_display.GetAutoWindowLevel()
    assert (share_display.GetWindow(), share_display.GetLevel()) == (1.0, 0.5)
    table = share_display.GetColorNode()
    assert table.GetName() == "MedFusion source map" and table.GetNumberOfColors() == 256
    blue, white, red = (table.GetLookupTable().GetTableValue(index)[:3] for index in (0, 128, 255))
    assert blue[2] > 0.7 > blue[0] and min(white) > 0.99 and red[0] > 0.7 > red[2]
    # The image is the reference's: no registration, so no registration nodes.
    assert nodes.registeredNode is None and nodes.transformNode is None and nodes.registration is None


def test_source_map_legend_says_what_the_ends_mean_and_can_be_hidden(scene_mr_pet):
    scene, mr, pet = scene_mr_pet
    nodes = FusionLogic().process(mr, pet, registration="resample", model="average", device="cpu", sourceMap=True)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes.sourceMapNode), 0.5, atol=1e-6)  # average: either
    legend = FusionLogic.showSourceMapLegend(nodes.sourceMapNode)
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetVisibility()
    assert legend.GetTitleText() == "0 reference \u00b7 0.5 either \u00b7 1 moving"
    assert legend.GetNumberOfLabels() == 3 and legend.GetLabelFormat() == "%.1f"
    assert legend.GetPrimaryDisplayNode() is nodes.sourceMapNode.GetDisplayNode()
    assert FusionLogic.showSourceMapLegend(nodes.sourceMapNode, False) is legend and not legend.GetVisibility()
    assert FusionLogic.showSourceMapLegend(nodes.sourceMapNode) is legend  # shown again, not a second one
    again = FusionLogic().process(mr, pet, registration="resample", model="average", device="cpu", sourceMap=True)
    assert again.sourceMapNode is nodes.sourceMapNode  # updated in place: the legend stays with it
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1  # one table for every source map


def test_output_policy_for_colour_fusions_and_source_maps(scene_mr_pet):
    """A colour fusion has its own node per model and colour map beside the grey one, updated in
    place like it; so has the source map. A chosen output must hold what the run writes: refused
    before the run otherwise, the scene unchanged."""
    scene, mr, pet = scene_mr_pet
    logic = FusionLogic()
    run = {"registration": "resample", "model": "average", "device": "cpu"}
    grey = logic.process(mr, pet, **run, sourceMap=True)
    colour = logic.process(mr, pet, **run, functional="hot", sourceMap=True)
    colour_again = logic.process(mr, pet, **run, functional="hot")
    other_map = logic.process(mr, pet, **run, functional="rainbow")
    assert grey.fusedNode.GetName() == "MR + PET fused (average)" and not grey.fusedNode.IsA("vtkMRMLVectorVolumeNode")
    assert colour.fusedNode is not grey.fusedNode and colour.fusedNode.IsA("vtkMRMLVectorVolumeNode")
    assert colour_again.fusedNode is colour.fusedNode and colour_again.sourceMapNode is None
    assert other_map.fusedNode not in (grey.fusedNode, colour.fusedNode)
    assert colour.sourceMapNode is not grey.sourceMapNode
    assert logic.resultNode(scene, "sourcemap", mr, pet, "average, hot") is colour.sourceMapNode
    assert logic.resultNode(scene, "fused", mr, pet, "average") is grey.fusedNode

    scalar_output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my grey")
    colour_output = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "my colour")
    assert "RGB" in FusionLogic.inputProblem(mr, pet, scalar_output, "resample", "hot")
    assert "colour (vector) volume" in FusionLogic.inputProblem(mr, pet, colour_output, "resample", None)
    assert FusionLogic.inputProblem(mr, pet, colour_output, "resample", "hot") is None
    before = _node_ids(scene)
    with pytest.raises(InputError, match="RGB volume"):
        logic.process(mr, pet, scalar_output, **run, functional="hot")
    with pytest.raises(InputError, match="grey fusion needs a scalar output"):
        logic.startJob(mr, pet, colour_output, **run)
    assert _node_ids(scene) == before
    written = logic.process(mr, pet, colour_output, **run, functional="hot").fusedNode
    assert written is colour_output and colour_output.GetName() == "my colour"
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(colour_output), slicer.util.arrayFromVolume(colour.fusedNode)
    )
    # Vector (colour) volumes are never offered as inputs, and never refused with a traceback.
    assert "grey-scale" in FusionLogic.inputProblem(colour_output, pet, None, "resample")
    assert colour_output not in FusionLogic.defaultInputs(scene, colour_output, None)


def test_demo_pet_lies_in_the_demo_mrs_frame_of_reference():
    """'Load demo volumes' adds a PET a user can fuse into the demo MR in colour at once: the PET
    on a grid of its own (so 'none' is refused) but in the MR's frame (its uptake covers the MR's
    head after resampling by coordinates)."""
    scene = slicer.vtkMRMLScene()
    _, mr = FusionLogic.loadDemoVolumes(scene, size=(32, 40, 28))
    pet = FusionLogic.loadFunctionalDemoVolume(scene)
    assert pet.GetName() == "MedFusion demo PET" and FusionLogic.defaultInputs(scene)[1] is mr
    assert FusionLogic.inputProblem(mr, pet, None, "resample", "harvard-pet") is None
    assert FusionLogic.inputProblem(mr, pet, None, "none", "harvard-pet") is not None
    mr_image = image_from_volume_node(mr)
    on_mr = sitk.GetArrayFromImage(sitk.Resample(image_from_volume_node(pet), mr_image, sitk.Transform(),
                                                 sitk.sitkLinear, 0.0))  # fmt: skip
    head = sitk.GetArrayFromImage(mr_image) > np.percentile(sitk.GetArrayFromImage(mr_image), 60)
    uptake = on_mr > 0.5
    dice = 2 * (head & uptake).sum() / (head.sum() + uptake.sum())
    assert dice > 0.7, dice


def test_worker_colour_job_with_source_map_matches_in_process(scene_mr_pet, logic):
    """The panel's path for a colour fusion with the source map: the worker writes both as
    uncompressed NRRD, and the imported nodes equal the console's."""
    scene, mr, pet = scene_mr_pet
    run = {"registration": "resample", "functional": "harvard-pet", "model": "laplacian", "device": "cpu"}
    direct = logic.process(mr, pet, **run, sourceMap=True)
    fused_direct = slicer.util.arrayFromVolume(direct.fusedNode).copy()
    share_direct = slicer.util.arrayFromVolume(direct.sourceMapNode).copy()
    job = logic.startJob(mr, pet, **run, sourceMap=True, keepFiles=True)
    try:
        job.wait(timeout=300)
        assert job.state == "succeeded", job.error
        assert job.source_map_path.is_file() and b"encoding: raw" in job.source_map_path.read_bytes()[:1000]
        via_worker = logic.finishJob(job)
    finally:
        job.keep_files = False
        job.cleanup()
    assert via_worker.fusedNode is direct.fusedNode and via_worker.sourceMapNode is direct.sourceMapNode
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(via_worker.fusedNode), fused_direct)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(via_worker.sourceMapNode), share_direct)
    plain = logic.startJob(mr, pet, **run)  # without the source map: no file, no node
    try:
        plain.wait(timeout=300)
        assert plain.state == "succeeded", plain.error
        assert not plain.source_map_path.exists()
        assert logic.finishJob(plain).sourceMapNode is None
    finally:
        plain.cleanup()


def test_registration_report_carries_the_confidence_fields(misaligned_phantom):
    """The worker's registration event carries RegistrationResult.confidence's documented fields
    as JSON, and the summary line shows the confidence."""
    import json

    from MedFusionLib.registration import register
    from MedFusionSlicer.server import CONFIDENCE_FIELDS, registration_report

    result = register(misaligned_phantom.ct, misaligned_phantom.mr, "rigid", "simpleitk")
    report = json.loads(json.dumps(registration_report(result)))
    assert set(report) == {"preset", "backend", "metric_before", "metric_after", "seconds", "confidence"}
    assert set(report["confidence"]) == {*CONFIDENCE_FIELDS, "reasons"}
    assert report["confidence"]["doubtful"] is result.confidence.doubtful
    assert report["confidence"]["mutual_information"] == pytest.approx(result.confidence.mutual_information)
    summary = RegistrationSummary.from_report(report)
    assert summary.doubtful is result.confidence.doubtful and result.confidence.summary in summary.text()
