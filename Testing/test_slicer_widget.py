"""The panel (``MedFusionWidget``) driven through what a clinician does, its real code on a real
MRML scene (slicer-core) and a real worker process, with Qt, CTK and Slicer's application stood
in for (``Testing/slicer_standin.py``): open the module with and without volumes, pick two,
Apply, watch the progress, Cancel, Apply again, leave and come back during a run, close the scene
during a run, Reload, install the dependencies, check the registration (fade, flicker,
checkerboard), and a colour fusion with its source-map legend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("slicer_core", reason="the slicer-core wheel (a real MRML scene) is not available for this Python")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedFusion"))

import slicer
import slicer_standin
from conftest import SMALL_SIZE, SMALL_SPACING

from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT, make_head_phantom
from MedFusionSlicer import dependencies
from MedFusionSlicer.volumes import add_volume_node_from_image


@pytest.fixture(scope="module")
def phantoms():
    """A misaligned CT/MR pair on a small grid and a PET in the MR's frame, as images."""
    from MedFusionLib.imaging.functional_phantom import make_functional_phantom

    pair = make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, misalignment=DEMO_MISALIGNMENT,
                             moving_spacing=(3.0, 3.0, 4.0), seed=1)  # fmt: skip
    return pair.ct, pair.mr, make_functional_phantom("pet", misalignment=DEMO_MISALIGNMENT)


@pytest.fixture()
def stand(monkeypatch, tmp_path):
    """The stand-in installed, with ``PythonSlicer`` on PATH (this Python, as Slicer's launcher
    runs Slicer's), the panels it made cleaned up (workers ended) afterwards."""
    launcher = tmp_path / "bin" / "PythonSlicer"
    launcher.parent.mkdir()
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
    stand = slicer_standin.Stand(monkeypatch, str(tmp_path))
    panels = []
    original = stand.widget
    stand.widget = lambda: panels.append(original()) or panels[-1]
    yield stand
    for panel in panels:
        panel.cleanup()
    stand.app.layoutManager().release()


def _add(stand, image, name):
    return add_volume_node_from_image(stand.scene, image, name)


def _choose(combo, text: str) -> None:
    combo.pick([combo.itemText(index) for index in range(combo.count)].index(text))


def _running(panel) -> bool:
    return panel.ui.cancelButton.enabled


def _wait(panel, timeout: float = 60.0) -> list[int]:
    """Let the poll timer tick until the run ends; returns the progress bar's values seen."""
    seen, deadline = [], time.monotonic() + timeout
    while _running(panel):
        job = panel._job
        assert time.monotonic() < deadline, f"the run did not end: {panel.ui.statusLabel.text}, {job.output_lines[-5:]}"
        panel._pollTimer.fire()
        seen.append(panel.ui.progressBar.value)
        time.sleep(0.05)
    return seen


