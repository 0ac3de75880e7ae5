"""Exceptions raised by MedFusionLib.

Every error a user can cause derives from :class:`MedFusionError`, and its message names the
problem *and* the fix, so the CLI and the Slicer panel can show it as is. The CLI turns these
into a one-line message and a non-zero exit status instead of a traceback.
"""


class MedFusionError(Exception):
    """Base class of every error MedFusion raises on purpose."""


class InputError(MedFusionError, ValueError):
    """An input image or argument is unusable (missing file, wrong dimensionality, NaNs, ...)."""


class GridMismatchError(InputError):
    """Reference and moving images do not share a voxel grid and no registration was asked for."""


class OutputExistsError(MedFusionError, FileExistsError):
    """The output path exists and overwriting was not allowed."""


class UnknownModelError(MedFusionError, KeyError):
    """A model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class WeightsNotAvailableError(MedFusionError, FileNotFoundError):
    """Pretrained weights were requested for a model that has none shipped."""


class WeightsIntegrityError(MedFusionError):
    """A shipped weights file does not match the sha256 in its model card."""


class DeviceUnavailableError(MedFusionError, RuntimeError):
    """The requested compute device (e.g. CUDA) is not usable in this environment."""


class RegistrationError(MedFusionError, RuntimeError):
    """Registration failed or produced an implausible transform."""


class FusionCancelled(MedFusionError):
    """The caller's cancel callback asked to stop; no output was written."""


class RuntimeUnavailableError(MedFusionError, RuntimeError):
    """The inference runtime a run asked for (torch, OpenVINO, ONNX Runtime) is not installed."""
