"""MedFusion: register two volumes and fuse them slice by slice with a deep network, in 3D Slicer.

Module -> Widget -> Logic -> Test, as in Slicer's scripted-module template. The widget is a thin
panel: its state lives in a parameter node (saved with the scene), the work runs in a separate
process (:mod:`MedFusionSlicer.worker`) so the interface stays responsive with a progress bar and a
real Cancel, and everything it computes comes from :class:`MedFusionSlicer.logic.FusionLogic`,
which the Python console and headless scripts use directly::

    import MedFusion
    nodes = MedFusion.MedFusionLogic().process(ctNode, mrNode, registration="rigid")

Nothing here imports torch at load time: Slicer loads this file at start-up, and torch is installed
on first use, with the user's consent (:mod:`MedFusionSlicer.dependencies`).
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedFusionSlicer import dependencies
from MedFusionSlicer.choices import AXIS_CHOICES, BACKEND_CHOICES, DEVICE_CHOICES, REGISTRATION_CHOICES
from MedFusionSlicer.logic import FusionLogic
from MedFusionSlicer.worker import Finished, Message, Progress, overall_fraction

# How often the panel looks at the worker's output (ms): smooth progress, negligible cost.
POLL_INTERVAL_MS = 200


#
# Module
#


class MedFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedFusion"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["The MedFusion team"]
        self.parent.helpText = """
Registers a moving volume (e.g. an MRI) to a reference volume (e.g. a CT) and fuses the two into one
volume that keeps what each shows best, slice by slice with a deep network (EMFusion, HAF, DenseFuse)
or a classical rule, on the GPU when there is one. The fused volume lies exactly on the reference's
grid; the registered moving volume and the transform are kept as nodes.
<br>Runs in a separate process: the interface stays responsive and Cancel stops the run at once,
leaving the scene as it was. Python console: <code>MedFusion.MedFusionLogic().process(reference, moving)</code>.
Without a window: <code>Slicer --no-main-window --python-script
.../MedFusion/Resources/Scripts/MedFusionBatch.py -- --reference R --moving M --output O</code>.
"""
        self.parent.acknowledgementText = """
