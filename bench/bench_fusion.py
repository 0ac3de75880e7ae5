"""Fusion speed and memory: the naive whole-slice loop against the product path, and large volumes.

Default: ``medfusion benchmark`` with the same options (every shipped model, naive vs product,
in one process, on the shared BraTS T1/T2 case or a 240×240×155 phantom; registration per preset
and backend), printed as Markdown tables. See :mod:`MedFusionLib.devtools.benchmark` for what each figure
means.

``--large``: peak memory of a whole ``medfusion fuse`` of two 512×512×400 volumes (int16, 0.5 mm,
a CT-like and an MR-like rendering of the head phantom), run as a child process so its peak
resident set is its own (``getrusage`` of the child); the two inputs alone are 400 MiB and the
float32 output 400 MiB. Usage::

    python bench/bench_fusion.py                                   # the benchmark tables
    python bench/bench_fusion.py --models emfusion --precisions bf16 --registration none
    python bench/bench_fusion.py --large --large-model emfusion    # the memory run (minutes)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib.cli import main as medfusion_main
from MedFusionLib.imaging.phantom import make_head_phantom

LARGE_SIZE = (512, 512, 400)
LARGE_SPACING = (0.5, 0.5, 0.6)


def make_large_pair(folder: Path, size=LARGE_SIZE, spacing=LARGE_SPACING) -> tuple[Path, Path]:
    """Two int16 NIfTI volumes of ``size`` voxels: the phantom rendered at 4× coarser voxels,
    then linearly resampled onto the fine grid (rendering 100 M voxels directly takes far longer)."""
    coarse_size = tuple(max(8, s // 4) for s in size)
    coarse_spacing = tuple(sp * s / c for sp, s, c in zip(spacing, size, coarse_size))
    phantom = make_head_phantom(size=coarse_size, spacing=coarse_spacing, seed=4)
    fine = sitk.Image(size, sitk.sitkInt16)
    fine.SetSpacing(spacing)
    fine.SetOrigin(phantom.ct.GetOrigin())
    paths = []
    for name, image, background in (("ct", phantom.ct, -1000.0), ("mr", phantom.mr, 0.0)):
        resampled = sitk.Resample(image, fine, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkInt16)
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(resampled, str(path))
        paths.append(path)
    return paths[0], paths[1]


def large_volume_run(model: str) -> dict:
    """``medfusion fuse`` of the two large volumes in a child process: wall seconds, its peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        ct, mr = make_large_pair(folder)
        print(f"made two {'×'.join(map(str, LARGE_SIZE))} int16 volumes in {time.perf_counter() - started:.0f} s",
              flush=True)
        command = [sys.executable, "-m", "MedFusionLib", "fuse", str(ct), str(mr), "-o", str(folder / "fused.nii.gz"),
                   "--model", model, "--reference-window", "brain", "--progress", "none"]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            raise SystemExit(f"medfusion fuse failed:\n{completed.stderr}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # KiB on Linux
        voxels = int(np.prod(LARGE_SIZE))
        return {"size": "×".join(map(str, LARGE_SIZE)), "model": model, "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak_mib), "inputs_mib": round(2 * 2 * voxels / 2**20),
                "output_mib": round(4 * voxels / 2**20), "stdout": completed.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --large, every option is passed on to `medfusion benchmark` (see its --help).",
    )
    parser.add_argument("--large", action="store_true", help="instead: peak memory of fusing two 512×512×400 volumes")
    parser.add_argument("--large-model", default="emfusion")
    parser.add_argument("--json", type=Path, default=None, help="with --large: also write the figures as JSON")
    args, benchmark_options = parser.parse_known_args()
    if not args.large:
        raise SystemExit(medfusion_main(["benchmark", *benchmark_options] + (["--json",
                                                                              str(args.json)] if args.json else [])))
    if benchmark_options:
        parser.error(f"--large takes only --large-model and --json, not {' '.join(benchmark_options)}")
    result = large_volume_run(args.large_model)
    print(f"| volumes | model | seconds | peak RSS MiB | inputs MiB | output MiB |\n|---|---|---|---|---|---|\n"
          f"| 2 × {result['size']} int16 | {result['model']} | {result['seconds']} | {result['peak_rss_mib']} | "
          f"{result['inputs_mib']} | {result['output_mib']} |\n{result['stdout']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