def _views(stand) -> list[tuple]:
    """(background, foreground, foreground opacity) of every slice view."""
    views = []
    for index in range(stand.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = stand.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        views.append((composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
                      round(composite.GetForegroundOpacity(), 3)))  # fmt: skip
    return views


def _apply_ready(stand, phantoms, registration="resample", model="average"):
    """A panel entered on a scene with the CT and MR, set up for a quick run."""
    ct, mr = _add(stand, phantoms[0], "CT"), _add(stand, phantoms[1], "MR")
    panel = stand.widget()
    stand.enter(panel)
    _choose(panel.ui.registrationComboBox, registration)
    panel.ui.modelComboBox.pick(panel.ui.modelComboBox.findData(model))
    return panel, ct, mr


def test_stand_in_offers_exactly_what_the_panel_uses():
    """The stand-in is no richer than the panel: a widget class for each class in the .ui file (Qt
    Designer's names) and no other; in ``qt`` the names MedFusion.py uses (plus QApplication for
    slicer.util.WaitCursor); of slicer.util it replaces only functions Slicer's util has (slicer-core
    ships Slicer's util.py) and that open windows or dialogs, the ones the panel or Reload calls."""
    classes = {element.get("class") for element in ET.parse(slicer_standin.UI_FILE).getroot().iter("widget")}
    assert set(slicer_standin.WIDGET_CLASSES) == classes
    source = slicer_standin.MODULE_DIR.joinpath("MedFusion.py").read_text()
    used_qt = set(re.findall(r"\bqt\.(\w+)", source))
    assert {cls.__name__ for cls in slicer_standin.QT_NAMES} == used_qt | {"QApplication"}
    used_util = set(re.findall(r"slicer\.util\.(\w+)", source))
    assert set(slicer_standin.UTIL_REPLACED) <= used_util | {"reloadScriptedModule"}
    assert all(hasattr(slicer.util, name) for name in slicer_standin.UTIL_REPLACED)


def test_open_the_module_without_volumes_then_with_volumes(stand, phantoms):
    """Without volumes Apply is disabled and says why; with volumes the first two grey-scale ones
    are preselected, never a label map or MedFusion's own result, and the selectors do not list
    label maps."""
    panel = stand.widget()
    stand.enter(panel)
    assert not panel.ui.applyButton.enabled and "Select the reference volume" in panel.ui.applyButton.toolTip
    stand.exit(panel)
    label = stand.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    earlier = _add(stand, phantoms[0], "earlier result")
    earlier.SetAttribute("MedFusion.role", "fused")
    ct, mr = _add(stand, phantoms[0], "CT"), _add(stand, phantoms[1], "MR")
    stand.enter(panel)
    assert panel.ui.referenceVolumeSelector.currentNode() is ct and panel.ui.movingVolumeSelector.currentNode() is mr
    assert label not in panel.ui.referenceVolumeSelector.nodes() and ct in panel.ui.referenceVolumeSelector.nodes()
    assert panel.ui.applyButton.enabled, panel.ui.applyButton.toolTip
    assert stand.dialogs == []


def test_apply_progress_cancel_and_apply_again(stand, phantoms):
    """Apply runs on the worker with the panel locked and the progress shown; the fused volume is
    shown under the reference; Cancel leaves the scene as it was; Apply again updates the same
    fused node."""
    panel, ct, mr = _apply_ready(stand, phantoms)
    panel.ui.applyButton.click()
    assert _running(panel) and not panel.ui.applyButton.enabled and not panel.ui.inputsCollapsibleButton.enabled
    progress = _wait(panel)
    assert progress[-1] == 100 and progress == sorted(progress)
    assert panel.ui.statusLabel.text.startswith("Done: 'CT + MR fused (average)'"), panel.ui.statusLabel.text
    fused = slicer.util.getNode("CT + MR fused (average)")
    assert {view[:2] for view in _views(stand)} == {(fused.GetID(), ct.GetID())}
    assert not panel.ui.compareCollapsibleButton.enabled  # no registration in this run
    nodes = stand.scene.GetNumberOfNodes()
    panel.ui.applyButton.click()
    panel.ui.cancelButton.click()
    _wait(panel)
    assert panel.ui.statusLabel.text == "Cancelled; the scene is unchanged."
    assert stand.scene.GetNumberOfNodes() == nodes
    panel.ui.applyButton.click()
    _wait(panel)
    assert panel.ui.statusLabel.text.startswith("Done"), panel.ui.statusLabel.text
    assert stand.scene.GetNumberOfNodes() == nodes and slicer.util.getNode("CT + MR fused (average)") is fused
    assert stand.dialogs == []


@pytest.mark.parametrize("source_map", [True, False])
def test_leave_the_module_during_a_run_and_come_back(stand, phantoms, source_map):
    """Review 23.2: the run goes on after the module is left (its parameter node is gone then);
    the result is imported and shown, the source map's legend as chosen at Apply. Before, a run
    with a source map ended in 'could not import the result'."""
    panel, ct, mr = _apply_ready(stand, phantoms)
    panel.ui.sourceMapCheckBox.checked = source_map
    panel.ui.sourceMapLegendCheckBox.checked = True
    panel.ui.applyButton.click()
    stand.exit(panel)
    _wait(panel)
    assert stand.dialogs == []
    assert panel.ui.statusLabel.text.startswith("Done"), panel.ui.statusLabel.text
    if source_map:
        share = slicer.util.getNode("CT + MR source map (average)")
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(share)
        assert legend is not None and legend.GetVisibility()
    stand.enter(panel)
    assert panel.ui.referenceVolumeSelector.currentNode() is ct and panel.ui.applyButton.enabled


def test_close_the_scene_during_a_run(stand, phantoms):
    """Closing the scene cancels the run (its inputs are about to go), adds nothing, and the panel
    is ready again on the new scene."""
    panel, ct, mr = _apply_ready(stand, phantoms)
    panel.ui.applyButton.click()
    stand.scene.Clear(0)
    _wait(panel)
    assert panel.ui.statusLabel.text == "Cancelled; the scene is unchanged."
    assert stand.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert not panel.ui.applyButton.enabled and "Select the reference volume" in panel.ui.applyButton.toolTip
    assert stand.dialogs == []


def test_reload_ends_the_worker_and_forgets_medfusions_code(stand, phantoms):
    panel, ct, mr = _apply_ready(stand, phantoms)
    worker = panel.logic.currentWorker
    assert worker is not None and worker.alive
    panel.cleanup()  # Slicer calls it before a Reload
    assert not worker.alive and worker.process.returncode is not None
    ours = ("MedFusionSlicer", "MedFusionLib")
    saved = {name: module for name, module in sys.modules.items() if name.startswith(ours)}
    try:
        panel.onReload()
        assert not any(name.startswith(ours) for name in sys.modules)
    finally:
        sys.modules.update(saved)  # the rest of this test session keeps its modules
    assert stand.dialogs == [("reload", "MedFusion")]


def _torch_missing(monkeypatch):
    """A fresh Slicer on a computer with an NVIDIA driver (which gets torch): torch is not
    installed (everything else as here)."""
    monkeypatch.setattr(dependencies, "this_computer", lambda: "gpu")
    installed = dependencies.installed_version
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None if name == "torch" else installed(name))


