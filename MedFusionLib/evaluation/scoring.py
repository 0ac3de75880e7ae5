"""Scoring fusion methods with :mod:`MedFusionLib.evaluation.metrics`: on the Harvard 2D pairs and on volumes.

Harvard pairs (:mod:`MedFusionLib.datasets.harvard`): the MRI is source A, the CT/PET/SPECT
source B. Colour PET/SPECT is fused and scored on its Y channel (full-range BT.601 YCbCr); every
image is scored on the 8-bit scale, the fused output rounded to 8 bits as saving a PNG would, so
that a model run here and the same model's saved PNGs score the same.

Volumes: :func:`evaluate_volume` scores a fused volume slice by slice over its foreground slices
and measures inter-slice consistency (:func:`inter_slice_changes`), because slice-wise fusion
can make a volume flicker from slice to slice even when every slice scores well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError, WeightsNotAvailableError
from MedFusionLib.datasets.harvard import HarvardPair, PairImages, load_pair_images, luminance_eight_bit
from MedFusionLib.evaluation import metrics
from MedFusionLib.imaging.normalization import normalize_intensity
from MedFusionLib.io import read_image

if TYPE_CHECKING:  # torch runs the learned methods only: importing this module needs none
    import torch

# Reference "methods" scored beside the real ones: passing one source through unchanged. They
# are not fusion, and show which metrics reward a single source (see the report).
REFERENCE_A = "A only"
REFERENCE_B = "B only"
REFERENCE_METHODS = (REFERENCE_A, REFERENCE_B)


# ----------------------------------------------------------------------------- fusion methods


class FusionMethod:
    """Something that yields a fused image for a pair: ``fuse(images) -> (H, W)`` 8-bit levels.

    ``seconds_per_pair`` lists the measured fusion time of each pair (empty when nothing is run,
    e.g. for images read from disk). ``is_reference`` marks single-source references.
    """

    is_reference = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds_per_pair: list[float] = []

    def fuse(self, images: PairImages) -> np.ndarray:
        raise NotImplementedError


class ModelMethod(FusionMethod):
    """A registry model run on the pair: inputs scaled to [0, 1], output rounded to 8 bits.

    Times the forward pass alone (after one untimed warm-up run), synchronising CUDA.
    """

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__(name)
        self.model = model
        self.device = device
        self._warmed_up = False

    def fuse(self, images: PairImages) -> np.ndarray:
        return self.fuse_levels(images.source_a, images.source_b, images.pair.pair_id)

    def fuse_levels(self, source_a: np.ndarray, source_b: np.ndarray, label: str) -> np.ndarray:
        """Fuse two ``(H, W)`` images of 8-bit levels (any real dtype, values in [0, 255]) into
        ``(H, W)`` float64 levels, as :meth:`fuse` scores them; ``label`` names the pair in errors."""

        import torch

        def as_tensor(levels: np.ndarray) -> torch.Tensor:
            return torch.from_numpy((levels / 255.0).astype(np.float32))[None, None].to(self.device)

        a, b = as_tensor(source_a), as_tensor(source_b)
        with torch.inference_mode():
            if not self._warmed_up:
                self.model(a, b)
                self._warmed_up = True
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            fused = self.model(a, b)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds_per_pair.append(time.perf_counter() - started)
        values = fused[0, 0].float().cpu().numpy()
        if not np.all(np.isfinite(values)):
            raise InputError(f"model {self.name!r} produced NaN or infinite values on {label}.")
        return metrics.to_eight_bit(values)


class FusedDirectoryMethod(FusionMethod):
    """Fused images made elsewhere: ``<directory>/<task>/<id>.png`` (or ``<directory>/<id>.png``).

    The flat layout is accepted only when one task is evaluated, since ids repeat across tasks.
    Colour results are scored on their Y channel.
    """

    def __init__(self, name: str, directory: str | Path, single_task: bool) -> None:
        super().__init__(name)
        self.directory = Path(directory)
        self.single_task = single_task
        if not self.directory.is_dir():
            raise InputError(f"--fused {self.directory}: no such directory.")

    def fuse(self, images: PairImages) -> np.ndarray:
        pair = images.pair
        candidates = [self.directory / pair.task / f"{pair.pair_id}.png"]
        if self.single_task:
            candidates.append(self.directory / f"{pair.pair_id}.png")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise InputError(
                f"no fused image for {pair.task}/{pair.pair_id} from {self.name!r}: looked for "
                f"{' and '.join(map(str, candidates))}. Every evaluated pair needs one."
            )
        levels, _ = luminance_eight_bit(read_image(path), str(path))
        if levels.shape != images.source_a.shape:
            raise InputError(f"{path} is {levels.shape}, its sources are {images.source_a.shape}.")
        return levels


class SourceReference(FusionMethod):
    """The identity "fusion" that returns one source: a floor every fusion method should beat."""

    is_reference = True

    def __init__(self, name: str, which: str) -> None:
        super().__init__(name)
        self.which = which

    def fuse(self, images: PairImages) -> np.ndarray:
        return images.source_a if self.which == "a" else images.source_b


def build_model_methods(
    names: Iterable[str], device: str | torch.device = "auto"
) -> tuple[list[FusionMethod], dict[str, str]]:
    """Registry models by name, and ``{name: reason}`` for those skipped for lack of weights.

    Unknown names raise :class:`~MedFusionLib.core.errors.UnknownModelError`. A learned model
    without shipped weights is skipped, never run with random weights.
    """
    from MedFusionLib.core.devices import resolve_device
    from MedFusionLib.models import create_model

    resolved = resolve_device(device)
    methods: list[FusionMethod] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            model = create_model(name, pretrained=True, device=resolved)
        except WeightsNotAvailableError as error:
            skipped[name] = str(error)
            continue
        methods.append(ModelMethod(name, model, resolved))
    return methods, skipped


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PairScore:
    """The metrics of one method on one pair."""

    task: str
    pair_id: str
    case: str
    method: str
    scores: dict[str, float]
    seconds: float | None  # fusion time of this pair; None when the method ran elsewhere


@dataclass
class Example:
    """A pair kept for the figure: its images and each method's fused levels."""

    images: PairImages
    fused: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Everything an evaluation run produced; :mod:`MedFusionLib.evaluation.report` writes it out."""

    split: str
    tasks: list[str]
    methods: list[str]  # in the order asked for
    reference_methods: list[str]
    metric_names: list[str]
    rows: list[PairScore]
    skipped: dict[str, str]
    examples: dict[str, list[Example]]  # per task
    device: str

    def summary(self, task: str) -> dict[str, dict[str, tuple[float, float]]]:
        """``{method: {metric: (mean, std)}}`` over the pairs of ``task`` (population std)."""
        result: dict[str, dict[str, tuple[float, float]]] = {}
        for method in [*self.methods, *self.reference_methods]:
            rows = [r for r in self.rows if r.task == task and r.method == method]
            if not rows:
                continue
            result[method] = {}
            for name in self.metric_names:
                values = np.array([r.scores[name] for r in rows], dtype=np.float64)
                result[method][name] = (float(np.mean(values)), float(np.std(values)))
        return result

    def milliseconds_per_pair(self, task: str, method: str) -> float | None:
        """Mean fusion time in ms over the pairs of ``task``; None when not measured."""
        seconds = [r.seconds for r in self.rows if r.task == task and r.method == method]
        if not seconds or any(s is None for s in seconds):
            return None
        return 1000.0 * float(np.mean(seconds))

    def pair_count(self, task: str) -> int:
        return len({r.pair_id for r in self.rows if r.task == task})


def evaluate_pairs(
    pairs: Sequence[HarvardPair],
    methods: Sequence[FusionMethod],
    *,
    skipped: dict[str, str] | None = None,
    metric_names: Sequence[str] | None = None,
    include_references: bool = True,
    examples_per_task: int = 3,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Fuse every pair with every method and score it.

    ``examples_per_task`` pairs per task, spread evenly over its pairs, keep their fused images
    for the figure. ``progress(done, total)`` is called after each pair.
    """
    names = list(metrics.METRICS) if metric_names is None else list(metric_names)
    unknown = [n for n in names if n not in metrics.METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; choose from {', '.join(metrics.METRICS)}.")
    references: list[FusionMethod] = (
        [SourceReference(REFERENCE_A, "a"), SourceReference(REFERENCE_B, "b")] if include_references else []
    )
    tasks = list(dict.fromkeys(p.task for p in pairs))
    chosen_examples = set()
    for task in tasks:
        task_pairs = [p for p in pairs if p.task == task]
        count = min(examples_per_task, len(task_pairs))
        for index in np.linspace(0, len(task_pairs) - 1, count).round().astype(int):
            chosen_examples.add((task, task_pairs[index].pair_id))
    rows: list[PairScore] = []
    examples: dict[str, list[Example]] = {task: [] for task in tasks}
    for done, pair in enumerate(pairs, start=1):
        images = load_pair_images(pair)
        example = Example(images) if (pair.task, pair.pair_id) in chosen_examples else None
        for method in [*methods, *references]:
            timed_before = len(method.seconds_per_pair)
            fused = method.fuse(images)
            seconds = method.seconds_per_pair[-1] if len(method.seconds_per_pair) > timed_before else None
            scores = metrics.score(fused, images.source_a, images.source_b, names)
            rows.append(PairScore(pair.task, pair.pair_id, pair.case, method.name, scores, seconds))
            if example is not None and not method.is_reference:
                example.fused[method.name] = fused
        if example is not None:
            examples[pair.task].append(example)
        if progress is not None:
            progress(done, len(pairs))
    return Evaluation(
        split=pairs[0].split if pairs else "",
        tasks=tasks,
        methods=[m.name for m in methods],
        reference_methods=[m.name for m in references],
        metric_names=names,
        rows=rows,
        skipped=dict(skipped or {}),
        examples=examples,
        device=device,
    )


# ----------------------------------------------------------------------------- volumes


@dataclass
class VolumeEvaluation:
    """Metrics and inter-slice consistency of a fused volume.

    ``scores``: each metric averaged over the sources' foreground slices (8-bit scale), the
    same slices for every metric.
    ``slice_changes``: ``{"fused"|"A"|"B"|"pixelwise max of A, B": (S-1,) array}``, the mean
    absolute 8-bit change between consecutive slices (see :func:`inter_slice_changes`).
    ``flicker_ratio``: ``(S-1,)`` fused change / pixelwise-max source change, NaN outside the
    foreground. ``fused``, ``source_a``, ``source_b``: the ``(S, H, W)`` 8-bit volumes scored.
    """

    scores: dict[str, float]
    slice_changes: dict[str, np.ndarray]
    flicker_ratio: np.ndarray
    foreground: np.ndarray
    fused: np.ndarray
    source_a: np.ndarray
    source_b: np.ndarray
    spacing: tuple[float, float, float] | None  # (slice, row, column) mm, when known

    @property
    def worst_flicker(self) -> float:
        """Largest flicker ratio over foreground slice gaps (about 1 or below: no stripes)."""
        return float(np.nanmax(self.flicker_ratio))

    @property
    def median_flicker(self) -> float:
        return float(np.nanmedian(self.flicker_ratio))


PIXELWISE_MAX_LABEL = "pixelwise max of A, B"


def inter_slice_changes(volume: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive slices of ``(S, H, W)``: ``(S-1,)`` float64."""
    return np.abs(np.diff(volume, axis=0)).mean(axis=(1, 2))


def _volume_array(volume: sitk.Image | np.ndarray, name: str) -> tuple[np.ndarray, tuple | None]:
    if isinstance(volume, sitk.Image):
        if volume.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{name} has {volume.GetNumberOfComponentsPerPixel()} components; give a scalar volume.")
        spacing = tuple(reversed(volume.GetSpacing()))
        return sitk.GetArrayFromImage(volume).astype(np.float64), spacing
    return np.asarray(volume, dtype=np.float64), None


def evaluate_volume(
    fused: sitk.Image | np.ndarray,
    source_a: sitk.Image | np.ndarray,
    source_b: sitk.Image | np.ndarray,
    *,
    axis: int = 0,
    normalize_sources: bool = True,
    metric_names: Sequence[str] | None = None,
) -> VolumeEvaluation:
    """Score a fused volume against its sources, slice by slice along array ``axis``.

    Args:
        fused: the fused volume in [0, 1], as :func:`~MedFusionLib.fusion.pipeline.fuse_volumes` returns.
        source_a, source_b: the co-registered sources on the same grid. With
            ``normalize_sources`` they are scaled as the pipeline scales them
            (:func:`~MedFusionLib.imaging.normalization.normalize_intensity`, per volume); otherwise they
            must already be in [0, 1].
        axis: the numpy axis (of ``sitk.GetArrayFromImage`` order z, y, x) that was fused along.

    All three are mapped to 8-bit levels before scoring. Raises :class:`InputError` for shapes
    that differ, non-3D input or values outside [0, 1].
    """
    f, spacing = _volume_array(fused, "fused volume")
    a, _ = _volume_array(source_a, "source A")
    b, _ = _volume_array(source_b, "source B")
    if f.ndim != 3 or f.shape != a.shape or f.shape != b.shape:
        raise InputError(
            f"volume evaluation needs three 3D volumes on one grid; got {f.shape}, {a.shape}, "
            f"{b.shape}. Resample the sources onto the fused grid first."
        )
    if normalize_sources:
        a, b = normalize_intensity(a).astype(np.float64), normalize_intensity(b).astype(np.float64)
    for name, values in (("fused volume", f), ("source A", a), ("source B", b)):
        if values.min() < 0.0 or values.max() > 1.0:
            raise InputError(
                f"{name} has values in [{values.min():g}, {values.max():g}]; expected [0, 1]. "
                "Give the pipeline's fused output, and normalised sources (normalize_sources=True)."
            )
    f, a, b = (np.moveaxis(metrics.to_eight_bit(v), axis, 0) for v in (f, a, b))
    if spacing is not None:
        spacing = (spacing[axis], *[s for i, s in enumerate(spacing) if i != axis])
    foreground_indices = metrics.foreground_slices(a, b)
    if foreground_indices.size == 0:
        raise InputError("the source volumes have no foreground slice; check that they are not empty.")
    # One slice set for every metric, the sources' foreground (a fused-only metric on the volume
    # would pick its slices from the fused image itself).
    per_slice = [metrics.score(f[i], a[i], b[i], metric_names) for i in foreground_indices]
    scores = {name: float(np.mean([s[name] for s in per_slice])) for name in per_slice[0]}

    changes = {"fused": inter_slice_changes(f), "A": inter_slice_changes(a), "B": inter_slice_changes(b)}
    # The pixelwise larger source change bounds how much any pixelwise weighting or selection
    # of the sources (average, maximum, ...) can change between slices: above it is flicker.
    bound = np.maximum(np.abs(np.diff(a, axis=0)), np.abs(np.diff(b, axis=0))).mean(axis=(1, 2))
    changes[PIXELWISE_MAX_LABEL] = bound
    foreground = np.zeros(f.shape[0], dtype=bool)
    foreground[foreground_indices] = True
    gap_in_foreground = foreground[:-1] & foreground[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gap_in_foreground & (bound > 0), changes["fused"] / bound, math.nan)
    return VolumeEvaluation(scores, changes, ratio, foreground, f, a, b, spacing)
