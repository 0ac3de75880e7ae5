"""``medfusion fuse REFERENCE MOVING -o OUTPUT``: register (optionally) and fuse two images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..devices import DEVICE_CHOICES
from ..errors import InputError, OutputExistsError
from ..geometry import SLICING_AXES
from ..io import read_image, write_image
from ..pipeline import DEFAULT_MODEL, REGISTRATION_CHOICES, fuse_volumes
from ..precision import PRECISION_CHOICES


def parse_window(text: str | None) -> str | tuple[float, float] | None:
    """``"bone"`` -> ``"bone"``; ``"40,80"`` -> ``(40.0, 80.0)`` (level, width in HU)."""
    if text is None or "," not in text:
        return text
    level, width = text.split(",", 1)
    try:
        return float(level), float(width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a CT window is a name or LEVEL,WIDTH in HU, not {text!r}") from None


def progress_reporter(style: str, model: str, registration: str) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A ``progress(stage, done, total)`` callback for :func:`fuse_volumes` and its ``close()``.

    ``bar``: a tqdm bar for fusion and a line when registration starts; ``json``: one JSON object
    per line on stderr, flushed at once, for a parent process (the Slicer module) to parse;
    ``none``: silence.
    """
    bar = None
    announced_registration = False

    def report(stage: str, done: int, total: int) -> None:
        nonlocal bar, announced_registration
        if style == "json":
            print(json.dumps({"stage": stage, "done": done, "total": total}), file=sys.stderr, flush=True)
        elif style == "bar" and stage == "register" and not announced_registration:
            announced_registration = True
            print(f"registering ({registration}) ...", file=sys.stderr)
        elif style == "bar" and stage == "fuse":
            if bar is None:
                bar = tqdm(total=total, desc=f"fusing ({model})", unit="slice", file=sys.stderr)
            bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return report, close


def initial_alignment(args: argparse.Namespace):
    """``--initial-transform`` read as a transform, else the ``--init`` name."""
    if args.initial_transform is None:
        return args.init
    from ..registration import read_transform

    return read_transform(args.initial_transform)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fuse",
        help="fuse a moving image into a reference image",
        description="Fuse MOVING into REFERENCE (3D volumes or 2D images; a DICOM series is a directory). "
        "The output has the reference's geometry; its format follows OUTPUT's extension.",
    )
    parser.add_argument("reference", type=Path, help="reference image: its grid is the output's grid")
    parser.add_argument("moving", type=Path, help="image to fuse into the reference")
    parser.add_argument("-o", "--output", type=Path, required=True, help="fused image (.nii.gz, .nrrd, .mha, .png, ...)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"fusion model (default {DEFAULT_MODEL}; see `medfusion models`)")
    parser.add_argument("--registration", choices=REGISTRATION_CHOICES, default="none", help="register MOVING to REFERENCE first (default none: grids must match)")
    parser.add_argument("--backend", choices=("auto", "elastix", "simpleitk"), default="auto", help="registration backend")
    parser.add_argument("--init", choices=("auto", "moments", "geometry", "none"), default="auto", help="registration's starting alignment: auto (centres of mass when the images overlap), moments, geometry (image centres) or none")
    parser.add_argument("--initial-transform", type=Path, default=None, metavar="IN.tfm", help="start registration from this ITK transform (reference -> moving points) instead of --init")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto: CUDA when usable)")
    parser.add_argument("--axis", choices=SLICING_AXES, default="axial", help="slicing plane for 3D fusion")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default 1 on the CPU, 32 on CUDA)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto (fp16 on CUDA, fp32 on the CPU), fp32, bf16 (fast only on CPUs with AMX/AVX512-BF16) or fp16 (CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays off only over many volumes)")
    parser.add_argument("--reference-window", type=parse_window, default=None, metavar="WINDOW", help="CT window for a CT reference: brain, bone, soft-tissue, ... or LEVEL,WIDTH")
    parser.add_argument("--moving-window", type=parse_window, default=None, metavar="WINDOW", help="CT window for a CT moving image")
    parser.add_argument("--reference-series", default=None, metavar="UID", help="DICOM SeriesInstanceUID when REFERENCE holds several series")
    parser.add_argument("--moving-series", default=None, metavar="UID", help="DICOM SeriesInstanceUID when MOVING holds several series")
    parser.add_argument("--save-registered", type=Path, default=None, metavar="PATH", help="also write the moving image resampled on the reference grid")
    parser.add_argument("--save-transform", type=Path, default=None, metavar="PATH", help="also write the registration transform (.tfm or .h5)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar",
        help="progress on stderr: a bar (default), one JSON object per line for programs "
        '({"stage": "fuse", "done": 12, "total": 80}), or none',
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # Refuse before the slow part, not after it.
    if args.save_transform is not None and args.registration == "none":
        raise InputError("--save-transform needs a registration (--registration rigid, affine or bspline)")
    for path in (args.output, args.save_registered, args.save_transform):
        if path is not None and path.exists() and not args.overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    reference = read_image(args.reference, series_uid=args.reference_series)
    moving = read_image(args.moving, series_uid=args.moving_series)

    show_progress, close_progress = progress_reporter(args.progress, args.model, args.registration)
    try:
        result = fuse_volumes(
            reference,
            moving,
            model=args.model,
            registration=args.registration,
            registration_backend=args.backend,
            registration_initializer=initial_alignment(args),
            device=args.device,
            axis=args.axis,
            batch_size=args.batch_size,
            precision=args.precision,
            threads=args.threads,
            compile=args.compile,
            reference_window=args.reference_window,
            moving_window=args.moving_window,
            progress=show_progress,
        )
    finally:
        close_progress()
    write_image(result.fused, args.output, overwrite=args.overwrite)
    if args.save_registered is not None:
        write_image(result.registered_moving, args.save_registered, overwrite=args.overwrite)
    if args.save_transform is not None and result.registration is not None:
        from ..registration import write_transform

        write_transform(result.registration.transform, args.save_transform, overwrite=args.overwrite)
    fused = result.fused
    print(
        f"wrote {args.output}: size {fused.GetSize()}, spacing {tuple(round(s, 4) for s in fused.GetSpacing())} "
        f"(model {result.model}, {result.device}, {result.precision}, {result.fused_slices} slices fused, "
        f"{result.seconds:.1f} s of which fusion {result.stage_seconds.get('fuse', 0.0):.1f} s)"
    )
    return 0