def _recording_pip(monkeypatch, calls, fail=False):
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.10: slicer.util.pip_install

    def pip_install(arguments):
        calls.append(list(arguments))
        if fail:
            raise subprocess.CalledProcessError(1, "pip install")

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)


@pytest.mark.parametrize("slicer_pytorch", ["objects", "absent", "failing pip"])
def test_install_dependencies_on_apply(stand, phantoms, monkeypatch, slicer_pytorch):
    """Apply without torch asks first, then installs torch alone from the PyTorch index that
    SlicerPyTorch detects (light-the-torch's backend objects, not strings), or from PyPI without
    SlicerPyTorch; a failed pip gives one dialog saying how to install by hand, and Apply works
    again afterwards."""
    from test_slicer_module_files import _install_fake_slicer_pytorch, _LightTheTorchBackend

    _torch_missing(monkeypatch)
    if slicer_pytorch == "objects":
        _install_fake_slicer_pytorch(monkeypatch, [_LightTheTorchBackend(tag) for tag in ("cpu", "cu118", "cu126")])
    else:
        monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    calls = []
    _recording_pip(monkeypatch, calls, fail=slicer_pytorch == "failing pip")
    panel, ct, mr = _apply_ready(stand, phantoms)
    assert panel.ui.modelComboBox.itemText(0) == "(installed on first Apply)"
    # Install: yes. Where this test process has imported torch already, the panel rightly asks to
    # restart Slicer after "installing" it over the loaded one: no.
    restart_asked = "torch" in sys.modules and slicer_pytorch != "failing pip"
    stand.answers += [True, False] if restart_asked else [True]
    panel.ui.applyButton.click()
    kinds = [kind for kind, _ in stand.dialogs]
    assert kinds[0] == "confirm" and "torch>=2.2" in stand.dialogs[0][1]
    assert calls[0][0] == "torch>=2.2" and "torchvision" not in " ".join(calls[0])
    if slicer_pytorch == "objects":
        assert calls[0][calls[0].index("--index-url") + 1] == "https://download.pytorch.org/whl/cu126"
    else:
        assert "--index-url" not in calls[0]
    if slicer_pytorch == "failing pip":
        assert kinds == ["confirm", "error"] and "pip download --dest medfusion-wheels" in stand.dialogs[1][1]
    else:
        assert kinds == ["confirm"] * (2 if restart_asked else 1)  # torch is still absent here: nothing runs
        assert stand.answers == [] and ("restart", "") not in stand.dialogs
    assert not _running(panel) and panel.ui.applyButton.enabled


def test_fade_flicker_and_checkerboard_after_apply(stand, phantoms):
    """Review 23.3: after Apply the views show the fused volume under the reference; the fade
    slider then shows the reference under the registered volume at the slider's opacity (before,
    it faded the reference over the fused volume and the registered volume never appeared); the
    flicker alternates the registered volume fully on and off; the checkerboard replaces them."""
    panel, ct, mr = _apply_ready(stand, phantoms, registration="rigid")
    panel.ui.applyButton.click()
    _wait(panel)
    assert stand.dialogs == [] and panel.ui.compareCollapsibleButton.enabled, panel.ui.statusLabel.text
    fused = slicer.util.getNode("CT + MR fused (average)")
    registered = slicer.util.getNode("MR registered")
    assert {view[:2] for view in _views(stand)} == {(fused.GetID(), ct.GetID())}
    panel.ui.fadeSliderWidget.value = 0.2
    assert set(_views(stand)) == {(ct.GetID(), registered.GetID(), 0.2)}
    panel.ui.fadeSliderWidget.value = 0.7
    assert set(_views(stand)) == {(ct.GetID(), registered.GetID(), 0.7)}
    panel.ui.flickerCheckBox.checked = True
    assert panel._flickerTimer.isActive()
    opacities = []
    for _ in range(3):
        panel._flickerTimer.fire()
        opacities.append({view[2] for view in _views(stand)})
    assert opacities == [{0.0}, {1.0}, {0.0}]
    panel.ui.checkerboardButton.click()
    board = slicer.util.getNode("CT / MR checkerboard")
    assert {view[:2] for view in _views(stand)} == {(board.GetID(), None)}
    assert not panel.ui.flickerCheckBox.checked and not panel._flickerTimer.isActive()


