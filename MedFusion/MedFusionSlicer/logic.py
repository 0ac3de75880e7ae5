"""The fusion logic on MRML nodes: what the panel, the Python console and headless scripts call.

:class:`FusionLogic` converts volume nodes to SimpleITK images (:mod:`.volumes`), calls
:func:`MedFusionLib.pipeline.fuse_volumes` (the one implementation of every step) and puts the
results back into the scene as nodes: the fused volume, the moving volume resampled on the
reference grid and the registration transform. Nodes are created only after a run succeeded, so
a failed or cancelled run leaves the scene as it was.

Two ways to run:

* :meth:`FusionLogic.process` runs synchronously in this process (console, ``--no-main-window``).
* :meth:`FusionLogic.startJob` / :meth:`FusionLogic.finishJob` run the same work in a separate
  process (the ``medfusion fuse`` command, :mod:`.worker`) so that Slicer's interface never
  freezes, and Cancel can end it at once.

MedFusionLib's torch-dependent modules are imported inside the methods, not at the top: Slicer
loads this module at start-up, before the user agreed to install torch (:mod:`.dependencies`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from MedFusionLib.errors import InputError

from .volumes import (
    add_volume_node_from_image,
    image_from_volume_node,
    load_transform_node,
    update_volume_node_from_image,
    world_ijk_to_ras,
)
from .worker import FusionJob

# progress(stage, done, total) as in MedFusionLib.pipeline; log(message) for human-readable lines.
ProgressCallback = Callable[[str, int, int], None]
LogCallback = Callable[[str], None]
# Largest difference of IJK-to-RAS entries (mm) that still counts as one voxel grid.
_GRID_TOLERANCE_MM = 1e-4


@dataclass
class FusionNodes:
    """The nodes a fusion run added to (or updated in) the scene.

    ``fusedNode``: float32 in [0, 1] on the reference grid. ``registeredNode``: the moving volume
    resampled on the reference grid, original intensities. ``transformNode``: reference -> moving
    (ITK resampling convention, read by Slicer as "transform from parent": put the original moving
    volume under it to see it aligned). Both are ``None`` without registration. ``device``/``seconds``:
    where and how long fusion ran (for a separate-process run: the device asked for, and ``None``).
    """

    fusedNode: object
    registeredNode: object
    transformNode: object | None
    device: str
    seconds: float | None


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


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the panel's model list: ``usable`` is False for a learned model whose trained
    weights are missing or damaged, and ``note`` then says so."""

    name: str
    description: str
    default: bool
    usable: bool
    note: str = ""


