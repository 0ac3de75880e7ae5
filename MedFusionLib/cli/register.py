"""``medfusion register FIXED MOVING -o OUTPUT``: register MOVING onto FIXED's grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import BACKEND_CHOICES, INIT_CHOICES, REGISTRATION_PRESETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "register",
        help=COMMANDS["register"],
        description="Register MOVING to FIXED with mutual information (works across modalities) and write MOVING "
        "resampled on FIXED's grid. Nothing is written when the registration fails its checks (no overlap, "
        "no improvement, implausible transform), or, with --strict, when its result is doubtful.",
    )
    parser.add_argument("fixed", type=Path, help="reference volume: its grid is the output's grid")
    parser.add_argument("moving", type=Path, help="volume to move onto the reference")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="registered moving volume (.nii.gz, .nrrd, .mha, ...)"
    )
    parser.add_argument(
        "--preset",
        choices=REGISTRATION_PRESETS,
        default="rigid",
        help="rigid (default), affine (rigid → affine) or bspline (rigid → affine → B-spline)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto (default: simpleitk for rigid and affine, elastix for bspline when installed), elastix or simpleitk",
    )
    parser.add_argument(
        "--transform",
        type=Path,
        default=None,
        metavar="OUT.tfm",
        help="also save the transform (fixed → moving points) as .tfm or .h5, loadable in Slicer",
    )
    parser.add_argument(
        "--init",
        choices=INIT_CHOICES,
        default="auto",
        help="starting alignment: auto (default: the best of the 24 axis-aligned orientations about the centres "
        "of mass, "
        "for images that overlap), moments (centres of mass), geometry (image centres) or none",
    )
    parser.add_argument(
        "--initial-transform",
        type=Path,
        default=None,
        metavar="IN.tfm",
        help="start from this ITK transform (fixed → moving points) instead of --init",
    )
    parser.add_argument(
        "--fixed-mask", type=Path, default=None, metavar="PATH", help="mask on FIXED's grid (non-zero = compare there)"
    )
    parser.add_argument("--moving-mask", type=Path, default=None, metavar="PATH", help="mask on MOVING's grid")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the metric samples (default 0; same seed, same result)"
    )
    parser.add_argument("--strict", action="store_true", help="a doubtful result is an error: exit 2, nothing written")
    parser.add_argument(
        "--qa",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write qa.png (checkerboard and edge overlay on three planes) and qa.json (figures, confidence) "
        "into DIR",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def run(args: argparse.Namespace) -> int:
    # Imported here: `medfusion --help` needs none of SimpleITK, ITK or torch.
    from MedFusionLib.core.files import refuse_existing_outputs
    from MedFusionLib.io import read_image, write_image
    from MedFusionLib.io.gate import prepare_input
    from MedFusionLib.registration import read_transform, register, write_transform
    from MedFusionLib.registration.qa import QA_FILES, write_registration_qa

    # Refuse before the slow part, not after it.
    qa_files = () if args.qa is None else tuple(args.qa / name for name in QA_FILES)
    refuse_existing_outputs((args.output, args.transform, *qa_files), overwrite=args.overwrite)
    # Through the input gate once: registration and the QA picture use the same prepared scans.
    fixed = prepare_input(args.fixed, "reference", volume=True, scalar=True)
    moving = prepare_input(args.moving, "moving", volume=True, scalar=True)
    result = register(
        fixed,
        moving,
        preset=args.preset,
        backend=args.backend,
        reference_mask=read_image(args.fixed_mask) if args.fixed_mask else None,
        moving_mask=read_image(args.moving_mask) if args.moving_mask else None,
        initializer=read_transform(args.initial_transform) if args.initial_transform else args.init,
        seed=args.seed,
        strict=args.strict,
    )
    confidence = result.confidence
    if confidence is not None and confidence.doubtful:
        print(f"medfusion: warning: {confidence.summary}", file=sys.stderr)
    write_image(result.registered, args.output, overwrite=args.overwrite)
    if args.transform is not None:
        write_transform(result.transform, args.transform, overwrite=args.overwrite)
    if args.qa is not None:
        write_registration_qa(args.qa, fixed, result, overwrite=args.overwrite)
    print(
        f"wrote {args.output}: {result.preset} registration ({result.backend}) in {result.seconds:.1f} s, "
        f"mutual information {-result.metric_before:.3f} -> {-result.metric_after:.3f}"
        + (f"; transform {args.transform}" if args.transform is not None else "")
        + (f"; QA {args.qa}" if args.qa is not None else "")
        + ("" if confidence is None or confidence.doubtful else f"; {confidence.summary}"),
        file=sys.stderr,
    )
    return 0
