"""Time and peak memory of functional colour fusion and the source map on a large volume.

A 512×512×400 int16 MR-like reference (the phantom head, rendered coarse and resampled linearly,
as ``bench_fusion.py --large`` does) and the phantom's PET on its own 4 mm grid; three whole
``medfusion fuse`` runs, each in a fresh child process (its own peak RSS), outputs as
uncompressed NRRD:

- grey: ``--registration resample`` (the PET fused as a scalar volume, the baseline);
- colour: ``--functional harvard-pet --registration resample``;
- colour + source map: the same with ``--source-map``.

``--model average`` (the default) measures what the functional path and the source map add
around the network; ``--model emfusion`` the whole run as a user has it.

    python bench/bench_functional.py [--model average] [--size 512,512,400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_fusion import make_large_pair  # this folder is on sys.path when a bench script runs

from MedFusionLib.imaging.functional_phantom import make_functional_phantom

# A child process that runs the CLI, then prints its own peak resident memory (KiB on Linux).
_CHILD = (
    "import resource, sys; from MedFusionLib.cli import main; code = main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
)


def run(arguments: list[str]) -> tuple[float, float, str]:
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", _CHILD, *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"medfusion {' '.join(arguments)} failed:\n{completed.stderr}")
    peak = next(line for line in completed.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return seconds, int(peak.split()[1]) / 2**20, completed.stdout.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="average")
    parser.add_argument("--size", default="512,512,400", help="reference voxels x,y,z (0.45 mm)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split(","))
    spacing = tuple(230.0 / size[0] for _ in range(2)) + (190.0 / size[2],)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        reference = make_large_pair(folder, size, spacing)[1]  # the MR of bench_fusion's large pair
        pet_path = folder / "pet.nii.gz"
        sitk.WriteImage(make_functional_phantom("pet", seed=4), str(pet_path))
        made = time.perf_counter() - started
        print(f"made a {'×'.join(map(str, size))} int16 reference and a 4 mm PET in {made:.0f} s")
        common = [str(reference), str(pet_path), "--model", args.model, "--registration", "resample"]
        common += ["--progress", "none"]
        runs = {
            "grey (scalar fusion of the PET)": [],
            "colour (--functional harvard-pet)": ["--functional", "harvard-pet"],
            "colour + --source-map": ["--functional", "harvard-pet", "--source-map", str(folder / "share.nrrd")],
        }
        for name, extra in runs.items():
            output = folder / f"fused-{len(rows)}.nrrd"
            seconds, peak_gib, line = run(["fuse", *common, "-o", str(output), *extra])
            rows.append(
                {
                    "run": name,
                    "seconds": round(seconds, 1),
                    "peak_gib": round(peak_gib, 2),
                    "output_mib": round(output.stat().st_size / 2**20),
                }
            )
            print(f"  {name}: {line}", flush=True)
    voxels = int(np.prod(size))
    print(
        f"\n{'×'.join(map(str, size))} reference ({2 * voxels / 2**30:.2f} GiB int16), PET 64×64×52 at 4 mm, "
        f"model {args.model}, whole `medfusion fuse` per row (read, resample, fuse, write):\n"
    )
    print("| run | s | peak RSS GiB | output MiB |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['seconds']} | {row['peak_gib']} | {row['output_mib']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
