"""Torch against the CPU runtimes (OpenVINO, ONNX Runtime): per volume in one process, and whole commands.

``volume`` (default): the product path (:func:`~MedFusionLib.fusion.pipeline.fuse_arrays` with
:class:`~MedFusionLib.fusion.engine.SliceFuser` on a network from
:func:`~MedFusionLib.runtimes.load_network`, as ``medfusion fuse`` runs it) on the shared BraTS
T1/T2 pair (240×240×155, co-registered), for each model on each runtime in one process. The
networks are loaded and warmed up first (load seconds shown apart), then timed in rounds (torch,
openvino, onnxruntime, torch, ...), so a shared machine's changing load touches each alike; each
figure is the fastest of ``--repeats``. Per runtime: seconds per volume, its speed-up over torch
(torch's time / its time, the same round structure) and the largest |Δ| from torch's fused volume.

``slice``: one whole middle BraTS slice per call (no boxes, no slices side by side), each runtime
with ``--threads`` threads on that one call (default 1 and 2; one OpenVINO stream, one ONNX
Runtime session), the fastest of ``--repeats`` × 10 calls after a
warm-up: what a runtime does with one core against two cores on one slice.

``command``: the whole ``medfusion fuse REF MOV -o OUT`` per runtime, each in a fresh process
under ``/usr/bin/time -v`` (wall seconds, peak resident set), alternating runtimes for
``--repeats`` rounds; the fusion seconds are read from the command's last line. ``--pair brats``:
the BraTS T1/T2 without registration; ``--pair clinical``: the clinical phantom of
``bench/bench_clinical.py`` (CT 512×512×400 int16 HU and a T2-like MR 512×512×400 turned 180° and
shifted 30 mm; written once into ``--data``), registered rigidly. Usage::

    python bench/bench_runtimes.py volume --repeats 3
    python bench/bench_runtimes.py slice --models emfusion,haf
    python bench/bench_runtimes.py command --pair brats --repeats 3
    python bench/bench_runtimes.py command --pair clinical --repeats 1
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

MODELS = ("emfusion", "emfusion-full", "haf", "haf-full", "densefuse")
CASE = "TCGA-DU-7294"


def brats_pair(case: str = CASE) -> tuple[Path, Path]:
    from MedFusionLib.devtools.shared_data import shared_data_dir

    folder = shared_data_dir() / "brats" / case
    return folder / "t1.nii.gz", folder / "t2.nii.gz"


def volume_table(models, runtimes, repeats: int, precision: str = "auto", threads: int | None = None) -> None:
    """Print the per-volume table (see the module docstring)."""
    import SimpleITK as sitk

    from MedFusionLib.devtools.benchmark import _product_fuse
    from MedFusionLib.fusion.engine import SliceFuser
    from MedFusionLib.runtimes import load_network

    t1, t2 = brats_pair()
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(t1)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(t2)))
    middle = slice(len(a) // 2, len(a) // 2 + 1)
    baseline = runtimes[0]
    print(f"BraTS {CASE} T1/T2 {'×'.join(map(str, a.shape[::-1]))}, product path, fastest of {repeats} round(s); "
          f"speed-up and max |Δ| against {baseline} in the same process\n")
    print("| model | runtime | precision | load s | s / volume | speed-up | max abs diff | slices fused |")
    print("|---|---|---|---|---|---|---|---|")
    for model in models:
        fusers, loads = {}, {}
        for runtime in runtimes:
            started = time.perf_counter()
            fusers[runtime] = SliceFuser(load_network(model, runtime, "cpu", precision, threads))
            loads[runtime] = time.perf_counter() - started
            _product_fuse(fusers[runtime], a[middle], b[middle])  # warm-up
        best = dict.fromkeys(runtimes, float("inf"))
        difference = dict.fromkeys(runtimes, 0.0)
        slices = {}
        for _ in range(repeats):
            reference = None
            for runtime in runtimes:
                started = time.perf_counter()
                fused, slices[runtime] = _product_fuse(fusers[runtime], a, b)
                best[runtime] = min(best[runtime], time.perf_counter() - started)
                if reference is None:
                    reference = fused
                difference[runtime] = max(difference[runtime], float(np.abs(fused - reference).max()))
        for runtime in runtimes:
            print(f"| {model} | {fusers[runtime].network.describe().split(' on ')[0]} | {fusers[runtime].precision} "
                  f"| {loads[runtime]:.2f} | {best[runtime]:.2f} | {best[baseline] / best[runtime]:.2f}× "
                  f"| {difference[runtime]:.1e} | {slices[runtime]} |", flush=True)


def one_slice_network(model: str, runtime: str, threads: int):
    """``model`` on ``runtime`` with all ``threads`` on one call (one stream, one session)."""
    from MedFusionLib.core.model_files import verified_onnx
    from MedFusionLib.runtimes import load_network

    if runtime == "torch":
        return load_network(model, "torch", "cpu", "fp32", threads)
    path, geometry = verified_onnx(model)
    if runtime == "openvino":
        from MedFusionLib.runtimes.openvino_network import OpenVINONetwork

        return OpenVINONetwork(model, path, geometry, "fp32", threads, streams=1)
    from MedFusionLib.runtimes.onnxruntime_network import OnnxRuntimeNetwork

    return OnnxRuntimeNetwork(model, path, geometry, threads=threads, streams=1)


def slice_table(models, runtimes, repeats: int, thread_counts) -> None:
    """Print the single-slice table (see the module docstring)."""
    import SimpleITK as sitk

    t1, t2 = brats_pair()
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(t1))).astype(np.float32)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(t2))).astype(np.float32)
    middle = len(a) // 2
    a, b = (stack[middle : middle + 1] / stack[middle].max() for stack in (a, b))
    print(f"one whole {a.shape[2]}×{a.shape[1]} BraTS slice per call, fastest of {repeats * 10} calls; "
          f"× = {runtimes[0]}'s time / the runtime's at the same thread count\n")
    print("| model | threads | " + " | ".join(f"{runtime} ms" for runtime in runtimes) + " |")
    print("|---|---|" + "---|" * len(runtimes))
    for model in models:
        for threads in thread_counts:
            best = {}
            for runtime in runtimes:
                network = one_slice_network(model, runtime, threads)
                with network.running(threads):
                    network.fuse(a, b)  # warm-up
                    best[runtime] = float("inf")
                    for _ in range(repeats * 10):
                        started = time.perf_counter()
                        network.fuse(a, b)
                        best[runtime] = min(best[runtime], time.perf_counter() - started)
            cells = [f"{1e3 * best[r]:.1f} ({best[runtimes[0]] / best[r]:.2f}×)" for r in runtimes]
            print(f"| {model} | {threads} | " + " | ".join(cells) + " |", flush=True)


def timed_command(command: list[str]) -> tuple[float, float, float, int, str]:
    """``(wall s, peak RSS GiB, CPU s, exit status, last output line)`` of ``command`` in a fresh process."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        completed = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *command], cwd=REPO,
                                   capture_output=True, text=True)
        text = report.read()
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", text)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 2**20
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", text).group(1)) for kind in ("User", "System"))
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("wrote ")]
    if completed.returncode != 0:
        lines = [completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else ""]
    return seconds, peak, cpu, completed.returncode, lines[-1] if lines else ""