def test_closing_the_scene_while_flickering_stops_it_and_unchecks_it(stand, phantoms):
    """Review 23.10: the flicker's volumes go with the scene; the flicker stops and its checkbox
    says so. Before, the timer stopped at its next tick but the box stayed checked."""
    panel, ct, mr = _apply_ready(stand, phantoms, registration="rigid")
    panel.ui.applyButton.click()
    _wait(panel)
    panel.ui.flickerCheckBox.checked = True
    panel._flickerTimer.fire()
    stand.scene.Clear(0)
    panel._flickerTimer.fire()
    assert not panel.ui.flickerCheckBox.checked and not panel._flickerTimer.isActive()
    assert not panel.ui.compareCollapsibleButton.enabled


def test_colour_fusion_with_its_source_map_legend(stand, phantoms):
    """A PET fused in colour into the MR: an RGB vector volume shown with its own colours (window
    0..255), the source map over it with its legend, which the checkbox hides and shows."""
    mr, pet = _add(stand, phantoms[1], "MR"), _add(stand, phantoms[2], "PET")
    panel = stand.widget()
    stand.enter(panel)
    panel.ui.referenceVolumeSelector.setCurrentNode(mr)
    panel.ui.movingVolumeSelector.setCurrentNode(pet)
    _choose(panel.ui.registrationComboBox, "resample")
    _choose(panel.ui.functionalComboBox, "harvard-pet")
    panel.ui.modelComboBox.pick(panel.ui.modelComboBox.findData("average"))
    panel.ui.sourceMapCheckBox.checked = True
    panel.ui.sourceMapLegendCheckBox.checked = True
    panel.ui.applyButton.click()
    _wait(panel)
    assert stand.dialogs == [], stand.dialogs
    fused = slicer.util.getNode("MR + PET fused (average, harvard-pet)")
    share = slicer.util.getNode("MR + PET source map (average, harvard-pet)")
    assert fused.IsA("vtkMRMLVectorVolumeNode")
    display = fused.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (255.0, 127.5, 0)
    assert {view[:2] for view in _views(stand)} == {(fused.GetID(), share.GetID())}
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(share)
    assert legend.GetVisibility()
    panel.ui.sourceMapLegendCheckBox.checked = False
    assert not legend.GetVisibility()
    panel.ui.sourceMapLegendCheckBox.checked = True
    assert legend.GetVisibility()


def test_models_without_weights_are_listed_but_cannot_be_chosen(stand):
    """Review 23.10: a model whose weights are missing stays in the list, disabled, through the
    panel's own QStandardItemModel (``QComboBox.model()`` is a QAbstractItemModel to PythonQt)."""
    panel = stand.widget()
    info = {"device": "CPU only", "models": [
        {"name": "auto", "description": "d", "default": True, "usable": True, "note": "emfusion here"},
        {"name": "haf", "description": "h", "default": False, "usable": False, "note": "no weights"},
    ]}  # fmt: skip
    panel.fillModels(info)
    combo = panel.ui.modelComboBox
    assert [combo.itemText(index) for index in range(combo.count)] == [
        "auto (default) - emfusion here", "haf - no weights"]  # fmt: skip
    assert combo.itemData(1, slicer_standin.Qt.ToolTipRole) == "h"
    combo.pick(1)
    assert combo.currentIndex == 0 and panel.ui.deviceInfoLabel.text == "CPU only"


def test_help_names_the_headless_script_where_it_is(stand):
    """Review 23.10: the help's path to MedFusionBatch.py is the script beside the module file (in an
    installed extension: qt-scripted-modules/Resources/Scripts/), not a made-up one."""
    parent = slicer_standin.types.SimpleNamespace()
    stand.module.MedFusion(parent)
    script = re.search(r"--python-script\s+(\S+)", parent.helpText).group(1)
    assert Path(script).is_file() and Path(script).name == "MedFusionBatch.py"