class FusionLogic:
    """Fuse two volume nodes; no widgets, no dialogs (safe under ``--no-main-window``)."""

    @staticmethod
    def modelChoices() -> list[ModelChoice]:
        """Every model of MedFusionLib's registry, in its order, for the panel (imports torch)."""
        from MedFusionLib.models import list_models, model_spec
        from MedFusionLib.models.pretrained import weights_status
        from MedFusionLib.pipeline import DEFAULT_MODEL

        choices = []
        for name in list_models():
            spec = model_spec(name)
            status = weights_status(name) if spec.learned else "ok"
            note = {"ok": "", "missing": "no trained weights shipped yet", "corrupt": "weights file damaged; reinstall"}[status]
            choices.append(ModelChoice(name, spec.description, name == DEFAULT_MODEL, status == "ok", note))
        return choices

    @staticmethod
    def inputProblem(referenceNode, movingNode, outputNode, registration: str) -> str | None:
        """Why Apply cannot run with these inputs (one sentence for a tooltip), or ``None``.

        Cheap checks only (no voxel is read): both volumes selected, distinct, the output not an
        input, and for ``registration="none"`` the same voxel grid (size and IJK-to-RAS).
        """
        if referenceNode is None:
            return "Select the reference volume (its grid is the output's grid)."
        if movingNode is None:
            return "Select the moving volume to fuse into the reference."
        if referenceNode is movingNode:
            return "The reference and moving volumes are the same; select two different volumes."
        if outputNode is not None and (outputNode is referenceNode or outputNode is movingNode):
            return "The output volume is one of the inputs; choose another output or create a new one."
        for node in (referenceNode, movingNode):
            if node.GetImageData() is None:
                return f"Volume '{node.GetName()}' has no voxels."
        if registration == "none":
            same_size = referenceNode.GetImageData().GetDimensions() == movingNode.GetImageData().GetDimensions()
            reference_grid, moving_grid = world_ijk_to_ras(referenceNode), world_ijk_to_ras(movingNode)
            if not same_size or abs(reference_grid - moving_grid).max() > _GRID_TOLERANCE_MM:
                return "The volumes are on different voxel grids; choose a registration (e.g. rigid)."
        return None

    def process(
        self,
        referenceNode,
        movingNode,
        outputNode=None,
        *,
        registration: str = "rigid",
        model=None,
        device: str = "auto",
        axis: str = "axial",
        backend: str = "auto",
        batchSize: int | None = None,
        progress: ProgressCallback | None = None,
        log: LogCallback | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> FusionNodes:
        """Register ``movingNode`` to ``referenceNode``, fuse them and add the results to the scene.

        Args:
            referenceNode, movingNode: scalar volume nodes of one scene; the output lies on the
                reference's grid (its world geometry, parent transform included).
            outputNode: a scalar volume node to overwrite with the fused volume; ``None`` creates
                "<reference> + <moving> fused".
            registration: ``none`` (the two must share a grid), ``rigid``, ``affine`` or ``bspline``.
            model: a registry name (``None``: MedFusionLib's default) or a fusion ``nn.Module``.
            device: ``auto``, ``cuda`` or ``cpu``. On GPU out-of-memory MedFusionLib retries with
                smaller batches, then on the CPU; ``log`` receives its message.
            axis: ``axial``, ``coronal`` or ``sagittal``. ``backend``: registration backend,
                ``auto``, ``elastix`` or ``simpleitk``. ``batchSize``: slices per forward pass.
            progress: ``progress(stage, done, total)``; ``cancel()`` returning True stops the run
                with :class:`~MedFusionLib.errors.FusionCancelled` and adds nothing to the scene.
            log: ``log(message)`` for what the library reports on its logger (e.g. a GPU
                out-of-memory fallback) and a closing line with device and time.

        Raises:
            MedFusionError subclasses with a message that says what to fix.
        """
        from MedFusionLib.pipeline import DEFAULT_MODEL, fuse_volumes

        say = log or (lambda message: None)
        scene = self._sceneOf(referenceNode, movingNode, outputNode)
        reference = image_from_volume_node(referenceNode)
        moving = image_from_volume_node(movingNode)
        with _forwarding_library_messages(say):
            result = fuse_volumes(
                reference,
                moving,
                model=DEFAULT_MODEL if model is None else model,
                registration=registration,
                registration_backend=backend,
                device=device,
                axis=axis,
                batch_size=batchSize,
                progress=progress,
                cancel=cancel,
            )
        say(f"fused on {result.device} in {result.seconds:.1f} s")

        registeredNode = transformNode = None
        if result.registration is not None:
            with tempfile.TemporaryDirectory(prefix="MedFusion-") as folder:
                path = Path(folder) / "transform.h5"
                sitk.WriteTransform(result.registration.transform, str(path))
                transformNode = load_transform_node(scene, path, f"{movingNode.GetName()} to {referenceNode.GetName()}")
            registeredNode = add_volume_node_from_image(scene, result.registered_moving, f"{movingNode.GetName()} registered")
        return FusionNodes(
            fusedNode=self._storeFused(scene, result.fused, referenceNode, movingNode, outputNode),
            registeredNode=registeredNode,
            transformNode=transformNode,
            device=result.device,
            seconds=result.seconds,
        )

    def startJob(
        self,
        referenceNode,
        movingNode,
        *,
        registration: str = "rigid",
        model: str | None = None,
        device: str = "auto",
        axis: str = "axial",
        backend: str = "auto",
        batchSize: int | None = None,
        pythonExecutable: str | None = None,
        temporaryRoot: str | None = None,
    ) -> FusionJob:
        """Start the fusion of two nodes in a separate process and return the running job.

        The inputs are written to a new temporary folder (under ``temporaryRoot``, default the
        system's) as NRRD files with their world geometry; the job runs ``python -m MedFusionLib
        fuse ... --progress json`` there (``pythonExecutable``: Slicer's ``PythonSlicer``; default
        this interpreter). Poll it with :meth:`FusionJob.poll`, end it with :meth:`FusionJob.cancel`,
        and call :meth:`finishJob` once it succeeded. Nothing is added to the scene here.
        """
        from MedFusionLib.io import write_image

        self._sceneOf(referenceNode, movingNode, None)
        reference = image_from_volume_node(referenceNode)
        moving = image_from_volume_node(movingNode)
        folder = Path(tempfile.mkdtemp(prefix="MedFusion-", dir=temporaryRoot))
        try:
            write_image(reference, folder / "reference.nrrd", compress=False)
            write_image(moving, folder / "moving.nrrd", compress=False)
            job = FusionJob(
                folder,
                registration=registration,
                model=model,
                device=device,
                axis=axis,
                backend=backend,
                batch_size=batchSize,
                python_executable=pythonExecutable,
            )
            job.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job

    def finishJob(self, job: FusionJob, referenceNode, movingNode, outputNode=None) -> FusionNodes:
        """Import the results of a succeeded ``job`` as nodes (see :meth:`process`)."""
        from MedFusionLib.io import read_image

        if job.state != "succeeded":
            raise InputError(f"the fusion job has not succeeded (state: {job.state}); nothing to import")
        scene = self._sceneOf(referenceNode, movingNode, outputNode)
        fused = read_image(job.fused_path)  # read everything before touching the scene
        registered = read_image(job.registered_path) if job.registered_path.is_file() else None
        registeredNode = transformNode = None
        if job.transform_path.is_file():
            transformNode = load_transform_node(scene, job.transform_path, f"{movingNode.GetName()} to {referenceNode.GetName()}")
        if registered is not None:
            registeredNode = add_volume_node_from_image(scene, registered, f"{movingNode.GetName()} registered")
        return FusionNodes(
            fusedNode=self._storeFused(scene, fused, referenceNode, movingNode, outputNode),
            registeredNode=registeredNode,
            transformNode=transformNode,
            device=job.device,
            seconds=None,
        )

    @staticmethod
    def _sceneOf(referenceNode, movingNode, outputNode):
        if referenceNode is None or movingNode is None:
            raise InputError("select both a reference volume and a moving volume")
        if referenceNode is movingNode:
            raise InputError(f"the reference and moving volumes are the same node ('{referenceNode.GetName()}'); select two volumes")
        scene = referenceNode.GetScene()
        if scene is None or movingNode.GetScene() is not scene:
            raise InputError("the reference and moving volumes must both be in the scene")
        if outputNode is not None and (outputNode is referenceNode or outputNode is movingNode):
            raise InputError("the output volume must not be one of the inputs; choose another node or create a new one")
        return scene

    @staticmethod
    def _storeFused(scene, fused: sitk.Image, referenceNode, movingNode, outputNode):
        if outputNode is None:
            return add_volume_node_from_image(scene, fused, f"{referenceNode.GetName()} + {movingNode.GetName()} fused")
        update_volume_node_from_image(outputNode, fused)
        if outputNode.GetDisplayNode() is None:
            outputNode.CreateDefaultDisplayNodes()
        return outputNode