def command_table(pair: str, runtimes, repeats: int, data: Path, extra: list[str]) -> None:
    """Print the whole-command table (see the module docstring)."""
    if pair == "brats":
        reference, moving = brats_pair()
        flags = ["--registration", "none"]
    else:
        from bench_clinical import make_pairs

        reference, moving = make_pairs(data, ("large400",))["large400"]
        flags = ["--registration", "rigid"]
    print(f"`medfusion fuse {reference.name} {moving.name} -o OUT {' '.join(flags + extra)} --runtime R`, "
          f"each a fresh process, fastest wall of {repeats} (runtimes alternating)\n")
    print("| runtime | wall s | fusion s | wall − fusion | CPU s | peak RSS GiB | exit | output |")
    print("|---|---|---|---|---|---|---|---|")
    best: dict[str, tuple] = {}
    for _ in range(repeats):
        for runtime in runtimes:
            output = data / f"fused_{pair}_{runtime}.nii.gz"
            output.unlink(missing_ok=True)
            command = [sys.executable, "-m", "MedFusionLib", "fuse", str(reference), str(moving), "-o", str(output),
                       *flags, "--runtime", runtime, "--progress", "none", *extra]
            result = timed_command(command)
            if runtime not in best or result[0] < best[runtime][0]:
                best[runtime] = result
    for runtime in runtimes:
        seconds, peak, cpu, status, last = best[runtime]
        fusion = re.search(r"of which fusion ([\d.]+) s", last)
        fusion_seconds = float(fusion.group(1)) if fusion else float("nan")
        print(f"| {runtime} | {seconds:.1f} | {fusion_seconds:.1f} | {seconds - fusion_seconds:.1f} | {cpu:.1f} "
              f"| {peak:.2f} | {status} | {last[:160]} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="volume", choices=("volume", "slice", "command"))
    parser.add_argument("--models", default=",".join(MODELS), help="volume: comma-separated models")
    parser.add_argument("--runtimes", default="torch,openvino,onnxruntime",
                        help="comma-separated; the first is the baseline (default torch,openvino,onnxruntime)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="volume: the precision of every runtime's network")
    parser.add_argument("--threads", type=int, default=None,
                        help="volume: each runtime's CPU threads; slice: this count only (default 1 and 2)")
    parser.add_argument("--pair", default="brats", choices=("brats", "clinical"), help="command: which pair")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-clinical",
                        help="command: where the clinical phantom and the outputs are written")
    parser.add_argument("--extra", default="", help="command: more flags for medfusion fuse")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    if args.what == "volume":
        volume_table(args.models.split(","), runtimes, args.repeats, args.precision, args.threads)
    elif args.what == "slice":
        slice_table(args.models.split(","), runtimes, args.repeats, [args.threads] if args.threads else [1, 2])
    else:
        args.data.mkdir(parents=True, exist_ok=True)
        command_table(args.pair, runtimes, args.repeats, args.data, args.extra.split())


if __name__ == "__main__":
    main()
