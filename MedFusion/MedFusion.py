"""MedFusion: register two volumes and fuse them slice by slice with a deep network, in 3D Slicer.

Module -> Widget -> Logic -> Test, as in Slicer's scripted-module template. The widget is a thin
panel: its state lives in a parameter node (saved with the scene), the work runs in a warm worker
process (:mod:`MedFusionSlicer.worker`) so the interface stays responsive with a progress bar and a
real Cancel, and everything it computes comes from :class:`MedFusionSlicer.logic.FusionLogic`,
which the Python console and headless scripts use directly::

    import MedFusion
    nodes = MedFusion.MedFusionLogic().process(ctNode, mrNode, registration="rigid")

Requires Slicer 5.10 or later (Python 3.12). This file is written so that an older Slicer
(Python 3.9) can still execute it up to the version check below and then shows one message
instead of a traceback: nothing above the check needs Python 3.10, and nothing that does is
imported when the check fails. Nothing here imports torch or SimpleITK at load time: Slicer loads
this file at every start-up.
"""

from __future__ import annotations

import logging
import os
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # a Slicer too old to have translations; it only gets the refusal message

    def _(text):
        return text

    def translate(context, text):
        return text


from MedFusionSlicer.compat import forget_modules, refusal_reason, running_slicer_version

# Why MedFusion cannot run in this Slicer (too old), or None. Checked before anything that needs
# Python 3.10 or later is imported.
REFUSAL = refusal_reason(sys.version_info, running_slicer_version(slicer))

if REFUSAL is None:
    from typing import Annotated, Union

    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    from MedFusionSlicer import compare, dependencies
    from MedFusionSlicer.choices import (
        AXIS_CHOICES,
        BACKEND_CHOICES,
        DEFAULTS,
        DEVICE_CHOICES,
        FUNCTIONAL_CHOICES,
        FUNCTIONAL_OFF,
        MODEL_CHOICES,
        REGISTRATION_CHOICES,
        OptionsError,
        panel_options,
    )
    from MedFusionSlicer.logic import FusionLogic, apply_state
    from MedFusionSlicer.results import RegistrationSummary
    from MedFusionSlicer.worker import Finished, Message, Notice, Progress, overall_fraction, python_executable
else:
    logging.getLogger("MedFusion").error(REFUSAL)
    # Stand-ins so that the class statements below still execute; the module only shows REFUSAL.
    FusionLogic = object

    def parameterNodeWrapper(classtype):
        return classtype

    REGISTRATION_CHOICES = BACKEND_CHOICES = DEVICE_CHOICES = AXIS_CHOICES = FUNCTIONAL_CHOICES = ()
    FUNCTIONAL_OFF = "off"
    DEFAULTS = None

logger = logging.getLogger("MedFusion")
# How often the panel looks at the worker's output (ms): smooth progress, negligible cost.
POLL_INTERVAL_MS = 200
# Flicker period (ms): long enough to see each volume, short enough to catch a shift.
FLICKER_INTERVAL_MS = 600
# The headless script, beside this file as in the source tree and as Slicer installs a scripted
# module's resources (<extension>/lib/Slicer-X.Y/qt-scripted-modules/Resources/Scripts/).
BATCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Scripts", "MedFusionBatch.py")


#
# Module
#


class MedFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedFusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFusion developers (MedFusion project)"]
        self.parent.helpText = (f"<b>{REFUSAL}</b>" if REFUSAL else "") + _("""
Registers a moving volume (e.g. an MRI) to a reference volume (e.g. a CT) and fuses the two into one
volume that keeps what each shows best, slice by slice with a deep network (EMFusion, HAF, DenseFuse)
or a classical rule, on the GPU when there is one. The fused volume lies exactly on the reference's
grid; the registered moving volume, the transform and a checkerboard are kept as nodes. A PET or
SPECT moving volume can be fused in colour (<i>Functional colour map</i>), and a <i>source map</i>
shows, per voxel, which input the fused value came from.
<br>Needs 3D Slicer 5.10 or later. Runs in a separate process: the interface stays responsive and
Cancel stops the run at once, leaving the scene as it was. <i>Load demo volumes</i> adds a phantom
CT, MR and PET to try it. Python console: <code>MedFusion.MedFusionLogic().process(reference, moving)</code>.
Without a window: <code>Slicer --no-main-window --python-script
{script} -- --reference R --moving M --output O</code>.
""").format(script=BATCH_SCRIPT)
        self.parent.acknowledgementText = _("""
MedFusion builds on SimpleITK, elastix (itk-elastix), PyTorch and 3D Slicer. The fusion networks follow
EMFusion (Xu &amp; Ma, Information Fusion 2021) and DenseFuse (Li &amp; Wu, IEEE TIP 2019).
""")


