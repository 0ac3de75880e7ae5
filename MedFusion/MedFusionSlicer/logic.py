"""The fusion logic on MRML nodes: what the panel, the Python console and headless scripts call.

:class:`FusionLogic` converts volume nodes to SimpleITK images (:mod:`.volumes`), calls
:func:`MedFusionLib.fusion.pipeline.fuse_volumes` (the one implementation of every step) with one
:class:`FusionOptions`, and puts the results into the scene: the fused volume, the moving volume
resampled on the reference grid, the registration transform and a checkerboard of the two for
judging the registration (:mod:`.compare`). Nodes are created or changed only after a run
succeeded, so a failed or cancelled run leaves the scene as it was.

Two ways to run:

* :meth:`FusionLogic.process` runs synchronously in this process (console, ``--no-main-window``).
* :meth:`FusionLogic.startJob` / :meth:`FusionLogic.finishJob` run the same work on the warm
  worker process (:mod:`.worker`, :mod:`.server`), so that Slicer never freezes, torch never
  enters Slicer's process, and Cancel can end it at once.

Which nodes a run writes (the output policy): an output volume the user chose is overwritten;
otherwise each (reference, moving, model) has its own fused node, "<reference> + <moving> fused
(<model>)", created by its first run and updated by later runs of the same inputs, and each
(reference, moving) pair one registered volume, one transform and one checkerboard, updated in
place. A colour (functional) fusion counts as a model of its own, "<model>, <colour map>": its
fused node is an RGB ``vtkMRMLVectorVolumeNode`` beside the grey one. A source map, when asked
for, is one more node per (reference, moving, model), "<reference> + <moving> source map
(<model>)". Runs on other inputs never touch them. MedFusion marks its nodes with the attribute
``MedFusion.role`` and node references to the inputs.

Nothing heavy is imported at the top: Slicer loads this module at start-up (SimpleITK, numpy and
MedFusionLib's torch-dependent modules are imported when a run needs them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import dependencies
from .choices import FusionOptions, make_options
from .results import FusionNodes, ModelChoice, RegistrationSummary
from .worker import DEFAULT_IDLE_TIMEOUT_S, MOVING_FILE, REFERENCE_FILE, FusionJob, WorkerProcess

# progress(stage, done, total) as in MedFusionLib.fusion.pipeline; log(message) for human-readable lines.
ProgressCallback = Callable[[str, int, int], None]
LogCallback = Callable[[str], None]
# Largest difference of IJK-to-RAS entries (mm) that still counts as one voxel grid.
_GRID_TOLERANCE_MM = 1e-4
ROLE_ATTRIBUTE = "MedFusion.role"
MODEL_ATTRIBUTE = "MedFusion.model"
REFERENCE_ROLE, MOVING_ROLE = "MedFusion.reference", "MedFusion.moving"
DEMO_NAMES = ("MedFusion demo CT", "MedFusion demo MR")
DEMO_PET_NAME = "MedFusion demo PET"


@contextlib.contextmanager
def _forwarding_library_messages(log: LogCallback) -> Iterator[None]:
    """Pass what MedFusionLib reports on its logger (warnings such as a GPU out-of-memory fallback)
    to ``log`` while it runs."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(record.getMessage())

    library_logger = logging.getLogger("MedFusionLib")
    handler = Forward(logging.INFO)
    library_logger.addHandler(handler)
    try:
        yield
    finally:
        library_logger.removeHandler(handler)


def apply_state(problem: str | None, running: bool, installing: bool) -> tuple[bool, str]:
    """Whether Apply is enabled, and its tooltip: never while a run or a dependency install is going
    on (a second click would start a second run or a second pip), else only for usable inputs."""
    if installing:
        return False, "Installing MedFusion's Python packages; wait until it is done."
    if running:
        return False, "A fusion is running; Cancel stops it."
    if problem is not None:
        return False, problem
    return True, "Register and fuse the two volumes (runs in a separate process)."


