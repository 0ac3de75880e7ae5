"""The one fusion flow that the CLI, the Slicer logic and batch scripts all call.

read and prepare each scan once (the input gate, :mod:`MedFusionLib.io.gate`) -> (register,
resample) -> normalise per volume -> per slice, a box around the joint
foreground -> fuse inside the boxes -> an image with exactly the reference's geometry. See
:func:`fuse_volumes`. Volumes are normalised and fused in slabs of slices, so beyond the inputs and
the output only a bounded working set is held (README "Performance" gives the peak for large CTs).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.choices import (  # noqa: F401  (callers read DEFAULT_CT_WINDOW, DEFAULT_MODEL, REGISTRATION_CHOICES here)
    AUTO_MODEL,
    DEFAULT_CT_WINDOW,
    DEFAULT_MODEL,
    REGISTRATION_CHOICES,
    REGISTRATION_PRESETS,
    resolve_model_name,
)
from MedFusionLib.core.devices import resolve_device_name
from MedFusionLib.core.errors import GridMismatchError, InputError
from MedFusionLib.core.geometry import grid_differences, slicing_array_axis
from MedFusionLib.core.model_files import is_learned, onnx_status, weights_status
from MedFusionLib.core.resources import require_memory
from MedFusionLib.fusion.engine import Box, CancelCallback, SliceFuser
from MedFusionLib.fusion.functional import colourise, functional_bounds, functional_luminance, resample_by_coordinates
from MedFusionLib.fusion.options import FusionOptions
from MedFusionLib.fusion.source_map import source_map_array
from MedFusionLib.imaging.colour import ycbcr_to_rgb
from MedFusionLib.imaging.normalization import (
    apply_ct_window,
    percentile_bounds,
    resolve_ct_window,
    scale_to_bounds,
    slice_boxes,
)
from MedFusionLib.io.gate import PreparedScan, ScanSource, prepare_input
from MedFusionLib.runtimes import choose_runtime, load_network

ImageSource = ScanSource | PreparedScan
# progress(stage, done, total): stage "register" (done/total in percent) or "fuse" (slices).
PipelineProgress = Callable[[str, int, int], None]

# Normalised intensity above which a voxel counts as foreground, and the margin (voxels) added
# around each slice's foreground box so the faint rim of the anatomy below the threshold (partial
# volume) is fused by the model too. The model's own context beyond the box is added by
# SliceFuser (its receptive radius), so the margin does not need to cover it.
FOREGROUND_THRESHOLD = 0.05
FOREGROUND_MARGIN = 2
# Slices normalised and fused at a time: about 16 M voxels (64 MB per float32 slab).
SLAB_VOXELS = 16_000_000
_log = logging.getLogger(__name__)


@dataclass
class FusionResult:
    """What :func:`fuse_volumes` returns.

    ``fused``: float32 in [0, 1] with the reference's size, spacing, origin and direction; for a
    colour 2D input, an RGB uint8 image (the fused luminance with the colour source's chroma);
    with ``functional``, an RGB uint8 image (2D or 3D) coloured through the colour map.
    ``registered_moving``: the moving image on the reference grid, original intensities (also
    after ``resample``).
    ``registration``: the registration result (transform, metric before/after), ``None`` without.
    ``stage_seconds``: wall time of ``load`` (checks), ``register``, ``fuse`` (normalisation,
    boxes, the model) and ``assemble``; ``seconds`` is the whole call. ``fused_slices``: slices
    the model ran on (the others hold no foreground). ``precision``: fp32, bf16 or fp16.
    ``runtime``: what ran the network (``torch``, ``openvino``, ``onnxruntime``).
    ``model``: the network that ran, by name: the concrete model ``auto`` resolved to on this run's
    device (:func:`resolve_model`), or the class name of a network passed in.
    ``windows``: how each input was mapped to [0, 1], in words, by role (``reference``,
    ``moving``), e.g. ``"CT soft-tissue (50, 400) HU, the default for a CT"``.
    """

    fused: sitk.Image
    registered_moving: sitk.Image
    registration: object | None
    model: str
    device: str
    seconds: float
    precision: str = "fp32"
    runtime: str = "torch"
    fused_slices: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)
    # Per voxel, the share of the moving image in the fused value (float32 in [0, 1], 0 = reference,
    # 1 = moving; MedFusionLib.fusion.source_map) on the reference grid; None unless asked for.
    source_map: sitk.Image | None = None


def model_usable(name: str, runtime: str = "torch") -> bool:
    """Whether ``runtime`` can run ``name`` with its shipped files here: torch a training-free rule
    always, a learned network when its weights are installed intact; the CPU runtimes when the
    exported graph is."""
    if runtime != "torch":
        return onnx_status(name) == "ok"
    return not is_learned(name) or weights_status(name) == "ok"


def resolve_model(name: str, device: str = "auto", warn: bool = True, runtime: str = "torch") -> str:
    """The concrete registry model a run with model ``name`` on ``device`` uses.

    ``auto`` becomes :data:`~MedFusionLib.core.choices.DEFAULT_MODEL_BY_DEVICE`'s entry for the
    resolved device (:func:`~MedFusionLib.core.choices.resolve_model_name`), or the CPU's (light)
    entry, with a warning, when that network's weights are not installed; other names are kept.
    ``device`` may be ``auto`` (resolved here: :func:`~MedFusionLib.core.devices.resolve_device_name`).
    ``warn``: log that fallback (a caller that only shows the choice passes False). ``runtime``:
    the concrete runtime whose files must be intact (:func:`model_usable`).
    """
    if name != AUTO_MODEL:
        return name
    resolved_device = resolve_device_name(device)
    chosen = resolve_model_name(name, resolved_device)
    concrete = resolve_model_name(name, resolved_device, usable=lambda model: model_usable(model, runtime))
    if warn and concrete != chosen:
        _log.warning(f"model auto: {chosen} (the choice for {resolved_device}) has no installed weights; "
                     f"using {concrete}")  # fmt: skip
    return concrete


Scaling = Callable[[np.ndarray], np.ndarray]


def intensity_scaling(
    values: np.ndarray, window: str | tuple[float, float] | None = None, eight_bit: bool = False
) -> Scaling:
    """The map of raw intensities to [0, 1] for one image, to apply slab by slab.

    A CT window if given; ``x / 255`` for 8-bit pictures (already display-scaled, and the
    literature's convention for the benchmark PNGs, which keeps fused colour in gamut); otherwise
    per-volume percentile clipping and min-max (:func:`~MedFusionLib.imaging.normalization.normalize_intensity`),
    whose percentiles come from the whole volume here, before any slab is scaled.
    """
    if window is not None:
        resolve_ct_window(window)  # an unknown window name fails now, not after the slow steps
        return lambda slab: apply_ct_window(slab, window)
    if eight_bit:
        return lambda slab: (np.asarray(slab, dtype=np.float32) / 255.0).astype(np.float32)
    bounds = percentile_bounds(values)
    return lambda slab: scale_to_bounds(slab, bounds)


def fuse_volumes(
    reference: ImageSource,
    moving: ImageSource,
    options: FusionOptions | None = None,
    *,
    progress: PipelineProgress | None = None,
    cancel: CancelCallback | None = None,
    pretrained: bool = True,
    source_map: bool = False,
    on_registration: Callable[[object], None] | None = None,
    **overrides,
) -> FusionResult:
    """Fuse ``moving`` into ``reference`` and return the result on the reference grid.

    Args:
        reference, moving: paths (any format :func:`~MedFusionLib.io.read_image` reads),
            SimpleITK images, or scans the input gate already prepared
            (:func:`~MedFusionLib.io.gate.prepare_input`); both 3D volumes, or both 2D images
            (grayscale or RGB). Each goes through the gate once, here or before.
        options: how to register and fuse (:class:`~MedFusionLib.fusion.options.FusionOptions`;
            its defaults when ``None``). ``overrides`` replace single fields, e.g.
            ``fuse_volumes(ct, mr, model="haf", registration="rigid")``. Two overrides take
            Python objects instead of names: ``model`` may be a :class:`~MedFusionLib.models.FusionNet` (used as
            it is), ``initial_transform`` a ``sitk.Transform`` (reference -> moving points).
        progress: ``progress(stage, done, total)`` with stage ``register`` (percent) or ``fuse``
            (slices); ``cancel()`` returning True stops the run with
            :class:`~MedFusionLib.core.errors.FusionCancelled`. Nothing is written by this function.
        pretrained: load the shipped weights of a named network (``False``: random weights, for tests).
        source_map: also compute :attr:`FusionResult.source_map` (one more float32 volume).
        on_registration: called with the registration's result (its ``confidence`` included) as
            soon as it is known, before fusion, e.g. to report a doubtful alignment at once.

    The options, as applied here: ``model`` ``auto`` (the default) is the network
    :func:`resolve_model` picks for the resolved device (:attr:`FusionResult.model` names it);
    ``registration`` ``none`` requires the two to share a voxel
    grid; ``auto`` registers rigidly unless they do; ``rigid``/``affine``/``bspline`` register
    ``moving`` onto ``reference`` (3D only: 2D pictures must already be aligned, as the benchmark
    pairs are). Windows: a CT window for a CT input; without one, 8-bit pictures are scaled by
    1/255 and anything else is normalised per volume
    (:func:`~MedFusionLib.imaging.normalization.normalize_intensity`). ``resample`` puts ``moving``
    on the reference grid by physical coordinates, without registration (hybrid scanners), and
    refuses a pair that does not overlap in space. ``functional`` (a colour map's name) takes
    ``moving`` as a scalar functional volume (PET, SPECT) and fuses it in colour
    (:mod:`~MedFusionLib.fusion.functional`): ``fused`` is then RGB uint8 on the reference grid.
    """
    network = overrides.pop("model") if overrides.get("model") is not None and not isinstance(
        overrides["model"], str) else None  # a FusionNet or a RunnableNetwork
    transform = (
        overrides.pop("initial_transform") if isinstance(overrides.get("initial_transform"), sitk.Transform) else None
    )
    options = dataclasses.replace(options or FusionOptions(), **overrides)
    started = time.perf_counter()
    registers = options.registration in REGISTRATION_PRESETS  # a volume in grey-scale is needed
    reference_scan = prepare_input(reference, "reference", volume=registers, scalar=registers)
    moving_scan = prepare_input(moving, "moving", volume=registers, scalar=registers)
    del reference, moving  # a path's image lives on in its scan only: one copy of each volume
    if reference_scan.dimension != moving_scan.dimension:
        raise InputError(
            f"the reference is {reference_scan.dimension}D but the moving image is "
            f"{moving_scan.dimension}D; give two volumes or two 2D images"
        )
    if options.functional is not None and moving_scan.colour is not None:
        raise InputError(
            "--functional colours a scalar functional volume, but the moving image is already in colour; "
            "fuse it without --functional (its colours are kept), or give the PET/SPECT volume itself"
        )
    registration, search = resolve_registration(options, reference_scan, moving_scan, transform is not None)
    # Beyond the inputs: the float32 result and its copy into the output image, plus one
    # transient copy for the percentiles; registration adds the resampled moving image. Slabs
    # are bounded by SLAB_VOXELS.
    require_memory(
        (3 + (registration != "none") + source_map) * 4 * reference_scan.image.GetNumberOfPixels(),
        f"fusing on a {'×'.join(map(str, reference_scan.image.GetSize()))} reference grid",
    )
    # Build the model before the slow steps, so a wrong name or missing weights fail at once; "auto"
    # becomes a concrete network once the device is known.
    device = resolve_device_name(options.device)
    if network is None:
        runtime = choose_runtime("torch" if not pretrained else options.runtime, device)
        model_name = resolve_model(options.model, device, runtime=runtime)
        network = load_network(model_name, options.runtime, device, options.precision, options.threads,
                               options.compile, pretrained)
    else:
        model_name = getattr(network, "model_name", type(network).__name__)
    fuser = SliceFuser(network, device=device, batch_size=options.batch_size, precision=options.precision,
                       compile=options.compile, threads=options.threads)
    stage_seconds = {"load": time.perf_counter() - started}

    reference_luminance, moving_luminance = reference_scan.image, moving_scan.image
    registration_result = None
    if registration == "none":
        differences = grid_differences(reference_luminance, moving_luminance)
        if differences:
            raise GridMismatchError(
                "the reference and moving images are on different voxel grids ("
                + "; ".join(differences)
                + "). Register them (--registration rigid, or registration='rigid' in Python), "
                "or resample the moving image onto the reference grid first."
            )
        registered_luminance = moving_luminance
    elif registration == "resample":
        registered_luminance = resample_by_coordinates(reference_luminance, moving_luminance)
    else:
        from MedFusionLib.registration import read_transform, register  # heavy (elastix): only when asked

        if transform is None and options.initial_transform is not None:
            transform = read_transform(options.initial_transform)

        if progress:
            progress("register", 0, 100)
        registration_result = register(
            reference_scan,
            moving_scan,
            preset=registration,
            backend=options.backend,
            initializer=transform if transform is not None else options.init,
            strict=options.strict,
            # Registration reports a fraction; the pipeline's stages count steps: percent.
            progress=(lambda fraction, _message: progress("register", int(round(100 * fraction)), 100))
            if progress
            else None,
            search=search,  # the shared-grid check's search, when it ran: never twice
        )
        registered_luminance = registration_result.registered
        confidence = registration_result.confidence
        if confidence is not None and confidence.doubtful:
            _log.warning("%s", confidence.summary)
        if on_registration is not None:
            on_registration(registration_result)
        if progress:
            progress("register", 100, 100)
        stage_seconds["register"] = registration_result.seconds

    fuse_started = time.perf_counter()
    a = sitk.GetArrayViewFromImage(reference_luminance)
    b = sitk.GetArrayViewFromImage(registered_luminance)
    window_a, mask_a, windows = display_window(options.reference_window_value, reference_scan)
    scale_a = intensity_scaling(a, window_a, reference_scan.eight_bit)
    if options.functional is None:
        moving_to_grid = registration_result.transform if registration_result is not None else None
        window_b, mask_b, windows_b = display_window(
            options.moving_window_value, moving_scan, reference_luminance, moving_to_grid
        )
        scale_b = intensity_scaling(b, window_b, moving_scan.eight_bit)
    else:
        # The display range comes from the functional volume as acquired, not from its resampled copy.
        bounds = functional_bounds(sitk.GetArrayViewFromImage(moving_luminance), options.functional_range_value)
        scale_b, mask_b = functional_luminance(bounds, options.functional), None
        windows_b = f"functional, colour map {options.functional} over {bounds[0]:g} to {bounds[1]:g}"
    windows = {"reference": windows, "moving": windows_b}
    slice_axis = slicing_array_axis(reference_luminance, options.axis) if a.ndim == 3 else None
    fused, fused_slices = fuse_arrays(
        a, b, scale_a, scale_b, slice_axis, fuser, progress, cancel, masks=(mask_a, mask_b)
    )
    del mask_a, mask_b
    stage_seconds["fuse"] = time.perf_counter() - fuse_started

    chroma = reference_scan.chroma if reference_scan.chroma is not None else moving_scan.chroma
    if options.functional is not None:
        fused_image = sitk.GetImageFromArray(colourise(fused, b, bounds, options.functional), isVector=True)
    elif chroma is None:
        fused_image = sitk.GetImageFromArray(fused)
    else:
        rgb = ycbcr_to_rgb(np.concatenate([fused[..., None] * 255.0, chroma], axis=-1))
        fused_image = sitk.GetImageFromArray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), isVector=True)
    fused_image.CopyInformation(reference_luminance)
    source_map_image = None
    if source_map:
        share = source_map_array(a, b, scale_a, scale_b, fused, slice_axis, SLAB_VOXELS)
        source_map_image = sitk.GetImageFromArray(share)
        del share
        source_map_image.CopyInformation(reference_luminance)

    del fused  # the image holds its own copy
    if registration == "resample":
        registered_moving = registered_luminance
    elif registration_result is None:
        registered_moving = moving_scan.colour if moving_scan.colour is not None else moving_luminance
    else:
        registered_moving = registration_result.registered
    stage_seconds["assemble"] = time.perf_counter() - fuse_started - stage_seconds["fuse"]
    return FusionResult(
        fused=fused_image,
        registered_moving=registered_moving,
        registration=registration_result,
        model=model_name,
        device=str(fuser.device),
        seconds=time.perf_counter() - started,
        precision=fuser.precision,
        runtime=fuser.runtime,
        fused_slices=fused_slices,
        stage_seconds=stage_seconds,
        windows=windows,
        source_map=source_map_image,
    )


def display_window(
    window: str | tuple[float, float] | None,
    scan: PreparedScan,
    grid: sitk.Image | None = None,
    transform: sitk.Transform | None = None,
) -> tuple[str | tuple[float, float] | None, np.ndarray | None, str]:
    """How one input is mapped to [0, 1]: ``(window, body, description)``.

    ``window``: the option's value (:func:`~MedFusionLib.fusion.options.parse_window`); ``auto``
    becomes, for a scan the input gate recognised as CT (:attr:`PreparedScan.is_ct`),
    :data:`~MedFusionLib.core.choices.DEFAULT_CT_WINDOW` (the window that shows a CT most like
    the models' training pictures), else ``None`` (percentiles, or 1/255 for 8-bit pictures).
    ``body``: for a CT shown through a window, its body mask (the scan's own, made once) on
    ``grid`` (the scan's grid when ``None``; ``transform``: ``grid`` points → scan points, e.g.
    the registration's) as a uint8 array ``[z, y, x]``, which replaces the threshold as its
    foreground for the fusion boxes, so the table and the padding are not fused; else ``None``.
    ``description``: the choice in words, for the output and :attr:`FusionResult.windows`.
    """
    is_ct = window is not None and scan.is_ct
    if window is None or (window == "auto" and not is_ct):
        return None, None, "8-bit, /255" if scan.eight_bit else "percentiles"
    mask = scan.body_mask_on(grid if grid is not None else scan.image, transform) if is_ct else None
    how = "set by the user"
    if window == "auto":
        window, how = DEFAULT_CT_WINDOW, "the default for a CT"
    level, width = resolve_ct_window(window)
    name = window if isinstance(window, str) else "window"
    description = f"CT {name} ({level:g}, {width:g}) HU, {how}"
    return window, mask, description


def resolve_registration(
    options: FusionOptions, reference: PreparedScan, moving: PreparedScan, has_transform: bool
) -> tuple[str, object | None]:
    """The registration preset a run uses (``options.registration``, with ``auto`` made concrete),
    and the orientation search that decided it (``None`` when none ran), for :func:`register` to
    reuse: the search runs once per fusion.

    ``auto`` is ``rigid`` when the two images lie on different voxel grids or an initial transform
    was given; ``none`` for 2D pictures (never registered) and for volumes on one voxel grid that
    look aligned as stored (co-registered data). One grid alone is not trusted: two scans resampled
    onto one standard grid share it too, so a shared grid is checked with the orientation search
    (:func:`~MedFusionLib.registration.aligned_as_stored`) and registered when it is not aligned.
    """
    if options.registration != "auto":
        return options.registration, None
    if reference.dimension == 2:
        return "none", None
    if has_transform or options.initial_transform is not None or grid_differences(reference.image, moving.image):
        return "rigid", None
    from MedFusionLib.registration import aligned_as_stored  # the search needs only SimpleITK

    check = aligned_as_stored(reference, moving)
    if check.aligned:
        return "none", check.search
    _log.info(f"registration auto: the images share a voxel grid but are not aligned as stored ({check.evidence}); "
              "registering them rigidly")  # fmt: skip
    return "rigid", check.search


def fuse_arrays(
    a: np.ndarray,
    b: np.ndarray,
    scale_a: Scaling,
    scale_b: Scaling,
    slice_axis: int | None,
    fuser: SliceFuser,
    progress: PipelineProgress | None = None,
    cancel: CancelCallback | None = None,
    masks: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[np.ndarray, int]:
    """Normalise and fuse two raw arrays of one shape, slab by slab; returns ``(fused, slices)``.

    ``a``, ``b``: ``[z, y, x]`` (3D, sliced along array axis ``slice_axis``) or ``[y, x]`` (2D,
    ``slice_axis`` None), any real dtype; ``scale_a``/``scale_b`` map raw values to float32 in
    [0, 1] element-wise. ``fused``: float32 in [0, 1] of the same shape: inside each slice's box
    (the joint foreground, above :data:`FOREGROUND_THRESHOLD` in either input, grown by
    :data:`FOREGROUND_MARGIN`) the model's output; elsewhere the mean of the two normalised
    inputs, so background noise stays continuous across a box's edge instead of dropping to a
    hard zero. ``slices``: how many slices had a box. Two passes over slabs of about
    :data:`SLAB_VOXELS` voxels: boxes first (so progress knows its total), then fusion; memory
    beyond the inputs is the output plus a few slabs. ``masks``: per input, an array of its shape
    (non-zero = body) that replaces the threshold as that input's foreground (a CT's body mask:
    its table and padding are bright or dark, not anatomy), or ``None``.
    """
    stack_a = a[None] if slice_axis is None else np.moveaxis(a, slice_axis, 0)
    stack_b = b[None] if slice_axis is None else np.moveaxis(b, slice_axis, 0)
    fused = np.empty(a.shape, dtype=np.float32)
    stack_fused = fused[None] if slice_axis is None else np.moveaxis(fused, slice_axis, 0)
    count = stack_a.shape[0]
    slab = max(1, SLAB_VOXELS // (stack_a[0].size or 1))
    starts = range(0, count, slab)

    stack_masks = [
        None if mask is None else (mask[None] if slice_axis is None else np.moveaxis(mask, slice_axis, 0))
        for mask in masks
    ]
    boxes: list[Box | None] = []
    kept = None  # a single slab's normalised pair is reused instead of recomputed
    for start in starts:
        pair = scale_a(stack_a[start : start + slab]), scale_b(stack_b[start : start + slab])
        foreground = [
            values > FOREGROUND_THRESHOLD if mask is None else mask[start : start + slab] > 0
            for values, mask in zip(pair, stack_masks)
        ]
        boxes += slice_boxes(foreground[0] | foreground[1], FOREGROUND_MARGIN)
        kept = pair if len(starts) == 1 else None
    total = sum(box is not None for box in boxes)
    if total == 0:
        raise InputError(
            "neither image has any foreground after normalisation (every voxel is near its minimum); "
            "check the inputs, or pass a CT window that matches the image's intensity range"
        )
    if progress:
        progress("fuse", 0, total)
    done = 0
    for start in starts:
        stop = min(start + slab, count)
        slab_a, slab_b = kept or (scale_a(stack_a[start:stop]), scale_b(stack_b[start:stop]))
        out = stack_fused[start:stop]
        np.add(slab_a, slab_b, out=out)
        out *= np.float32(0.5)
        slab_progress = (lambda d, _t, before=done: progress("fuse", before + d, total)) if progress else None
        fuser.fuse_stack(slab_a, slab_b, boxes[start:stop], out=out, progress=slab_progress, cancel=cancel)
        done += sum(box is not None for box in boxes[start:stop])
    return fused, total
