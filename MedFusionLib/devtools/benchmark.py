"""How fast fusion and registration run here: ``medfusion benchmark`` and ``bench/bench_fusion.py``.

For each model, in one process and on one input pair (the shared BraTS T1/T2 case when present,
otherwise a phantom of the requested size), the **naive reference** is timed against the
**product path** on every runtime:

- naive: every slice, one at a time (batch 1), whole slices, fp32, NCHW, the model as trained
  (no folding), eager torch under ``torch.no_grad``; normalisation and the per-slice foreground
  boxes as in the product, so both compute the same fused volume;
- product: :func:`MedFusionLib.fusion.pipeline.fuse_arrays` with :class:`~MedFusionLib.fusion.engine.SliceFuser`
  (boxes plus receptive-field context, skipped empty slices, the default precision and batch
  size) on a network from :func:`~MedFusionLib.runtimes.load_network`, once per runtime (torch:
  folded BatchNorms, channels-last, inference mode; OpenVINO and ONNX Runtime: the shipped ONNX
  graphs; by default every installed runtime that runs on the device), optionally also in other
  precisions (those the runtime offers: bf16 on torch and OpenVINO, fp16 on CUDA) and with
  ``torch.compile``.

Both are timed from the raw arrays to the fused float32 volume ("fusion alone": no reading,
writing or registration; the networks are loaded before the clock starts). Per row: milliseconds
per slice of the volume, seconds per volume, voxels per second, speed-up over naive, peak memory
(resident-set growth above the level before the row, sampled every 5 ms; on CUDA the peak
allocated by torch), and the largest absolute difference from the naive output. With
``repeats`` > 1 the rows of a model are timed in rounds (naive, then each product row, then again)
and each row is its fastest run, so a shared machine's changing load touches every row alike. Registration
rows time :func:`MedFusionLib.registration.register` per preset and backend on the moving volume
displaced by a fixed rigid motion (itk-elastix's one-off library load is shown apart).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedFusionLib.core.devices import resolve_device
from MedFusionLib.core.errors import InputError
from MedFusionLib.core.precision import ACCURACY_BUDGET, PRECISION_CHOICES, cpu_has_native_bf16
from MedFusionLib.devtools.shared_data import shared_data_dir
from MedFusionLib.fusion.engine import SliceFuser
from MedFusionLib.fusion.pipeline import FOREGROUND_MARGIN, FOREGROUND_THRESHOLD, fuse_arrays, intensity_scaling
from MedFusionLib.imaging.normalization import normalize_intensity, slice_boxes
from MedFusionLib.models import create_model
from MedFusionLib.runtimes import installed_runtimes, load_network

log = logging.getLogger("MedFusionLib")

DEFAULT_MODELS = ("emfusion", "haf", "densefuse", "laplacian")
RUNTIMES = ("torch", "openvino", "onnxruntime")
# The precisions each runtime offers besides ``auto`` (fp16 only with torch on CUDA).
RUNTIME_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "openvino": ("fp32", "bf16"), "onnxruntime": ("fp32",)}
DEFAULT_SIZE = (240, 240, 155)
DEFAULT_CASE = "TCGA-DU-7294"
FP32_TOLERANCE = 1e-5  # product vs naive, both fp32: only the order of float operations differs


@dataclass
class BenchmarkPair:
    """The two co-registered volumes every row fuses, and where they came from."""

    reference: sitk.Image
    moving: sitk.Image
    source: str


@dataclass
class FusionRow:
    """One timed fusion of the whole volume (see the module docstring for each figure)."""

    model: str
    path: str  # "naive" or "product" (+ " compiled")
    precision: str
    batch_size: int
    seconds: float
    ms_per_slice: float
    voxels_per_second: float
    speedup: float
    peak_mib: float
    max_abs_diff: float
    fused_slices: int
    within_budget: bool | None  # None for the naive row itself
    runtime: str = "torch"  # what ran the network: torch (the naive row: eager torch), openvino, onnxruntime


@dataclass
class RegistrationRow:
    preset: str
    backend: str
    seconds: float
    metric_before: float
    metric_after: float
    peak_mib: float
    error: str = ""


def find_shared_case(case: str = DEFAULT_CASE) -> Path | None:
    """The shared BraTS case folder (``t1.nii.gz``, ``t2.nii.gz``) when this checkout has it."""
    shared = shared_data_dir()
    folder = shared / "brats" / case if shared is not None else None
    if folder is not None and (folder / "t1.nii.gz").is_file() and (folder / "t2.nii.gz").is_file():
        return folder
    return None


def load_benchmark_pair(
    data: Path | None, size: tuple[int, int, int] = DEFAULT_SIZE, modalities=("t1", "t2")
) -> BenchmarkPair:
    """``data``: a case folder holding ``<modality>.nii.gz`` files; ``None``: the shared BraTS case
    when present, otherwise the analytic head phantom at ``size`` (x, y, z) with 1 mm voxels."""
    if data is None:
        data = find_shared_case()
    if data is None:
        from MedFusionLib.imaging.phantom import make_head_phantom

        phantom = make_head_phantom(size=size, spacing=(1.0, 1.0, 1.0), seed=0)
        return BenchmarkPair(phantom.ct, phantom.mr, f"phantom CT/MR {'×'.join(map(str, size))} (no shared data found)")
    paths = [Path(data) / f"{modality}.nii.gz" for modality in modalities]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path} not found: --data must be a folder holding {', '.join(p.name for p in paths)}")
    reference, moving = (sitk.ReadImage(str(path)) for path in paths)
    return BenchmarkPair(reference, moving,
                         f"{Path(data).name} {'/'.join(modalities)} {'×'.join(map(str, reference.GetSize()))}")


def machine_description(device: torch.device) -> dict:
    """CPU model and features, cores, torch threads and version, and the GPU if one is used."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as stream:
            fields = (line.split(":", 1) for line in stream if ":" in line)
            info = {key.strip(): value.strip() for key, value in fields}  # the last CPU's fields
        cpu = info.get("model name", cpu)
        flags = set(info.get("flags", "").split())
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    description = {
        "cpu": cpu,
        "cpu_features": features,
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "runtimes": {name: version for name, version in installed_runtimes().items() if version},
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Largest memory growth (MiB) while the block runs: resident set on the CPU (sampled every
    5 ms by a thread), torch's peak allocation on a CUDA device."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device if device is not None and device.type == "cuda" else None

    def __enter__(self) -> PeakMemory:
        if self.device is not None:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.base = _resident_mib()
        self.peak, self.running = self.base, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running and self.device is None:
            self.peak = max(self.peak, _resident_mib())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        if self.device is not None:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak = max(self.peak, _resident_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.base


def naive_fuse(model: torch.nn.Module, a: np.ndarray, b: np.ndarray, device: torch.device) -> np.ndarray:
    """The straightforward loop: normalise, run every whole axial slice alone, keep the boxes.

    ``a``, ``b``: raw ``(N, H, W)`` arrays. Returns float32 ``(N, H, W)``, defined exactly as the
    product's :func:`~MedFusionLib.fusion.pipeline.fuse_arrays` output: the model inside each slice's
    foreground box, the mean of the normalised inputs elsewhere.
    """
    a, b = normalize_intensity(a), normalize_intensity(b)
    boxes = slice_boxes((a > FOREGROUND_THRESHOLD) | (b > FOREGROUND_THRESHOLD), FOREGROUND_MARGIN)
    fused = (a + b) * np.float32(0.5)
    with torch.no_grad():
        for index in range(len(a)):
            slice_a = torch.from_numpy(a[index])[None, None].to(device)
            slice_b = torch.from_numpy(b[index])[None, None].to(device)
            output = model(slice_a, slice_b)[0, 0].clamp(0.0, 1.0).cpu().numpy()
            if boxes[index] is not None:
                top, bottom, left, right = boxes[index]
                fused[index, top:bottom, left:right] = output[top:bottom, left:right]
    return fused


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_once(run, device: torch.device):
    """``(result, seconds, peak MiB)`` of one call of ``run()``."""
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        result = run()
        _synchronize(device)
        seconds = time.perf_counter() - started
    return result, seconds, memory.growth


def _product_fuse(fuser: SliceFuser, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """The pipeline's fusion of raw axial stacks (percentile normalisation, as for MR)."""
    return fuse_arrays(a, b, intensity_scaling(a), intensity_scaling(b), 0, fuser)


def default_runtimes(device: torch.device) -> list[str]:
    """Every installed runtime that runs on ``device``: on CUDA torch only."""
    if device.type != "cpu":
        return ["torch"]
    installed = installed_runtimes()
    return [runtime for runtime in RUNTIMES if installed[runtime]]


def runtime_precisions(runtime: str, precisions: Sequence[str], device: torch.device) -> list[str]:
    """``auto`` and those of ``precisions`` that ``runtime`` offers on ``device`` (fp16: CUDA only)."""
    offered = [p for p in RUNTIME_PRECISIONS[runtime] if p != "fp16" or device.type == "cuda"]
    return ["auto"] + [p for p in precisions if p != "auto" and p in offered]


@dataclass
class _Variant:
    """One timed way of fusing the volume (a row of the table once timed)."""

    path: str
    runtime: str
    precision: str
    batch_size: int
    run: object  # () -> (fused (N, H, W) float32, slices fused)
    seconds: float = float("inf")
    peak: float = 0.0
    difference: float = 0.0
    fused_slices: int = 0


def benchmark_fusion(
    pair: BenchmarkPair,
    models: list[str],
    device: str = "auto",
    precisions: list[str] | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    repeats: int = 1,
    report=print,
    runtimes: Sequence[str] | None = None,
    threads: int | None = None,
) -> list[FusionRow]:
    """Naive and product rows for every model (see the module docstring).

    ``runtimes``: the product path on each (default :func:`default_runtimes`); ``precisions``
    adds product rows in those precisions besides ``auto``, on the runtimes that offer them
    (:func:`runtime_precisions`; a precision a runtime resolves to twice is timed once);
    ``compile`` adds a ``torch.compile`` row (torch only); ``threads``: each CPU runtime's
    threads (torch's are the process's). Each row is the fastest of ``repeats`` runs, timed in
    rounds over all of a model's rows, with the largest peak memory of them; ``report`` gets one
    line per row.
    """
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    torch_device = resolve_device(device)
    runtimes = list(runtimes) if runtimes else default_runtimes(torch_device)
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    a = sitk.GetArrayViewFromImage(pair.reference)
    b = sitk.GetArrayViewFromImage(pair.moving)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"benchmark volumes must be 3D and on one grid, got {a.shape} and {b.shape}")
    slices, voxels = a.shape[0], a.size
    middle = slice(slices // 2, slices // 2 + 1)
    rows: list[FusionRow] = []

    for name in models:
        reference_model = create_model(name, device=torch_device)
        naive_fuse(reference_model, a[middle], b[middle], torch_device)  # warm-up
        variants = [_Variant("naive", "torch", "fp32", 1,
                             lambda model=reference_model: (naive_fuse(model, a, b, torch_device), slices))]
        loaded = set()
        for runtime in runtimes:
            options = [(precision, False) for precision in runtime_precisions(runtime, precisions or [], torch_device)]
            if compile and runtime == "torch":
                options.append(("auto", True))
            for precision, compiled in options:
                network = load_network(name, runtime, str(torch_device), precision, threads, compile=compiled)
                if (runtime, network.precision, compiled) in loaded:
                    continue  # e.g. fp32 asked for where auto is fp32 already
                if min(a.shape[1:]) < network.min_size:
                    log.warning("benchmark: %s on %s needs slices of at least %d pixels a side; not timed",
                                name, runtime, network.min_size)
                    continue
                loaded.add((runtime, network.precision, compiled))
                fuser = SliceFuser(network, batch_size=batch_size)
                path = "product"
                if compiled:  # the first calls compile; time them apart
                    started = time.perf_counter()
                    _product_fuse(fuser, a, b)
                    path = f"product compiled (compiling: {time.perf_counter() - started:.0f} s)"
                else:
                    _product_fuse(fuser, a[middle], b[middle])  # warm-up
                variants.append(_Variant(path, runtime, fuser.precision, fuser.batch_size,
                                         lambda fuser=fuser: _product_fuse(fuser, a, b)))
        naive = None
        for _ in range(repeats):  # rounds: every row once, then again
            for variant in variants:
                (fused, variant.fused_slices), seconds, peak = _timed_once(variant.run, torch_device)
                if naive is None:
                    naive = fused
                variant.seconds = min(variant.seconds, seconds)
                variant.peak = max(variant.peak, peak)
                variant.difference = max(variant.difference, float(np.abs(fused - naive).max()))
                del fused
        naive_seconds = variants[0].seconds
        for index, variant in enumerate(variants):
            tolerance = None if index == 0 else (FP32_TOLERANCE if variant.precision == "fp32" else ACCURACY_BUDGET)
            row = FusionRow(
                model=name, path=variant.path, precision=variant.precision, batch_size=variant.batch_size,
                seconds=variant.seconds, ms_per_slice=1e3 * variant.seconds / slices,
                voxels_per_second=voxels / variant.seconds, speedup=naive_seconds / variant.seconds,
                peak_mib=variant.peak, max_abs_diff=variant.difference, fused_slices=variant.fused_slices,
                within_budget=None if tolerance is None else bool(variant.difference <= tolerance),
                runtime=variant.runtime,
            )
            rows.append(row)
            report(format_fusion_row(row))
    return rows


def benchmark_registration(
    pair: BenchmarkPair, presets: list[str], backends: list[str], report=print
) -> tuple[list[RegistrationRow], float | None]:
    """Time :func:`~MedFusionLib.registration.register` of the moving volume, displaced by a fixed
    rigid motion (10°, 8 mm), back onto the reference, per preset and backend. Returns the rows
    and the seconds itk-elastix took to load (``None`` when elastix is not among ``backends``)."""
    from MedFusionLib.devtools.registration_accuracy import warp_with_known_transform
    from MedFusionLib.imaging.phantom import rigid_motion
    from MedFusionLib.registration import register
    from MedFusionLib.registration.elastix_backend import load_itk_elastix

    centre = pair.reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in pair.reference.GetSize()])
    motion = rigid_motion((10.0, -6.0, 4.0), (8.0, -5.0, 6.0))
    motion.SetCenter(centre)
    moved = warp_with_known_transform(pair.moving, motion)
    load_seconds = None
    if "elastix" in backends:
        started = time.perf_counter()
        load_itk_elastix()
        load_seconds = time.perf_counter() - started
    rows = []
    for preset in presets:
        for backend in backends:
            with PeakMemory() as memory:
                started = time.perf_counter()
                try:
                    result = register(pair.reference, moved, preset=preset, backend=backend)
                    row = RegistrationRow(preset, backend, time.perf_counter() - started, result.metric_before,
                                          result.metric_after, 0.0)
                except Exception as error:  # a failed registration is a row, not the end of the benchmark
                    row = RegistrationRow(preset, backend, time.perf_counter() - started, float("nan"), float("nan"),
                                          0.0, f"{type(error).__name__}: {error}")
            row.peak_mib = memory.growth
            rows.append(row)
            report(format_registration_row(row))
    return rows, load_seconds


FUSION_HEADER = (
    "| model | path | runtime | precision | batch | s / volume | ms / slice | Mvoxel/s | speed-up | peak MiB "
    "| max abs diff | slices fused |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)
REGISTRATION_HEADER = (
    "| preset | backend | seconds | MI before | MI after | peak MiB | error |\n"
    "|---|---|---|---|---|---|---|"
)


def format_fusion_row(row: FusionRow) -> str:
    mark = "" if row.within_budget is None else (" ✓" if row.within_budget else " ✗")
    return (
        f"| {row.model} | {row.path} | {row.runtime} | {row.precision} | {row.batch_size} | {row.seconds:.2f} "
        f"| {row.ms_per_slice:.1f} | {row.voxels_per_second / 1e6:.2f} | {row.speedup:.2f}× | {row.peak_mib:.0f} "
        f"| {row.max_abs_diff:.1e}{mark} | {row.fused_slices} |"
    )


def format_registration_row(row: RegistrationRow) -> str:
    return (
        f"| {row.preset} | {row.backend} | {row.seconds:.2f} | {row.metric_before:.3f} | {row.metric_after:.3f} | "
        f"{row.peak_mib:.0f} | {row.error[:80]} |"
    )


def markdown_report(report: dict) -> str:
    """The whole benchmark as Markdown: machine, input, fusion table, registration table."""
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cpu']} ({', '.join(machine['cpu_features']) or 'no AVX2'}), "
        f"{machine['cores_available']} cores available, "
        f"torch {machine['torch']} with {machine['torch_threads']} threads, device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + "".join(f", {name} {version}" for name, version in machine.get("runtimes", {}).items() if name != "torch"),
        f"Input: {report['input']}; each fusion row the fastest of {report.get('repeats', 1)} run(s), "
        "timed in rounds over a model's rows",
        "",
        FUSION_HEADER,
        *(format_fusion_row(FusionRow(**row)) for row in report["fusion"]),
        "",
        f"max abs diff: against the naive fp32 output over the whole volume; ✓ within {FP32_TOLERANCE:g} (fp32) "
        f"or the reduced-precision budget {ACCURACY_BUDGET:.4f} (one 8-bit grey level).",
    ]
    if report.get("registration"):
        load = report.get("elastix_load_seconds")
        lines += ["", REGISTRATION_HEADER,
                  *(format_registration_row(RegistrationRow(**row)) for row in report["registration"])]
        if load is not None:
            lines.append(f"\nitk-elastix library load (once per process, not in the rows): {load:.1f} s")
    return "\n".join(lines)


def run_benchmark(
    models: Sequence[str] = DEFAULT_MODELS,
    data: Path | None = None,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    device: str = "auto",
    precisions: list[str] | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    presets: list[str] | None = None,
    backends: list[str] | None = None,
    repeats: int = 1,
    report=print,
    runtimes: Sequence[str] | None = None,
    threads: int | None = None,
) -> dict:
    """Run fusion (and, when ``presets`` is non-empty, registration) benchmarks; returns the
    report as a JSON-serialisable dict (``machine``, ``input``, ``fusion``, ``registration``).
    ``runtimes``, ``threads``: as in :func:`benchmark_fusion`."""
    for precision in precisions or []:
        if precision not in PRECISION_CHOICES:
            raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISION_CHOICES)}")
    pair = load_benchmark_pair(data, size)
    torch_device = resolve_device(device)
    result = {"machine": machine_description(torch_device), "input": pair.source, "fusion": [], "registration": []}
    report(f"input: {pair.source}\n\n{FUSION_HEADER}")
    rows = benchmark_fusion(pair, list(models), device, precisions, batch_size, compile, repeats, report=report,
                            runtimes=runtimes, threads=threads)
    result["repeats"] = repeats
    result["fusion"] = [asdict(row) for row in rows]
    if presets:
        from MedFusionLib.registration import available_backends

        report(f"\n{REGISTRATION_HEADER}")
        registration_rows, load_seconds = benchmark_registration(pair, presets, backends or available_backends(),
                                                                 report=report)
        result["registration"] = [asdict(row) for row in registration_rows]
        result["elastix_load_seconds"] = load_seconds
    return result