class FusionLogic:
    """Fuse two volume nodes; no widgets, no dialogs (safe under ``--no-main-window``).

    Holds the warm worker the panel's runs use (:meth:`startJob`); :meth:`stopWorker` ends it.
    """

    _worker: WorkerProcess | None = None
    workerIdleTimeout: float = DEFAULT_IDLE_TIMEOUT_S

    # --- choices -------------------------------------------------------------------------

    @staticmethod
    def modelChoices() -> list[ModelChoice]:
        """Every model of MedFusionLib's registry, in its order (imports torch into this process;
        the panel asks the worker instead: :meth:`workerModelChoices`)."""
        from .server import model_choices

        return [ModelChoice(**choice) for choice in model_choices()]

    @staticmethod
    def workerModelChoices(info: dict | None) -> list[ModelChoice]:
        """The model list from the worker's ``ready`` event (empty if it has not arrived)."""
        return [ModelChoice(**choice) for choice in (info or {}).get("models", [])]

    # --- inputs ----------------------------------------------------------------------------

    @staticmethod
    def outputProblem(outputNode, functional: str | None) -> str | None:
        """Why ``outputNode`` cannot hold the fused volume, or ``None``: a colour (functional)
        fusion is RGB and needs a vector volume node, a grey fusion a scalar one."""
        if outputNode is None:
            return None
        colour = outputNode.IsA("vtkMRMLVectorVolumeNode")
        if functional is not None and not colour:
            return (
                f"A colour (functional) fusion is an RGB volume, which the scalar volume '{outputNode.GetName()}' "
                "cannot hold; choose 'Create new volume' or a colour (vector) volume as the output."
            )
        if functional is None and colour:
            return (
                f"'{outputNode.GetName()}' is a colour (vector) volume; a grey fusion needs a scalar output: "
                "choose 'Create new volume' or a scalar volume."
            )
        return None

    @staticmethod
    def inputProblem(
        referenceNode, movingNode, outputNode, registration: str, functional: str | None = None
    ) -> str | None:
        """Why Apply cannot run with these inputs (one sentence for a tooltip), or ``None``.

        Cheap checks only (no voxel is read): both volumes selected, grey-scale, distinct, the
        output not an input and of the kind the fusion writes (RGB with ``functional``, a colour
        map's name), no non-linear parent transform, and for ``registration="none"`` the same
        voxel grid (size and IJK-to-RAS). Never raises: it runs in a GUI observer.
        """
        from MedFusionLib.core.errors import InputError

        from .volumes import is_scalar_volume, world_ijk_to_ras

        if referenceNode is None:
            return "Select the reference volume (its grid is the output's grid)."
        if movingNode is None:
            return "Select the moving volume to fuse into the reference."
        if referenceNode is movingNode:
            return "The reference and moving volumes are the same; select two different volumes."
        if outputNode is not None and (outputNode is referenceNode or outputNode is movingNode):
            return "The output volume is one of the inputs; choose another output or create a new one."
        output_problem = FusionLogic.outputProblem(outputNode, functional)
        if output_problem is not None:
            return output_problem
        for node in (referenceNode, movingNode):
            if not is_scalar_volume(node):
                return f"'{node.GetName()}' is a label map or not a grey-scale volume; select a scalar volume."
            if node.GetImageData() is None:
                return f"Volume '{node.GetName()}' has no voxels."
        try:
            reference_grid, moving_grid = world_ijk_to_ras(referenceNode), world_ijk_to_ras(movingNode)
        except InputError as error:  # a non-linear parent transform: say how to fix it
            return str(error)[:1].upper() + str(error)[1:] + "."
        if registration == "none":
            same_size = referenceNode.GetImageData().GetDimensions() == movingNode.GetImageData().GetDimensions()
            if not same_size or abs(reference_grid - moving_grid).max() > _GRID_TOLERANCE_MM:
                return "The volumes are on different voxel grids; choose a registration (e.g. rigid)."
        return None

    @staticmethod
    def defaultInputs(scene, reference=None, moving=None) -> tuple:
        """Reference and moving volumes to preselect: the given ones, else the first two grey-scale
        volumes of the scene (never a label map, never MedFusion's own results)."""
        from .volumes import is_scalar_volume, scalar_volumes

        reference = reference if is_scalar_volume(reference) else None
        moving = moving if is_scalar_volume(moving) else None
        if reference is None:
            candidates = scalar_volumes(scene, exclude=(moving,))
            reference = candidates[0] if candidates else None
        if moving is None:
            candidates = scalar_volumes(scene, exclude=(reference,))
            moving = candidates[0] if candidates else None
        return reference, moving

    # --- running in this process ------------------------------------------------------------

    def process(
        self,
        referenceNode,
        movingNode,
        outputNode=None,
        *,
        options: FusionOptions | None = None,
        progress: ProgressCallback | None = None,
        log: LogCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        sourceMap: bool = False,
        **changes,
    ) -> FusionNodes:
        """Register ``movingNode`` to ``referenceNode``, fuse them and put the results in the scene.

        Args:
            referenceNode, movingNode: scalar volume nodes of one scene; the output lies on the
                reference's grid (its world geometry, parent transform included).
            outputNode: a volume node to overwrite with the fused volume (a scalar volume, or a
                vector volume for a colour fusion); ``None``: the fused node of these inputs and
                model (created by the first such run).
            options: a ``FusionOptions`` (default: the library's defaults, the same as
                ``medfusion fuse``); keyword ``changes`` replace single fields, e.g.
                ``registration="rigid", model="haf", device="cpu"``, or
                ``functional="harvard-pet", registration="resample"`` for a colour PET fusion.
            sourceMap: also compute the source map (``FusionNodes.sourceMapNode``).
            progress: ``progress(stage, done, total)``; ``cancel()`` returning True stops the run
                with ``FusionCancelled`` and adds nothing to the scene.
            log: ``log(message)`` for what the library reports (e.g. a GPU out-of-memory fallback),
                the registration summary and a closing line with device and time.

        Raises:
            MedFusionError subclasses with a message that says what to fix, including missing
            Python packages (with the console command that installs them).
        """
        dependencies.require()
        from .server import fuse, registration_report
        from .volumes import image_from_volume_node

        options = make_options(options, **changes)
        self._refuseOutput(outputNode, options)
        messages: list[str] = []

        def say(message: str) -> None:
            messages.append(message)
            if log is not None:
                log(message)

        scene = self._sceneOf(referenceNode, movingNode, outputNode)
        reference = image_from_volume_node(referenceNode)
        moving = image_from_volume_node(movingNode)
        with _forwarding_library_messages(say):
            result = fuse(reference, moving, options.to_dict(), progress, cancel, source_map=sourceMap)
        summary = (
            RegistrationSummary.from_report(registration_report(result.registration)) if result.registration else None
        )
        if summary is not None:
            say(summary.text())
        say(f"fused with {result.model} on {result.device} in {result.seconds:.1f} s")
        transform = result.registration.transform if result.registration is not None else None
        nodes = self._storeResults(
            scene,
            referenceNode,
            movingNode,
            outputNode,
            options,
            result.fused,
            result.registered_moving if transform is not None else None,
            transform,
            result.source_map,
            model=result.model,
        )
        nodes.registration, nodes.device, nodes.seconds, nodes.messages = (
            summary,
            result.device,
            result.seconds,
            messages,
        )
        return nodes

    # --- running on the warm worker ---------------------------------------------------------

    @property
    def currentWorker(self) -> WorkerProcess | None:
        """The warm worker if one was made (running or not), else ``None``."""
        return self._worker

    def worker(self, cpu_only: bool = False, pythonExecutable: str | None = None) -> WorkerProcess:
        """The warm worker (started on demand by a job); a CPU-only run gets a worker that cannot
        see the GPU, so the previous one is ended when that choice changes."""
        current = self._worker
        if current is not None and current.cpu_only != cpu_only:
            current.stop()
            current = None
        if current is None:
            current = WorkerProcess(pythonExecutable, cpu_only=cpu_only, idle_timeout=self.workerIdleTimeout)
            self._worker = current
        return current

    def startWorker(self, cpu_only: bool = False, pythonExecutable: str | None = None) -> WorkerProcess | None:
        """Start the warm worker in the background now (module entry), if the packages it needs are
        installed; returns it, or ``None`` when they are missing."""
        if dependencies.missing_requirements(include_optional=False):
            return None
        worker = self.worker(cpu_only, pythonExecutable)
        if not worker.alive:
            worker.take_lines()
            worker.start()
        return worker

    def stopWorker(self) -> None:
        """End the warm worker (module cleanup, Slicer exit, Reload)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def startJob(
        self,
        referenceNode,
        movingNode,
        outputNode=None,
        *,
        options: FusionOptions | None = None,
        pythonExecutable: str | None = None,
        temporaryRoot: str | None = None,
        keepFiles: bool = False,
        sourceMap: bool = False,
        **changes,
    ) -> FusionJob:
        """Start the fusion of two nodes on the warm worker and return the running job.

        Everything the run needs is captured now (inputs, output node, options, whether to keep
        the temporary files), so that leaving the module, or changing the panel, during the run
        changes nothing about it. The inputs go to a new temporary folder (under
        ``temporaryRoot``) as uncompressed NRRD with their world geometry; ``sourceMap`` asks the
        worker for the source map too. Poll the job with
        :meth:`FusionJob.poll`, end it with :meth:`FusionJob.cancel`, and call :meth:`finishJob`
        once it succeeded. Nothing is added to the scene here.
        """
        from MedFusionLib.io import write_image

        from .volumes import image_from_volume_node

        options = make_options(options, **changes)
        self._sceneOf(referenceNode, movingNode, outputNode)
        self._refuseOutput(outputNode, options)
        reference = image_from_volume_node(referenceNode)
        moving = image_from_volume_node(movingNode)
        folder = Path(tempfile.mkdtemp(prefix="MedFusion-", dir=temporaryRoot))
        try:
            write_image(reference, folder / REFERENCE_FILE, compress=False)
            write_image(moving, folder / MOVING_FILE, compress=False)
            job = FusionJob(
                folder,
                options.to_dict(),
                self.worker(options.device == "cpu", pythonExecutable),
                keep_files=keepFiles,
                source_map=sourceMap,
            )
            job.context = {"reference": referenceNode, "moving": movingNode, "output": outputNode, "options": options}
            job.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job

    def finishJob(self, job: FusionJob, referenceNode=None, movingNode=None, outputNode=None) -> FusionNodes:
        """Import the results of a succeeded ``job`` (see :meth:`process`); the nodes default to
        those captured by :meth:`startJob`."""
        from MedFusionLib.core.errors import InputError
        from MedFusionLib.io import read_image

        if job.state != "succeeded":
            raise InputError(f"the fusion job has not succeeded (state: {job.state}); nothing to import")
        context = getattr(job, "context", {})
        referenceNode = referenceNode or context.get("reference")
        movingNode = movingNode or context.get("moving")
        outputNode = outputNode or context.get("output")
        if outputNode is not None and outputNode.GetScene() is None:
            outputNode = None  # the chosen output was deleted during the run: make a new one
        for role, node in (("reference", referenceNode), ("moving", movingNode)):
            if node is None or node.GetScene() is None:
                raise InputError(f"the {role} volume was removed from the scene during the run; nothing was imported")
        scene = self._sceneOf(referenceNode, movingNode, outputNode)
        fused = read_image(job.fused_path)  # read everything before touching the scene
        registered = read_image(job.registered_path) if job.registered_path.is_file() else None
        transform = job.transform_path if job.transform_path.is_file() else None
        source_map = read_image(job.source_map_path) if job.source_map_path.is_file() else None
        nodes = self._storeResults(
            scene, referenceNode, movingNode, outputNode, context.get("options"), fused, registered, transform,
            source_map, model=job.report.get("model"),
        )  # fmt: skip
        nodes.registration = RegistrationSummary.from_report(job.registration)
        nodes.device = str(job.report.get("device", job.options.get("device", "")))
        nodes.seconds = job.report.get("seconds")
        return nodes

    # --- demo ---------------------------------------------------------------------------------

    @staticmethod
    def loadDemoVolumes(scene, size: tuple[int, int, int] | None = None) -> tuple:
        """Add the phantom CT and MR of ``medfusion demo`` to ``scene`` (the MR on its own grid with
        a known rigid misalignment, so rigid registration has work to do) and return their nodes.
        Needs no download and no torch; ``size``: the CT grid (default: the demo's)."""
        from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT, make_head_phantom

        from .volumes import add_volume_node_from_image

        if size is None:
            phantom = make_head_phantom(misalignment=DEMO_MISALIGNMENT)
        else:  # a coarser grid with the same field of view as the demo's 128x160x112 at 1.25/1.25/1.5 mm
            spacing = tuple(full * 1.25 * (1.5 if axis == 2 else 1.0) / small for axis, (full, small) in
                            enumerate(zip((128, 160, 112), size)))  # fmt: skip
            phantom = make_head_phantom(size=size, spacing=spacing, misalignment=DEMO_MISALIGNMENT,
                                        moving_spacing=tuple(s * 0.9 for s in spacing))  # fmt: skip
        ct = add_volume_node_from_image(scene, phantom.ct, DEMO_NAMES[0])
        mr = add_volume_node_from_image(scene, phantom.mr, DEMO_NAMES[1])
        return ct, mr

    @staticmethod
    def loadFunctionalDemoVolume(scene, spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)):
        """Add a PET of the demo phantom to ``scene`` and return its node: uptake in SUV-like units
        (two hot foci the MR does not show) on a 4 mm grid of its own, in the demo MR's frame of
        reference, as a hybrid PET/MR scanner records it. Fuse it in colour into the demo MR
        (reference) with ``functional="harvard-pet", registration="resample"``. No download, no torch."""
        from MedFusionLib.imaging.functional_phantom import make_functional_phantom
        from MedFusionLib.imaging.phantom import DEMO_MISALIGNMENT

        from .volumes import add_volume_node_from_image

        pet = make_functional_phantom("pet", spacing=spacing, misalignment=DEMO_MISALIGNMENT)
        return add_volume_node_from_image(scene, pet, DEMO_PET_NAME)

    # --- output policy ----------------------------------------------------------------------------

    @staticmethod
    def resultKey(options, model: str | None = None) -> str:
        """What tells one run's fused node from another's for the same inputs: the model, and for a
        colour fusion its colour map (``"emfusion, harvard-pet"``). ``model``: the network that ran
        (model ``auto`` resolved by the device), which names the node instead of ``options.model``
        when given, so a node says which network made it."""
        model = model or getattr(options, "model", None) or "fused"
        functional = getattr(options, "functional", None)
        return f"{model}, {functional}" if functional else model

    @staticmethod
    def resultNode(scene, role: str, referenceNode, movingNode, model: str | None = None):
        """MedFusion's node of ``role`` (``fused``, ``sourcemap``, ``registered``, ``transform``,
        ``checkerboard``) for these inputs (and, for ``fused`` and ``sourcemap``, this model or
        :meth:`resultKey`), or ``None``."""
        classes = {"transform": "vtkMRMLTransformNode"}
        class_name = classes.get(role, "vtkMRMLScalarVolumeNode")  # vector volume nodes included
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            if (
                node.GetAttribute(ROLE_ATTRIBUTE) == role
                and node.GetNodeReferenceID(REFERENCE_ROLE) == referenceNode.GetID()
                and node.GetNodeReferenceID(MOVING_ROLE) == movingNode.GetID()
                and (model is None or node.GetAttribute(MODEL_ATTRIBUTE) == model)
            ):
                return node
        return None

    @staticmethod
    def _mark(node, role: str, referenceNode, movingNode, model: str | None = None) -> None:
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetNodeReferenceID(REFERENCE_ROLE, referenceNode.GetID())
        node.SetNodeReferenceID(MOVING_ROLE, movingNode.GetID())
        if model is not None:
            node.SetAttribute(MODEL_ATTRIBUTE, model)

    def _refuseOutput(self, outputNode, options) -> None:
        from MedFusionLib.core.errors import InputError

        problem = self.outputProblem(outputNode, getattr(options, "functional", None))
        if problem is not None:
            raise InputError(problem[:1].lower() + problem[1:].rstrip("."))

    @staticmethod
    def showSourceMapLegend(sourceMapNode, visible: bool = True):
        """Show or hide the colour legend of a source map node ("0 reference · 0.5 either · 1
        moving"); returns the legend display node (``None`` if none could be made)."""
        from .display import set_source_map_legend

        return set_source_map_legend(sourceMapNode, visible)

    def _storeResults(
        self, scene, referenceNode, movingNode, outputNode, options, fused, registered, transform, source_map=None,
        model: str | None = None,
    ) -> FusionNodes:
        """Put a run's images into the scene following the output policy (module docstring).

        ``fused``: scalar, or RGB for a colour fusion (a vector volume node). ``transform``: a
        ``sitk.Transform`` or the path of an ITK transform file, or ``None``. ``source_map``: the
        source map image, or ``None``. ``model``: the network that ran (see :meth:`resultKey`): it
        names MedFusion's fused and source-map nodes and is their ``MedFusion.model`` attribute.
        """
        import SimpleITK as sitk

        from .compare import checkerboard_image
        from .display import show_rgb, show_source_map
        from .volumes import (
            add_volume_node_from_image,
            image_from_volume_node,
            load_transform_node,
            update_volume_node_from_image,
            volume_node_class,
        )

        self._refuseOutput(outputNode, options)  # before anything changes in the scene
        key = self.resultKey(options, model)
        reference_name, moving_name = referenceNode.GetName(), movingNode.GetName()

        def store_volume(image, role, name, chosen=None, model_key=None):
            node = chosen or self.resultNode(scene, role, referenceNode, movingNode, model_key)
            if node is not None and chosen is None and node.GetClassName() != volume_node_class(image):
                # A node of another kind (from an older scene): leave it, no longer as MedFusion's, and make the
                # right one, so later runs find that one.
                node.RemoveAttribute(ROLE_ATTRIBUTE)
                node = None
            if node is None:
                node = add_volume_node_from_image(scene, image, name)
            else:
                update_volume_node_from_image(node, image)
                if node.GetDisplayNode() is None:
                    node.CreateDefaultDisplayNodes()
            if chosen is None:
                self._mark(node, role, referenceNode, movingNode, model_key)
            return node

        nodes = FusionNodes(
            fusedNode=None, options=options, referenceNode=referenceNode, movingNode=movingNode,
            model=model or getattr(options, "model", "") or "",
        )  # fmt: skip
        if registered is not None:
            board = checkerboard_image(image_from_volume_node(referenceNode), registered)
            if transform is not None:
                with tempfile.TemporaryDirectory(prefix="MedFusion-") as folder:
                    path = transform
                    if not isinstance(transform, (str, os.PathLike)):
                        path = Path(folder) / "transform.h5"
                        sitk.WriteTransform(transform, str(path))
                    existing = self.resultNode(scene, "transform", referenceNode, movingNode)
                    nodes.transformNode = load_transform_node(
                        scene, path, f"{moving_name} to {reference_name}", into=existing
                    )
                    self._mark(nodes.transformNode, "transform", referenceNode, movingNode)
            nodes.registeredNode = store_volume(registered, "registered", f"{moving_name} registered")
            nodes.checkerboardNode = store_volume(
                board, "checkerboard", f"{reference_name} / {moving_name} checkerboard"
            )
        nodes.fusedNode = store_volume(
            fused, "fused", f"{reference_name} + {moving_name} fused ({key})", outputNode, key
        )
        if fused.GetNumberOfComponentsPerPixel() > 1:
            show_rgb(nodes.fusedNode)
        if source_map is not None:
            nodes.sourceMapNode = store_volume(
                source_map, "sourcemap", f"{reference_name} + {moving_name} source map ({key})", model_key=key
            )
            show_source_map(nodes.sourceMapNode)
        return nodes

    @staticmethod
    def _sceneOf(referenceNode, movingNode, outputNode):
        from MedFusionLib.core.errors import InputError

        if referenceNode is None or movingNode is None:
            raise InputError("select both a reference volume and a moving volume")
        if referenceNode is movingNode:
            raise InputError(
                f"the reference and moving volumes are the same node ('{referenceNode.GetName()}'); select two volumes"
            )
        scene = referenceNode.GetScene()
        if scene is None or movingNode.GetScene() is not scene:
            raise InputError("the reference and moving volumes must both be in the scene")
        if outputNode is not None and (outputNode is referenceNode or outputNode is movingNode):
            raise InputError("the output volume must not be one of the inputs; choose another node or create a new one")
        return scene