#
# Parameter node: the panel's state, saved with the scene
#


@parameterNodeWrapper
class MedFusionParameterNode:
    referenceVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    registration: Annotated[str, Choice(list(REGISTRATION_CHOICES))] = DEFAULTS.registration if DEFAULTS else ""
    backend: Annotated[str, Choice(list(BACKEND_CHOICES))] = DEFAULTS.backend if DEFAULTS else ""
    model: str = ""  # "" = MedFusionLib's default model; set from the model combo box
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = DEFAULTS.device if DEFAULTS else ""
    axis: Annotated[str, Choice(list(AXIS_CHOICES))] = DEFAULTS.axis if DEFAULTS else ""
    functional: Annotated[str, Choice(list(FUNCTIONAL_CHOICES))] = FUNCTIONAL_OFF  # off, or a colour map
    functionalRange: str = "auto"  # auto, or LOW,HIGH in the functional volume's units
    sourceMap: bool = False
    sourceMapLegend: bool = False  # the legend is shown on request
    # None: the fused node of these inputs (see logic's output policy). A Union, so that the selector lists
    # vector (RGB) volumes too: for a colour fusion (the wrapper sets a node selector's types from this).
    outputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode, None]  # noqa: UP007 (the wrapper needs Union)
    referenceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5  # the overlay's: reference or source map
    fade: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    keepTemporaryFiles: bool = False


#
# Widget
#


class MedFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, registration, fusion, output, registration check; Apply / Cancel,
    progress bar, status line. A thin layer: every decision is in MedFusionSlicer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._connectingGui = False
        self._observedInputs = []
        self._job = None
        self._installing = False
        self._result = None  # FusionNodes of the last run
        self._jobShowsLegend = False  # the source-map legend choice captured at Apply
        self._optionalDependenciesDeclined = False
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPoll)
        self._flickerTimer = qt.QTimer()
        self._flickerTimer.setInterval(FLICKER_INTERVAL_MS)
        self._flickerTimer.timeout.connect(self.onFlickerStep)
        self._flickerShowsMoving = True

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if REFUSAL is not None:
            label = qt.QLabel(REFUSAL)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedFusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemo)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.referenceOpacitySliderWidget.connect("valueChanged(double)", self.onReferenceOpacityChanged)
        self.ui.fadeSliderWidget.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.flickerCheckBox.connect("toggled(bool)", self.onFlickerToggled)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onShowCheckerboard)
        self.ui.sourceMapLegendCheckBox.connect("toggled(bool)", self.onSourceMapLegendToggled)
        self.ui.compareCollapsibleButton.enabled = False
        # The model list's own item model: a QStandardItemModel made here is one for certain, so
        # its items can be disabled (combo.model() is typed QAbstractItemModel, which has no item()).
        self._modelItems = qt.QStandardItemModel()
        self.ui.modelComboBox.setModel(self._modelItems)
        self.fillModels(None)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer is closing the module (or reloading it): end a run and the worker, delete files."""
        self._pollTimer.stop()
        self._flickerTimer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job.cleanup()
            self._job = None
        if self.logic is not None:
            self.logic.stopWorker()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload also MedFusionSlicer and MedFusionLib, not only this file (cleanup() ends the
        worker, so the next run uses the new code too)."""
        forget_modules()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        if REFUSAL is not None:
            return
        self.initializeParameterNode()
        # Warm the worker while the user picks inputs: torch, the models and elastix load meanwhile.
        if self._job is None:
            try:
                started = self.logic.startWorker(self._cpuOnly(), self._pythonExecutable())
            except OSError as error:  # no PythonSlicer (FileNotFoundError): Apply reports it in full
                logger.warning(f"could not start the worker in advance: {error}")
                started = None
            if started is not None:
                self._pollTimer.start()

    def exit(self) -> None:
        # A running job keeps going: it captured everything it needs at Apply.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()  # the job's inputs are about to disappear
        self._result = None
        self.ui.flickerCheckBox.checked = False  # stops the flicker: its volumes are about to disappear
        self.ui.compareCollapsibleButton.enabled = False
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        reference, moving = self.logic.defaultInputs(
            slicer.mrmlScene, self._parameterNode.referenceVolume, self._parameterNode.movingVolume
        )
        self._parameterNode.referenceVolume, self._parameterNode.movingVolume = reference, moving

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._connectingGui = True  # the widgets take the saved values: not a user action
            try:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            finally:
                self._connectingGui = False
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self.updateGuiFromParameterNode()

    def observeInputs(self) -> None:
        """Follow edits of the selected volumes themselves (new voxels, a parent transform), which
        change whether Apply can run without changing the parameter node."""
        for node in self._observedInputs:
            for event in (
                vtk.vtkCommand.ModifiedEvent,
                slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
            ):
                self.removeObserver(node, event, self.onInputModified)
        nodes = []
        if self._parameterNode is not None:
            nodes = [node for node in (self._parameterNode.referenceVolume, self._parameterNode.movingVolume) if node]
        for node in nodes:
            for event in (
                vtk.vtkCommand.ModifiedEvent,
                slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
            ):
                self.addObserver(node, event, self.onInputModified)
        self._observedInputs = nodes

    def onInputModified(self, caller=None, event=None) -> None:
        self.updateApplyButton()

    def fillModels(self, info) -> None:
        """The model list: names first (known without torch), then with descriptions and whether
        their weights are present once the worker reported them; the device line likewise."""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        missing = dependencies.missing_requirements(include_optional=False)
        choices = self.logic.workerModelChoices(info)
        if missing and not choices:
            combo.addItem(_("(installed on first Apply)"), "")
            self.ui.deviceInfoLabel.text = _("torch is not installed yet; Apply installs it after asking.")
        elif not choices:
            # Names are known without torch; descriptions and weights status come from the worker.
            for name in MODEL_CHOICES:
                combo.addItem(name + (_(" (default)") if name == DEFAULTS.model else ""), name)
            self.ui.deviceInfoLabel.text = _("Starting the MedFusion worker ...")
        else:
            for choice in choices:
                label = (
                    choice.name
                    + (_(" (default)") if choice.default else "")
                    + (f" - {choice.note}" if choice.note else "")
                )
                combo.addItem(label, choice.name)
                index = combo.count - 1
                combo.setItemData(index, choice.description, qt.Qt.ToolTipRole)
                if not choice.usable:
                    self._modelItems.item(index).setEnabled(False)
        if info is not None:
            # Also when torch is broken: the reason shows here, and Apply stays available to repair it.
            self.ui.deviceInfoLabel.text = str(info.get("device", ""))
        combo.blockSignals(False)
        self.updateGuiFromParameterNode()

    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """The parts the parameter-node connectors do not cover: model, Apply's state, the inputs'
        observers and the registration check."""
        self.observeInputs()
        if self._parameterNode is None:
            return
        combo = self.ui.modelComboBox
        index = combo.findData(self._parameterNode.model or DEFAULTS.model)
        combo.blockSignals(True)
        combo.currentIndex = max(index, 0)
        combo.blockSignals(False)
        self.ui.modelDescriptionLabel.text = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or ""
        self.ui.functionalRangeLineEdit.enabled = self._parameterNode.functional != FUNCTIONAL_OFF
        self.updateApplyButton()

    def updateApplyButton(self) -> None:
        problem = None
        if self._parameterNode is not None:
            try:
                options = self.currentOptions()
            except OptionsError as error:  # e.g. a functional range being typed: say what is wrong
                problem = str(error)[:1].upper() + str(error)[1:] + "."
            else:
                problem = self.logic.inputProblem(
                    self._parameterNode.referenceVolume, self._parameterNode.movingVolume,
                    self._parameterNode.outputVolume, options.registration, options.functional,
                )  # fmt: skip
        enabled, tooltip = apply_state(problem, self._job is not None, self._installing)
        self.ui.applyButton.enabled = enabled and self._parameterNode is not None
        self.ui.applyButton.toolTip = tooltip

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""

    def onReferenceOpacityChanged(self, value: float) -> None:
        """The overlay on the fused volume (the reference, or the source map): only the views that
        show MedFusion's fused volume, and only when the user moves the slider."""
        if self._connectingGui or self._result is None:
            return
        compare.set_foreground_opacity(slicer.mrmlScene, [self._result.fusedNode.GetID()], value)

    # --- running -------------------------------------------------------------------------------

    def _cpuOnly(self) -> bool:
        return self._parameterNode is not None and self._parameterNode.device == "cpu"

    @staticmethod
    def _pythonExecutable() -> str:
        return python_executable(slicer_home=slicer.app.slicerHome)

    def ensureDependencies(self) -> bool:
        """Install what MedFusionLib needs, after asking; False if a required package is still missing."""
        missing = dependencies.missing_requirements()
        required = [requirement for requirement in missing if not requirement.optional]
        if not missing or (not required and self._optionalDependenciesDeclined):
            return True
        lines = "\n".join(f"  {r.specifier}: {r.purpose}{_(' (optional)') if r.optional else ''}" for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "MedFusion needs these Python packages, which will be installed into Slicer's Python "
                "(Slicer's own packages such as SimpleITK and numpy are never changed):"
            )
            + f"\n\n{lines}\n\n"
            + _("Install them now?"),
            windowTitle=_("MedFusion: install dependencies"),
        ):
            if required:
                self.ui.statusLabel.text = _("MedFusion cannot run without ") + ", ".join(r.specifier for r in required)
            self._optionalDependenciesDeclined = True  # ask again only when a required one is missing
            return not required
        self.ui.statusLabel.text = _("Installing Python packages; this can take minutes ...")
        slicer.app.processEvents()
        if not self._install(missing):
            return False
        if dependencies.needs_restart(missing) and slicer.util.confirmYesNoDisplay(
            _(
                "A package that was upgraded is already in use; Slicer must restart to load the new version. "
                "Restart now?"
            ),
            windowTitle=_("MedFusion: restart Slicer"),
        ):
            slicer.util.restart()
            return False
        self.fillModels(None)
        return not dependencies.missing_requirements(include_optional=False)

    def _install(self, requirements, repair: bool = False) -> bool:
        """pip-install ``requirements`` with Apply disabled meanwhile (a second click would start a
        second pip); on failure log it, show how to install by hand, and return False."""
        self._installing = True
        self.updateApplyButton()
        try:
            with slicer.util.WaitCursor():
                index = dependencies.slicer_torch_index()
                for line in dependencies.install(requirements, dependencies.slicer_pip_install, index, repair=repair):
                    logger.info(line)
        except Exception as error:  # noqa: BLE001  (no network, a proxy, a failed build: say how to do it by hand)
            logger.error(f"installing {', '.join(r.specifier for r in requirements)} failed: {error}")
            slicer.util.errorDisplay(
                dependencies.offline_instructions(requirements), windowTitle=_("MedFusion: installation failed")
            )
            return False
        finally:
            self._installing = False
            self.updateApplyButton()
        return True

    def currentOptions(self):
        parameters = self._parameterNode
        return panel_options(
            model=parameters.model,
            functional=parameters.functional,
            functional_range=parameters.functionalRange,
            registration=parameters.registration,
            backend=parameters.backend,
            device=parameters.device,
            axis=parameters.axis,
        )

    def repairTorch(self) -> bool:
        """The worker could not use torch (a broken or mismatched install): offer to reinstall it.
        Returns True when the run can go on (repaired, or the user wants to try anyway)."""
        worker = self.logic.currentWorker
        problem = (worker.info or {}).get("error") if worker is not None else None
        if not problem:
            return True
        if not slicer.util.confirmYesNoDisplay(
            _("The MedFusion worker cannot use torch:") + f"\n\n{problem}\n\n" + _("Reinstall torch now?"),
            windowTitle=_("MedFusion: torch does not work"),
        ):
            return True  # the run will fail with the same message; the user decided
        torch = [requirement for requirement in dependencies.REQUIREMENTS if requirement.distribution == "torch"]
        if not self._install(torch, repair=True):
            return False
        self.logic.stopWorker()  # the next run starts a worker that imports the new torch
        self.fillModels(None)
        return True

    def onApplyButton(self) -> None:
        if self._job is not None or self._installing or not self.ensureDependencies() or not self.repairTorch():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("MedFusion could not start."), waitCursor=True):
            # Everything the run needs is captured here: leaving the module or editing the panel
            # during the run changes nothing about it.
            self._job = self.logic.startJob(
                parameters.referenceVolume, parameters.movingVolume, parameters.outputVolume,
                options=self.currentOptions(), pythonExecutable=self._pythonExecutable(),
                temporaryRoot=slicer.app.temporaryPath, keepFiles=parameters.keepTemporaryFiles,
                sourceMap=parameters.sourceMap,
            )  # fmt: skip
            self._jobShowsLegend = parameters.sourceMapLegend
            self.setRunning(True)
            self.ui.statusLabel.text = _("Starting ...")
            self._pollTimer.start()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def setRunning(self, running: bool) -> None:
        for section in (
            self.ui.inputsCollapsibleButton,
            self.ui.registrationCollapsibleButton,
            self.ui.fusionCollapsibleButton,
            self.ui.outputsCollapsibleButton,
        ):
            section.enabled = not running
        self.ui.cancelButton.enabled = running
        if running:
            self.ui.progressBar.value = 0
        self.updateApplyButton()

    def onPoll(self) -> None:
        """Show what the worker reported since the last tick; import the results when it succeeded."""
        worker = self.logic.currentWorker
        if self._job is None:
            # Idle: only waiting for the warm worker's model list and device.
            if worker is not None:
                for line in worker.take_lines():
                    if line is not None and not line.startswith("{"):
                        logger.info(f"worker: {line}")
            if worker is None or worker.info is not None or not worker.alive:
                self._pollTimer.stop()
                if worker is not None and worker.info is not None:
                    self.fillModels(worker.info)
            return
        for event in self._job.poll():
            if isinstance(event, Progress):
                self.ui.progressBar.value = round(100 * overall_fraction(event, self._job.registering))
                self.ui.statusLabel.text = (
                    _("Registering ({preset}) ...").format(preset=self._job.options.get("registration"))
                    if event.stage == "register"
                    else _("Fusing: {done} of {total} slices").format(done=event.done, total=event.total)
                )
            elif isinstance(event, Notice) and event.name == "registration":
                summary = RegistrationSummary.from_report(event.data)
                self.ui.registrationSummaryLabel.text = summary.text() if summary else ""
            elif isinstance(event, Message):
                logger.info(f"worker: {event.text}")
                if event.text.startswith("medfusion: "):  # the library's own notes, e.g. a GPU out-of-memory fallback
                    self.ui.statusLabel.text = event.text.removeprefix("medfusion: ")
            elif isinstance(event, Finished):
                self.onJobFinished(event)
                return
        if worker is not None and worker.info is not None and self.ui.deviceInfoLabel.text.startswith(_("Starting")):
            self.fillModels(worker.info)

    def onJobFinished(self, event) -> None:
        job, self._job = self._job, None
        self._pollTimer.stop()
        try:
            if event.state == "succeeded":
                with slicer.util.tryWithErrorDisplay(_("MedFusion could not import the result."), waitCursor=True):
                    nodes = self.logic.finishJob(job)
                    self.showResult(nodes)
                    self.ui.progressBar.value = 100
                    status = _("Done: '{name}'").format(name=nodes.fusedNode.GetName())
                    if nodes.sourceMapNode is not None:
                        status += _(", source map '{name}'").format(name=nodes.sourceMapNode.GetName())
                    if nodes.registration is not None:
                        status += "; " + nodes.registration.text()
                    self.ui.statusLabel.text = status
            elif event.state == "cancelled":
                self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            else:
                self.ui.statusLabel.text = _("Failed; the scene is unchanged.")
                slicer.util.errorDisplay(
                    _("MedFusion failed: ") + event.error, detailedText="\n".join(job.output_lines)
                )
        finally:
            if job.keep_files:
                logger.info(f"temporary files kept in {job.folder}")
            job.cleanup()
            self.setRunning(False)

    def showResult(self, nodes) -> None:
        """The fused volume (grey, or RGB for a colour fusion) as the slice views' background, with
        the source map over it when there is one (its legend as the panel says), else the
        reference, at the overlay opacity; the registration check section gets the registered
        volume and the checkerboard."""
        self._result = nodes
        overlay = nodes.sourceMapNode if nodes.sourceMapNode is not None else nodes.referenceNode
        slicer.util.setSliceViewerLayers(
            background=nodes.fusedNode,
            foreground=overlay,
            foregroundOpacity=self.ui.referenceOpacitySliderWidget.value,
            fit=True,
        )
        if nodes.sourceMapNode is not None:
            # As captured at Apply: the module may have been left meanwhile (no parameter node now).
            self.logic.showSourceMapLegend(nodes.sourceMapNode, self._jobShowsLegend)
        hasRegistration = nodes.registeredNode is not None
        self.ui.compareCollapsibleButton.enabled = hasRegistration
        self.ui.registrationSummaryLabel.text = (
            nodes.registration.text() if nodes.registration else _("No registration in this run.")
        )
        if not hasRegistration:
            self.ui.flickerCheckBox.checked = False

    # --- checking the registration ---------------------------------------------------------------

    def _comparedPair(self):
        if self._result is None or self._result.registeredNode is None:
            return None, None
        return self._result.referenceNode, self._result.registeredNode

    def onFadeChanged(self, value: float) -> None:
        """Reference under the registered moving volume; the slider fades between them."""
        if self._connectingGui:
            return
        reference, registered = self._comparedPair()
        if reference is None:
            return
        # Only views showing exactly reference under registered: after Apply the views show the
        # fused volume under the reference, which this slider must not fade.
        if compare.fade(slicer.mrmlScene, reference.GetID(), registered.GetID(), value) == 0:
            slicer.util.setSliceViewerLayers(background=reference, foreground=registered, foregroundOpacity=value)

    def onFlickerToggled(self, on: bool) -> None:
        reference, registered = self._comparedPair()
        if not on or reference is None:
            self._flickerTimer.stop()
            return
        slicer.util.setSliceViewerLayers(background=reference, foreground=registered, foregroundOpacity=1.0)
        self._flickerShowsMoving = True
        self._flickerTimer.start()

    def onFlickerStep(self) -> None:
        reference, registered = self._comparedPair()
        if reference is None:
            self.ui.flickerCheckBox.checked = False  # its toggled() stops the timer
            self._flickerTimer.stop()
            return
        self._flickerShowsMoving = not self._flickerShowsMoving
        if compare.flicker(slicer.mrmlScene, reference.GetID(), registered.GetID(), self._flickerShowsMoving) == 0:
            self.ui.flickerCheckBox.checked = False  # the user showed something else in the views

    def onSourceMapLegendToggled(self, on: bool) -> None:
        """Show or hide the legend of the last run's source map (the checkbox also sets the next run's)."""
        if self._connectingGui or self._result is None or self._result.sourceMapNode is None:
            return
        if self._result.sourceMapNode.GetScene() is not None:
            self.logic.showSourceMapLegend(self._result.sourceMapNode, on)

    def onShowCheckerboard(self) -> None:
        if self._result is None or self._result.checkerboardNode is None:
            return
        self.ui.flickerCheckBox.checked = False
        slicer.util.setSliceViewerLayers(background=self._result.checkerboardNode, foreground=None)

    # --- demo --------------------------------------------------------------------------------------

    def onLoadDemo(self) -> None:
        """The demo CT, MR and PET (the PET in the MR's frame, as from a PET/MR scanner). With a
        functional colour map chosen, MR and PET are selected for a colour fusion; else CT and MR."""
        with slicer.util.tryWithErrorDisplay(_("MedFusion could not make the demo volumes."), waitCursor=True):
            ct, mr = self.logic.loadDemoVolumes(slicer.mrmlScene)
            pet = self.logic.loadFunctionalDemoVolume(slicer.mrmlScene)
            parameters = self._parameterNode
            if parameters.functional != FUNCTIONAL_OFF:
                parameters.referenceVolume, parameters.movingVolume = mr, pet
                parameters.registration = "resample"  # one frame of reference: no registration needed
                slicer.util.setSliceViewerLayers(background=mr, foreground=pet, foregroundOpacity=0.5, fit=True)
                self.ui.statusLabel.text = _(
                    "Demo CT, MR and PET loaded; MR and PET selected for a colour fusion (the PET in the MR's "
                    "frame of reference, so registration 'resample'); press Apply."
                )
                return
            parameters.referenceVolume, parameters.movingVolume = ct, mr
            if parameters.registration in ("none", "resample"):
                parameters.registration = "rigid"  # the demo MR is misaligned on purpose
            slicer.util.setSliceViewerLayers(background=ct, foreground=mr, foregroundOpacity=0.5, fit=True)
            self.ui.statusLabel.text = _(
                "Demo CT, MR and PET loaded; CT and MR selected (the MR is misaligned on purpose); press Apply. "
                "For a colour fusion: the demo MR as reference, the demo PET as moving, a functional colour map "
                "and registration 'resample' (chosen for you when a colour map is set before loading)."
            )