MedFusion builds on SimpleITK, elastix (itk-elastix), PyTorch and 3D Slicer. The fusion networks follow
EMFusion (Xu &amp; Ma, Information Fusion 2021) and DenseFuse (Li &amp; Wu, IEEE TIP 2019).
"""


#
# Parameter node: the panel's state, saved with the scene
#


@parameterNodeWrapper
class MedFusionParameterNode:
    referenceVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    registration: Annotated[str, Choice(list(REGISTRATION_CHOICES))] = "rigid"
    backend: Annotated[str, Choice(list(BACKEND_CHOICES))] = "auto"
    model: str = ""  # "" = MedFusionLib's default model; set from the model combo box
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    axis: Annotated[str, Choice(list(AXIS_CHOICES))] = "axial"
    outputVolume: vtkMRMLScalarVolumeNode
    referenceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    keepTemporaryFiles: bool = False


#
# Widget
#


class MedFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, registration, fusion, output; Apply / Cancel, progress bar, status line."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobInputs = None
        self._optionalDependenciesDeclined = False
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedFusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.referenceOpacitySliderWidget.connect("valueChanged(double)", self.onReferenceOpacityChanged)
        self.fillModelsAndDevice()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer is closing the module: end a running worker and delete its files."""
        self._pollTimer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job.cleanup()
            self._job = self._jobInputs = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()  # the job's inputs are about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.referenceVolume:
            self._parameterNode.referenceVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.updateGuiFromParameterNode()

    def fillModelsAndDevice(self) -> None:
        """Models from MedFusionLib's registry (each with its one-line description) and the GPU's
        name; before the dependencies are installed, say so instead."""
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        if dependencies.missing_requirements(include_optional=False):
            self.ui.modelComboBox.addItem("(installed on first Apply)", "")
            self.ui.deviceInfoLabel.text = "torch is not installed yet; Apply installs it after asking."
        else:
            for choice in self.logic.modelChoices():
                label = choice.name + (" (default)" if choice.default else "") + (f" - {choice.note}" if choice.note else "")
                self.ui.modelComboBox.addItem(label, choice.name)
                index = self.ui.modelComboBox.count - 1
                self.ui.modelComboBox.setItemData(index, choice.description, qt.Qt.ToolTipRole)
                if not choice.usable:
                    self.ui.modelComboBox.model().item(index).setEnabled(False)
            self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        self.ui.modelComboBox.blockSignals(False)
        self.updateGuiFromParameterNode()

    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """The parts the parameter-node connectors do not cover: model, Apply's state and tooltip."""
        if self._parameterNode is None:
            return
        index = self.ui.modelComboBox.findData(self._parameterNode.model)
        if index < 0:
            index = max(0, self.ui.modelComboBox.findText("(default)", qt.Qt.MatchContains))
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.currentIndex = index
        self.ui.modelComboBox.blockSignals(False)
        self.ui.modelDescriptionLabel.text = self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or ""
        if self._job is not None:
            return  # while running, Apply stays disabled and Cancel enabled
        problem = self.logic.inputProblem(
            self._parameterNode.referenceVolume,
            self._parameterNode.movingVolume,
            self._parameterNode.outputVolume,
            self._parameterNode.registration,
        )
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or "Register and fuse the two volumes (runs in a separate process)."

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""

    def onReferenceOpacityChanged(self, value: float) -> None:
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            compositeNode.SetForegroundOpacity(value)

    # --- running -------------------------------------------------------------------------------

    def ensureDependencies(self) -> bool:
        """Install what MedFusionLib needs, after asking; False if it is still missing."""
        missing = dependencies.missing_requirements()
        required = [requirement for requirement in missing if not requirement.optional]
        if not missing or (not required and self._optionalDependenciesDeclined):
            return True
        lines = "\n".join(f"  {r.specifier}: {r.purpose}{' (optional)' if r.optional else ''}" for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
            "MedFusion needs these Python packages, which will be installed into Slicer's Python "
            f"(Slicer's own packages such as SimpleITK and numpy are never changed):\n\n{lines}\n\nInstall them now?",
            windowTitle="MedFusion: install dependencies",
        ):
            if required:
                self.ui.statusLabel.text = "MedFusion cannot run without " + ", ".join(r.specifier for r in required)
            self._optionalDependenciesDeclined = True  # ask again only when a required one is missing
            return not required
        try:
            with slicer.util.WaitCursor():
                installer = dependencies.slicer_torch_installer()
                for line in dependencies.install(missing, dependencies.slicer_pip_install, installer):
                    logging.info(line)
        except Exception as error:  # no network, a proxy, a failed build: say how to do it by hand
            logging.error(f"MedFusion: installing dependencies failed: {error}")
            slicer.util.errorDisplay(dependencies.offline_instructions(missing), windowTitle="MedFusion: installation failed")
            return False
        if dependencies.needs_restart(missing) and slicer.util.confirmYesNoDisplay(
            "A package that was upgraded is already in use; Slicer must restart to load the new version. Restart now?",
            windowTitle="MedFusion: restart Slicer",
        ):
            slicer.util.restart()
            return False
        self.fillModelsAndDevice()
        return not dependencies.missing_requirements(include_optional=False)

    def onApplyButton(self) -> None:
        if not self.ensureDependencies():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("MedFusion could not start.", waitCursor=True):
            self._job = self.logic.startJob(
                parameters.referenceVolume,
                parameters.movingVolume,
                registration=parameters.registration,
                model=parameters.model or None,
                device=parameters.device,
                axis=parameters.axis,
                backend=parameters.backend,
                pythonExecutable=self.logic.slicerPythonExecutable(),
                temporaryRoot=slicer.app.temporaryPath,
            )
            self._jobInputs = (parameters.referenceVolume, parameters.movingVolume, parameters.outputVolume)
            self.setRunning(True)
            self.ui.statusLabel.text = "Starting ..."
            self._pollTimer.start()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def setRunning(self, running: bool) -> None:
        for section in (self.ui.inputsCollapsibleButton, self.ui.registrationCollapsibleButton,
                        self.ui.fusionCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.enabled = not running
        self.ui.progressBar.value = 0 if running else self.ui.progressBar.value

    def onPoll(self) -> None:
        """Show what the worker reported since the last tick; import the results when it succeeded."""
        if self._job is None:
            self._pollTimer.stop()
            return
        registering = self._job.registration != "none"
        for event in self._job.poll():
            if isinstance(event, Progress):
                self.ui.progressBar.value = round(100 * overall_fraction(event, registering))
                self.ui.statusLabel.text = (
                    f"Registering ({self._job.registration}) ..." if event.stage == "register"
                    else f"Fusing: {event.done} of {event.total} slices"
                )
            elif isinstance(event, Message):
                logging.info(f"MedFusion worker: {event.text}")
                if event.text.startswith("medfusion: "):  # the library's own notes, e.g. a GPU out-of-memory fallback
                    self.ui.statusLabel.text = event.text.removeprefix("medfusion: ")
            elif isinstance(event, Finished):
                self.onJobFinished(event)
                return

    def onJobFinished(self, event: Finished) -> None:
        job, (referenceNode, movingNode, outputNode) = self._job, self._jobInputs
        self._pollTimer.stop()
        try:
            if event.state == "succeeded":
                with slicer.util.tryWithErrorDisplay("MedFusion could not import the result.", waitCursor=True):
                    nodes = self.logic.finishJob(job, referenceNode, movingNode, outputNode)
                    if self._parameterNode is not None:
                        self._parameterNode.outputVolume = nodes.fusedNode
                    self.showResult(nodes.fusedNode, referenceNode)
                    self.ui.progressBar.value = 100
                    self.ui.statusLabel.text = f"Done: '{nodes.fusedNode.GetName()}'"
            elif event.state == "cancelled":
                self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            else:
                self.ui.statusLabel.text = "Failed; the scene is unchanged."
                slicer.util.errorDisplay(f"MedFusion failed: {event.error}", detailedText="\n".join(job.output_lines))
        finally:
            if self._parameterNode is not None and self._parameterNode.keepTemporaryFiles:
                logging.info(f"MedFusion: temporary files kept in {job.folder}")
            else:
                job.cleanup()
            self._job = self._jobInputs = None
            self.setRunning(False)
            self.updateGuiFromParameterNode()

    def showResult(self, fusedNode, referenceNode) -> None:
        """The fused volume in the slice views, the reference over it at the chosen opacity."""
        slicer.util.setSliceViewerLayers(
            background=fusedNode,
            foreground=referenceNode,
            foregroundOpacity=self.ui.referenceOpacitySliderWidget.value,
            fit=True,
        )


#
# Logic
#


class MedFusionLogic(ScriptedLoadableModuleLogic, FusionLogic):
    """:class:`MedFusionSlicer.logic.FusionLogic` (``process``, ``startJob``, ``finishJob``) with
    Slicer's parameter node. Usable from the Python console and headless scripts."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedFusionParameterNode(super().getParameterNode())

    @staticmethod
    def slicerPythonExecutable() -> str:
        """Slicer's own Python (``PythonSlicer``), which runs the worker process."""
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        return os.path.join(slicer.app.slicerHome, "bin", name)

    @staticmethod
    def deviceDescription() -> str:
        """The GPU torch would use, or why fusion runs on the CPU."""
        import torch

        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            return f"GPU: {properties.name} ({properties.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
        if torch.version.cuda is None:
            return f"CPU only: torch {torch.__version__} is a CPU build (install SlicerPyTorch for a CUDA build)"
        return f"CPU only: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; check the NVIDIA driver"


#
# Test
#


class MedFusionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or ctest): a synthetic CT/MR pair in the scene, fused by
    the logic in this process and in a worker process."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_process_fuses_synthetic_pair_on_reference_grid()
        self.setUp()
        self.test_job_result_equals_in_process_result()

    def _phantomNodes(self, misaligned: bool):
        from MedFusionLib.phantom import DEMO_MISALIGNMENT, make_head_phantom
        from MedFusionSlicer.volumes import add_volume_node_from_image

        phantom = make_head_phantom(
            size=(48, 56, 40), spacing=(3.5, 3.5, 4.5), seed=1,
            misalignment=DEMO_MISALIGNMENT if misaligned else None, moving_spacing=(3.0, 3.0, 4.0),
        )  # fmt: skip
        return (
            add_volume_node_from_image(slicer.mrmlScene, phantom.ct, "CT"),
            add_volume_node_from_image(slicer.mrmlScene, phantom.mr, "MR"),
        )

    def test_process_fuses_synthetic_pair_on_reference_grid(self):
        import numpy as np

        self.delayDisplay("Fusing a registered synthetic pair in Slicer's process")
        ct, mr = self._phantomNodes(misaligned=True)
        nodes = MedFusionLogic().process(ct, mr, registration="rigid", backend="simpleitk", device="cpu")
        fused = slicer.util.arrayFromVolume(nodes.fusedNode)
        self.assertEqual(fused.shape, slicer.util.arrayFromVolume(ct).shape)
        self.assertTrue(0.0 <= fused.min() and fused.max() <= 1.0 and fused.max() > 0.5)
        reference_matrix, fused_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(reference_matrix)
        nodes.fusedNode.GetIJKToRASMatrix(fused_matrix)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(reference_matrix.GetElement(row, column), fused_matrix.GetElement(row, column), places=6)
        self.assertIsNotNone(nodes.registeredNode)
        self.assertIsNotNone(nodes.transformNode)
        self.assertTrue(np.isfinite(fused).all())
        self.delayDisplay("Test passed")

    def test_job_result_equals_in_process_result(self):
        import numpy as np

        self.delayDisplay("Fusing in a worker process")
        ct, mr = self._phantomNodes(misaligned=False)
        logic = MedFusionLogic()
        direct = logic.process(ct, mr, registration="none", device="cpu")
        job = logic.startJob(ct, mr, registration="none", device="cpu", pythonExecutable=logic.slicerPythonExecutable())
        try:
            job.wait(timeout=300)
            self.assertEqual(job.state, "succeeded", job.error)
            viaWorker = logic.finishJob(job, ct, mr)
        finally:
            job.cleanup()
        difference = np.abs(slicer.util.arrayFromVolume(direct.fusedNode) - slicer.util.arrayFromVolume(viaWorker.fusedNode))
        self.assertLess(float(difference.max()), 1e-6)
        self.delayDisplay("Test passed")
