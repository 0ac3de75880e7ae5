"""Whole ``medfusion fuse`` on the pairs the input gate changed, before and after (issue 24).

Before the gate, the shared-grid path of ``--registration auto`` prepared each scan twice and ran
the orientation search twice for a pair it then registered (once to check whether the pair is
aligned as stored, once to start the registration), and a CT was recognised and its body mask
made again for the fusion boxes. Pairs (written once into ``--data``, never into the repository):

* ``brats-grid``: BraTS T1 and T2 of one case, co-registered on one grid (``auto``: checked, then
  fused as stored);
* ``brats-grid-turned``: the same T2 turned 180° about the head-foot axis and shifted 30 mm,
  resampled onto the T1's grid (``auto``: checked, found turned, registered rigidly);
* ``large``: the clinical phantom of ``bench_clinical.py`` (CT 512×512×400 int16 HU with padding
  and a table, MR 512×512×80 turned 180° and shifted 30 mm), ``--registration rigid`` as there.

Each command runs under ``/usr/bin/time -v`` in each checkout given (the first is "after"); the
machine is shared, so the checkouts run back to back per pair. Usage::

    git worktree add /tmp/old-gate 1e2436f
    python bench/bench_gate.py --baseline /tmp/old-gate
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clinical import BRATS, REPO, make_pairs, timed, turned  # noqa: E402


def brats_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The two BraTS pairs on the T1's grid (see the module's docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    t1_path, t2_path, turned_path = folder / "t1.nii.gz", folder / "t2.nii.gz", folder / "t2_turned_on_t1_grid.nii.gz"
    if not turned_path.exists():
        t1, t2 = sitk.ReadImage(str(BRATS / "t1.nii.gz")), sitk.ReadImage(str(BRATS / "t2.nii.gz"))
        brain = sitk.GetArrayViewFromImage(t1) > 0
        centre = t1.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(brain).mean(axis=0)[::-1]])
        on_t1_grid = sitk.Resample(turned(t2, centre), t1, sitk.Transform(), sitk.sitkLinear, 0.0, t2.GetPixelID())
        sitk.WriteImage(t1, str(t1_path))
        sitk.WriteImage(t2, str(t2_path))
        sitk.WriteImage(on_t1_grid, str(turned_path))
    return {"brats-grid": (t1_path, t2_path), "brats-grid-turned": (t1_path, turned_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-gate")
    parser.add_argument("--after", type=Path, default=REPO, help="the checkout with the gate (default: this one)")
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout from before the gate")
    parser.add_argument("--pairs", default="brats-grid,brats-grid-turned,large")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout and pair, interleaved")
    parser.add_argument(
        "--after-flags",
        default="--runtime torch",
        help="extra flags for the 'after' checkout's command (default: the torch runtime, as before the gate, so "
        "that the table compares the gate alone)",
    )
    args = parser.parse_args()
    wanted = args.pairs.split(",")
    pairs = brats_pairs(args.data) if BRATS.is_dir() else {}
    if "large" in wanted:
        pairs["large"] = make_pairs(args.data, ("large",))["large"]
    print("| pair | registration | code | wall s | CPU s | peak RSS GiB | exit |")
    print("|---|---|---|---|---|---|---|")
    for name in wanted:
        reference, moving = pairs[name]
        registration = "rigid" if name == "large" else "auto"
        for _ in range(args.repeats):
            for label, checkout, flags in (("before", args.baseline, ""), ("after", args.after, args.after_flags)):
                output = args.data / f"fused_{name}_{label}.nii"
                output.unlink(missing_ok=True)
                command = [sys.executable, "-m", "MedFusionLib", "fuse", str(reference), str(moving), "-o", str(output),
                           "--registration", registration, "--progress", "none", *flags.split()]  # fmt: skip
                seconds, cpu, peak, status, _ = timed(command, checkout)
                print(f"| {name} | {registration} | {label} | {seconds:.1f} | {cpu:.1f} | {peak:.2f} | {status} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