#
# Logic
#


class MedFusionLogic(ScriptedLoadableModuleLogic, FusionLogic):
    """:class:`MedFusionSlicer.logic.FusionLogic` (``process``, ``startJob``, ``finishJob``,
    ``loadDemoVolumes``) with Slicer's parameter node. Usable from the Python console and headless
    scripts."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedFusionParameterNode(super().getParameterNode())

    @staticmethod
    def installDependencies() -> list[str]:
        """Install the missing Python packages now, without any dialog (calling it is the consent;
        pip's output goes to the console); returns what was done."""
        missing = dependencies.missing_requirements()
        if not missing:
            return []
        pip = dependencies.process_pip_install(python_executable(slicer_home=slicer.app.slicerHome))
        return dependencies.install(missing, pip, dependencies.slicer_torch_index())


#
# Test
#


class MedFusionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or ctest): the demo phantom pair, fused by the logic in
    this process and on the worker process. Skipped, with the reason, where MedFusion's Python
    packages are not installed (a fresh Slicer, the extensions build machines)."""

    @staticmethod
    def skipReason():
        """Why the test cannot run here (old Slicer, MedFusion's packages not installed), or None."""
        if REFUSAL is not None:
            return REFUSAL
        missing = dependencies.missing_requirements(include_optional=False)
        if missing:
            names = ", ".join(requirement.specifier for requirement in missing)
            return f"MedFusion's Python packages are not installed ({names}); MedFusionTest skipped"
        return None

    def setUp(self):
        # ctest runs the test_* methods through unittest, which calls setUp first: skip there.
        reason = self.skipReason()
        if reason is not None:
            logger.warning(reason)
            self.skipTest(reason)
        slicer.mrmlScene.Clear()

    def runTest(self):
        # "Reload and Test" calls runTest directly (not through unittest): report and return.
        reason = self.skipReason()
        if reason is not None:
            logger.warning(reason)
            self.delayDisplay(reason)
            return
        self.setUp()
        self.test_process_fuses_demo_pair_on_reference_grid()
        self.setUp()
        self.test_worker_result_equals_in_process_result()
        self.setUp()
        self.test_colour_fusion_of_the_demo_pet_with_source_map()

    def _demoNodes(self):
        # The same path as the panel's "Load demo volumes", on a coarser grid to be quick.
        return MedFusionLogic().loadDemoVolumes(slicer.mrmlScene, size=(48, 56, 40))

    def test_process_fuses_demo_pair_on_reference_grid(self):
        import numpy as np

        self.delayDisplay("Fusing the demo pair in Slicer's process")
        ct, mr = self._demoNodes()
        nodes = MedFusionLogic().process(ct, mr, registration="rigid", backend="simpleitk", device="cpu")
        fused = slicer.util.arrayFromVolume(nodes.fusedNode)
        self.assertEqual(fused.shape, slicer.util.arrayFromVolume(ct).shape)
        self.assertTrue(0.0 <= fused.min() and fused.max() <= 1.0 and fused.max() > 0.5)
        reference_matrix, fused_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(reference_matrix)
        nodes.fusedNode.GetIJKToRASMatrix(fused_matrix)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(
                    reference_matrix.GetElement(row, column), fused_matrix.GetElement(row, column), places=6
                )
        self.assertIsNotNone(nodes.registeredNode)
        self.assertIsNotNone(nodes.transformNode)
        self.assertIsNotNone(nodes.checkerboardNode)
        self.assertIsNotNone(nodes.registration)
        self.assertTrue(np.isfinite(fused).all())
        self.delayDisplay("Test passed")

    def test_worker_result_equals_in_process_result(self):
        import numpy as np

        self.delayDisplay("Fusing on the worker process")
        ct, mr = self._demoNodes()
        logic = MedFusionLogic()
        direct = logic.process(ct, mr, registration="rigid", backend="simpleitk", device="cpu", model="laplacian")
        job = logic.startJob(
            ct,
            mr,
            registration="rigid",
            backend="simpleitk",
            device="cpu",
            model="laplacian",
            pythonExecutable=python_executable(slicer_home=slicer.app.slicerHome),
        )
        try:
            job.wait(timeout=600)
            self.assertEqual(job.state, "succeeded", job.error)
            viaWorker = logic.finishJob(job)
        finally:
            job.cleanup()
            logic.stopWorker()
        self.assertIs(viaWorker.fusedNode, direct.fusedNode)  # same inputs and model: the same node, updated
        self.assertIsNotNone(viaWorker.registration)
        self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(viaWorker.fusedNode)).all())
        self.delayDisplay("Test passed")

    def test_colour_fusion_of_the_demo_pet_with_source_map(self):
        self.delayDisplay("Fusing the demo PET into the demo MR in colour, with the source map")
        _, mr = self._demoNodes()
        pet = MedFusionLogic().loadFunctionalDemoVolume(slicer.mrmlScene)
        nodes = MedFusionLogic().process(
            mr, pet, registration="resample", functional="harvard-pet", model="laplacian", device="cpu", sourceMap=True
        )
        self.assertTrue(nodes.fusedNode.IsA("vtkMRMLVectorVolumeNode"))
        rgb = slicer.util.arrayFromVolume(nodes.fusedNode)
        self.assertEqual(rgb.shape, (*slicer.util.arrayFromVolume(mr).shape, 3))
        share = slicer.util.arrayFromVolume(nodes.sourceMapNode)
        self.assertTrue(0.0 <= share.min() and share.max() <= 1.0)
        legend = MedFusionLogic.showSourceMapLegend(nodes.sourceMapNode)
        self.assertIsNotNone(legend)
        slicer.util.setSliceViewerLayers(background=nodes.fusedNode, foreground=nodes.sourceMapNode, fit=True)
        self.delayDisplay("Test passed")
