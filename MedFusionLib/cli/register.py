"""``medfusion register FIXED MOVING -o OUTPUT``: register MOVING onto FIXED's grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedFusionLib.core.files import refuse_existing_outputs
from MedFusionLib.io import read_image, write_image


def add_parser(subparsers) -> argparse.ArgumentParser:
    from MedFusionLib.registration import BACKENDS, INITIALIZERS, PRESETS

    parser = subparsers.add_parser(
        "register",
        help="register a moving image to a fixed (reference) image",
        description="Register MOVING to FIXED with mutual information (works across modalities) and write MOVING "
        "resampled on FIXED's grid. Nothing is written when the registration fails its checks (no overlap, "
        "no improvement, implausible transform).",
    )
    parser.add_argument("fixed", type=Path, help="reference volume: its grid is the output's grid")
    parser.add_argument("moving", type=Path, help="volume to move onto the reference")
    parser.add_argument("-o", "--output", type=Path, required=True, help="registered moving volume (.nii.gz, .nrrd, .mha, ...)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="rigid", help="rigid (default), affine (rigid → affine) or bspline (rigid → affine → B-spline)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto (elastix when installed, default), elastix or simpleitk")
    parser.add_argument("--transform", type=Path, default=None, metavar="OUT.tfm", help="also save the transform (fixed → moving points) as .tfm or .h5, loadable in Slicer")
    parser.add_argument("--init", choices=INITIALIZERS, default="auto", help="starting alignment: auto (centres of mass, only for images that overlap; default), moments, geometry (image centres) or none")
    parser.add_argument("--initial-transform", type=Path, default=None, metavar="IN.tfm", help="start from this ITK transform (fixed → moving points) instead of --init")
    parser.add_argument("--fixed-mask", type=Path, default=None, metavar="PATH", help="mask on FIXED's grid (non-zero = compare there)")
    parser.add_argument("--moving-mask", type=Path, default=None, metavar="PATH", help="mask on MOVING's grid")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the metric samples (default 0; same seed, same result)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def run(args: argparse.Namespace) -> int:
    from MedFusionLib.registration import read_transform, register, write_transform

    # Refuse before the slow part, not after it.
    refuse_existing_outputs((args.output, args.transform), overwrite=args.overwrite)
    fixed = read_image(args.fixed)
    moving = read_image(args.moving)
    result = register(
        fixed,
        moving,
        preset=args.preset,
        backend=args.backend,
        reference_mask=read_image(args.fixed_mask) if args.fixed_mask else None,
        moving_mask=read_image(args.moving_mask) if args.moving_mask else None,
        initializer=read_transform(args.initial_transform) if args.initial_transform else args.init,
        seed=args.seed,
    )
    write_image(result.registered, args.output, overwrite=args.overwrite)
    if args.transform is not None:
        write_transform(result.transform, args.transform, overwrite=args.overwrite)
    print(
        f"wrote {args.output}: {result.preset} registration ({result.backend}) in {result.seconds:.1f} s, "
        f"mutual information {-result.metric_before:.3f} -> {-result.metric_after:.3f}"
        + (f"; transform {args.transform}" if args.transform is not None else ""),
        file=sys.stderr,
    )
    return 0
