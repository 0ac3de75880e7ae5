"""Apply-to-fused-node time of the Slicer panel's path, and the size and cost of its temporary files.

Runs the code the panel runs, without Qt: the BraTS T1 (reference) and T2 (moving) are loaded into
a real MRML scene (slicer-core) with Slicer's reader, then ``FusionLogic.startJob`` (writes the
inputs, sends the job to the warm worker) -> ``FusionJob.poll`` until finished (what the panel's
timer does, every 0.2 s) -> ``FusionLogic.finishJob`` (reads the results, creates/updates the
nodes). Timed from the call to startJob to finishJob's return, as the user sees it from pressing
Apply to the fused volume in the views (the views' redraw excluded).

* run 1: the first Apply of a session; the worker is started by it (imports torch, and with
  ``--backend elastix`` loads itk-elastix: the costs every Apply paid before the worker was kept warm);
* run 2, 3, ...: the next Applies on the same worker;
* entered: a worker started at module entry and ready (torch imported) before Apply.

For comparison, "before": each Apply a new ``medfusion fuse`` process, as the panel ran it
before the warm worker (the same options, the same import into the scene).

Then the temporary files: uncompressed NRRD (what the worker exchanges) against gzip NRRD and
gzip NIfTI, for the two inputs and the fused output: bytes, write and read seconds.

    python bench/bench_slicer_worker.py [--case DIR] [--registration rigid] [--backend elastix] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "MedFusion"))
DEFAULT_CASE = REPO_ROOT.parent / "shared" / "data" / "brats" / "TCGA-DU-7294"


def apply_once(logic, reference, moving, options) -> tuple[float, object, dict]:
    """One Apply through the panel's calls; returns seconds, the nodes and the worker's report."""
    started = time.perf_counter()
    job = logic.startJob(reference, moving, options=options)
    try:
        while job.state == "running":
            job.poll(block_s=0.2)  # the panel's timer
        if job.state != "succeeded":
            raise SystemExit(f"the run failed: {job.error}")
        nodes = logic.finishJob(job)
    finally:
        job.cleanup()
    return time.perf_counter() - started, nodes, job.report


def apply_per_process(logic, reference, moving, options) -> tuple[float, dict]:
    """One Apply the way the panel ran it before the warm worker: a new ``python -m MedFusionLib
    fuse`` process per Apply (raw NRRD inputs, gzip NRRD outputs, its default), then the same
    import into the scene. Returns seconds and the sizes of the files exchanged."""
    import subprocess

    from MedFusionLib.io import read_image, write_image
    from MedFusionSlicer.volumes import image_from_volume_node

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="MedFusion-bench-") as name:
        folder = Path(name)
        write_image(image_from_volume_node(reference), folder / "reference.nrrd", compress=False)
        write_image(image_from_volume_node(moving), folder / "moving.nrrd", compress=False)
        command = [sys.executable, "-m", "MedFusionLib", "fuse", str(folder / "reference.nrrd"),
                   str(folder / "moving.nrrd"), "-o", str(folder / "fused.nrrd"), *options.to_argv(),
                   "--progress", "json", "--save-registered", str(folder / "registered.nrrd"),
                   "--save-transform", str(folder / "transform.h5")]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"medfusion fuse failed: {result.stderr[-2000:]}")
        fused, registered = read_image(folder / "fused.nrrd"), read_image(folder / "registered.nrrd")
        logic._storeResults(reference.GetScene(), reference, moving, None, options, fused, registered,
                            folder / "transform.h5")  # fmt: skip
        sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
    return time.perf_counter() - started, sizes


def file_costs(image, folder: Path) -> list[tuple[str, int, float, float]]:
    """(format, bytes, write s, read s) of ``image`` as raw NRRD, gzip NRRD and gzip NIfTI."""
    from MedFusionLib.io import read_image, write_image

    rows = []
    for label, name, compress in (
        ("NRRD raw", "x.nrrd", False),
        ("NRRD gzip", "y.nrrd", True),
        ("NIfTI gzip", "z.nii.gz", True),
    ):
        path = folder / name
        started = time.perf_counter()
        write_image(image, path, overwrite=True, compress=compress)
        written = time.perf_counter() - started
        started = time.perf_counter()
        read_image(path)
        rows.append((label, path.stat().st_size, written, time.perf_counter() - started))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="folder with t1.nii.gz and t2.nii.gz")
    parser.add_argument("--registration", default="rigid")
    parser.add_argument(
        "--backend", default="auto", help="registration backend (auto: SimpleITK for rigid; elastix pays its load once)"
    )
    parser.add_argument("--runs", type=int, default=3, help="Applies on the same worker (the first starts it)")
    parser.add_argument("--model", default="emfusion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-wait", type=float, default=60.0, help="seconds an 'entered' worker may take to start")
    args = parser.parse_args()

    import slicer

    from MedFusionSlicer.choices import make_options
    from MedFusionSlicer.logic import FusionLogic
    from MedFusionSlicer.volumes import image_from_volume_node, load_volume_node

    scene = slicer.vtkMRMLScene()
    reference = load_volume_node(scene, args.case / "t1.nii.gz", "T1")
    moving = load_volume_node(scene, args.case / "t2.nii.gz", "T2")
    options = make_options(registration=args.registration, backend=args.backend, model=args.model, device=args.device)
    print(f"case {args.case.name}: {reference.GetImageData().GetDimensions()} voxels, options {options.to_argv()}\n")

    rows = []
    before_sizes = {}
    for run in (1, 2):
        seconds, before_sizes = apply_per_process(FusionLogic(), reference, moving, options)
        rows.append((f"before: a new `medfusion fuse` process per Apply, run {run}", seconds, {}))
    logic = FusionLogic()
    try:
        for run in range(1, args.runs + 1):
            label = "run 1 (worker started by this Apply)" if run == 1 else f"run {run} (same worker)"
            seconds, nodes, report = apply_once(logic, reference, moving, options)
            rows.append((label, seconds, report))
    finally:
        logic.stopWorker()
    entered = FusionLogic()
    try:
        worker = entered.startWorker(cpu_only=args.device == "cpu")
        deadline = time.monotonic() + args.warm_wait
        warmed = False
        while time.monotonic() < deadline and not warmed:  # until torch is imported (the "ready" event)
            warmed = any(line is not None and '"event": "ready"' in line for line in worker.take_lines(block_s=0.5))
        seconds, nodes, report = apply_once(entered, reference, moving, options)
        rows.append(("entered (worker warmed at module entry)", seconds, report))
    finally:
        entered.stopWorker()

    print("| Apply | Apply -> fused node (s) | in the worker: register (s) | fuse (s) | whole fuse_volumes (s) |")
    print("|---|---|---|---|---|")
    for label, seconds, report in rows:
        stages = report.get("stage_seconds", {})
        inside = (f"{stages.get('register', 0):.1f} | {stages.get('fuse', 0):.1f} | {report.get('seconds', 0):.1f}"
                  if report else "| |")  # fmt: skip
        print(f"| {label} | {seconds:.1f} | {inside} |")
    print("\ntemporary files per Apply, before (MiB): "
          + ", ".join(f"{name} {size / 2**20:.1f}" for name, size in sorted(before_sizes.items())))  # fmt: skip
    if nodes.registration is not None:
        print(f"\nregistration: {nodes.registration.text()}")

    print("\n| file | format | MB | write (s) | read (s) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="MedFusion-bench-") as folder:
        for name, image in (("reference (T1)", image_from_volume_node(reference)),
                            ("moving (T2)", image_from_volume_node(moving)),
                            ("fused", image_from_volume_node(nodes.fusedNode))):  # fmt: skip
            for label, size, written, read in file_costs(image, Path(folder)):
                print(f"| {name} | {label} | {size / 2**20:.1f} | {written:.2f} | {read:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
