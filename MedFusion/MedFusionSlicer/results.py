"""What the Slicer logic hands back: the nodes of a run (:class:`FusionNodes`), what its
registration found (:class:`RegistrationSummary`, from the worker's report), and the entries of
the panel's model list (:class:`ModelChoice`). Plain data; nothing heavy is imported (the panel
imports this at Slicer start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .choices import FusionOptions


@dataclass(frozen=True)
class RegistrationSummary:
    """What a registration found, for the status line and the console.

    ``metric_before``/``metric_after``: Mattes mutual information at the start and the end (as ITK
    reports it: lower is better). ``doubtful``/``confidence``: MedFusionLib's judgement of the
    result where it provides one (``None``: no judgement available).
    """

    preset: str = ""
    backend: str = ""
    metric_before: float | None = None
    metric_after: float | None = None
    seconds: float | None = None
    doubtful: bool | None = None
    confidence: str = ""

    @classmethod
    def from_report(cls, report: dict | None) -> RegistrationSummary | None:
        """From the worker's ``registration`` event or :func:`MedFusionSlicer.server.registration_report`."""
        if not report:
            return None
        confidence = report.get("confidence") or {}
        if not isinstance(confidence, dict):
            confidence = {"summary": str(confidence)}
        doubtful = confidence.get("doubtful")

        def number(key):
            value = report.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(
            preset=str(report.get("preset", "")),
            backend=str(report.get("backend", "")),
            metric_before=number("metric_before"),
            metric_after=number("metric_after"),
            seconds=number("seconds"),
            doubtful=None if doubtful is None else bool(doubtful),
            confidence=str(confidence.get("summary", "")),
        )

    def text(self) -> str:
        """One line, e.g. "rigid registration (elastix, 2.4 s): metric -0.31 -> -0.62; confident: ..."."""
        what = " ".join(part for part in (self.preset, "registration") if part)
        details = ", ".join(
            part for part in (self.backend, f"{self.seconds:.1f} s" if self.seconds is not None else "") if part
        )
        line = what + (f" ({details})" if details else "")
        if self.metric_before is not None and self.metric_after is not None:
            line += f": metric {self.metric_before:.3f} -> {self.metric_after:.3f}"
        if self.doubtful is True:
            line += (
                "; DOUBTFUL"
                + (f": {self.confidence}" if self.confidence else "")
                + " - check it in the views (Compare)"
            )
        elif self.confidence:
            line += f"; {self.confidence}"
        return line


@dataclass
class FusionNodes:
    """The nodes a fusion run added to (or updated in) the scene.

    ``fusedNode``: float32 in [0, 1] on the reference grid; with the ``functional`` option an RGB
    uint8 ``vtkMRMLVectorVolumeNode``. ``sourceMapNode``: with ``sourceMap``, per voxel the moving
    image's share of the fused value (float32, 0 = the reference, 1 = the moving image), shown
    through a blue-white-red table with the window fixed to 0..1; else ``None``.
    ``registeredNode``: the moving volume resampled on the reference grid, original intensities.
    ``transformNode``: reference -> moving (ITK resampling convention, read by Slicer as "transform
    from parent": put the original moving volume under it to see it aligned). ``checkerboardNode``:
    squares alternating between the reference and the registered volume, for judging the
    registration. The last three and ``registration`` (:class:`RegistrationSummary`) are ``None``
    without registration (also after ``resample``, which does not register).
    ``device``/``seconds``: where and how long the fusion ran; ``options``: what it ran with;
    ``model``: the network that ran (model ``auto`` resolved by the device, e.g. ``emfusion``);
    ``referenceNode``/``movingNode``: its inputs; ``messages``: what ``log`` received.
    """

    fusedNode: object
    sourceMapNode: object | None = None
    registeredNode: object | None = None
    transformNode: object | None = None
    checkerboardNode: object | None = None
    registration: RegistrationSummary | None = None
    device: str = ""
    seconds: float | None = None
    options: FusionOptions | None = None
    model: str = ""
    referenceNode: object | None = None
    movingNode: object | None = None
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the panel's model list: ``usable`` is False for a learned model whose trained
    weights are missing or damaged, and ``note`` then says so."""

    name: str
    description: str
    default: bool
    usable: bool
    note: str = ""
