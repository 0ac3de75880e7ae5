"""``medfusion demo``: register and fuse a built-in CT/MR head phantom pair as two scanners give
it, and write the volumes, a fusion figure and the registration's QA picture."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MODEL,
    DEVICE_CHOICES,
    MODEL_CHOICES,
    REGISTRATION_PRESETS,
)

DEMO_FILES = (
    "reference_ct.nii.gz",
    "moving_mr.nii.gz",
    "registered_mr.nii.gz",
    "fused.nii.gz",
    "fusion.png",
    "qa.png",
    "qa.json",
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="Builds a procedural head phantom seen by a CT (Hounsfield units, -2048 outside the "
        "reconstruction circle, the patient table) and by an MRI on another grid with the patient turned 180° "
        "and shifted 30 mm, registers the MR to the CT from the default start (the orientation search), fuses "
        "them, and writes the volumes, a PNG figure and the registration's QA picture. "
        f"The demo's own files in the output directory ({', '.join(DEMO_FILES)}) are replaced on every run.",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("medfusion-demo"),
        help="where to write (default ./medfusion-demo)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=MODEL_CHOICES,
        help=f"fusion model (default {DEFAULT_MODEL}: chosen by the device, see `medfusion models`)",
    )
    parser.add_argument(
        "--registration", choices=REGISTRATION_PRESETS, default="rigid", help="registration preset (default rigid)"
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    return parser


def run(args: argparse.Namespace) -> int:
    # Imported here: `medfusion --help` must not pay for torch and ITK.
    import numpy as np
    import SimpleITK as sitk

    from MedFusionLib.cli.fuse import progress_reporter, report_registration
    from MedFusionLib.evaluation.figures import comparison_figure, save_figure
    from MedFusionLib.fusion.pipeline import fuse_volumes
    from MedFusionLib.imaging.normalization import apply_ct_window
    from MedFusionLib.imaging.phantom import make_clinical_pair
    from MedFusionLib.io import write_image
    from MedFusionLib.io.gate import prepare_input
    from MedFusionLib.registration.qa import write_registration_qa

    started = time.perf_counter()
    out = args.output_dir
    print("building the CT/MR head phantom pair (MR turned 180° and shifted 30 mm) ...", file=sys.stderr)
    phantom = make_clinical_pair()
    reference = prepare_input(phantom.ct, "reference")  # once, for fusion and the QA picture
    show_progress, close_progress = progress_reporter("bar", args.model, args.registration, args.device)
    try:
        result = fuse_volumes(
            reference,
            phantom.mr,
            model=args.model,
            registration=args.registration,
            device=args.device,
            progress=show_progress,
            on_registration=lambda registration: report_registration(registration, "bar"),
        )
    finally:
        close_progress()
    paths = {name: out / name for name in DEMO_FILES}
    write_image(phantom.ct, paths["reference_ct.nii.gz"], overwrite=True)
    write_image(phantom.mr, paths["moving_mr.nii.gz"], overwrite=True)
    write_image(result.registered_moving, paths["registered_mr.nii.gz"], overwrite=True)
    write_image(result.fused, paths["fused.nii.gz"], overwrite=True)
    # The CT as fusion saw it (its window), not by percentiles of raw HU, which wash it out.
    window = DEFAULT_CT_WINDOW
    ct_shown = sitk.GetImageFromArray(
        apply_ct_window(sitk.GetArrayViewFromImage(phantom.ct), window).astype(np.float32)
    )
    ct_shown.CopyInformation(phantom.ct)
    figure = comparison_figure(
        {
            f"CT ({window} window)": ct_shown,
            "MR (registered)": result.registered_moving,
            f"fused ({result.model})": result.fused,
        },
        planes=("axial", "coronal"),
    )
    save_figure(figure, paths["fusion.png"], overwrite=True)
    write_registration_qa(out, reference, result.registration, overwrite=True)
    print("intensities: " + "; ".join(f"{role} {how}" for role, how in result.windows.items()))
    print(f"fused volume: {paths['fused.nii.gz']}")
    print(f"figure:       {paths['fusion.png']}")
    print(f"QA picture:   {paths['qa.png']} (and {paths['qa.json'].name})")
    print(f"demo finished in {time.perf_counter() - started:.1f} s on {result.device} (model {result.model})")
    return 0
