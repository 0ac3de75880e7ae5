"""``medfusion batch MANIFEST.csv --out DIR``: fuse a cohort, sharded and resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedFusionLib.cli import COMMANDS
from MedFusionLib.fusion.batch import parse_shard, run_batch
from MedFusionLib.fusion.options import FusionOptions


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch",
        help=COMMANDS["batch"],
        description="Fuse every case of MANIFEST (CSV with columns reference, moving and optionally output; "
        "relative paths start at the manifest's folder) into --out. A failing case is recorded in the "
        "report CSV and the others go on; the exit status is 1 if any case failed. --shard K/N runs every "
        "N-th case starting at K (1-based), e.g. as a Slurm job array; --resume skips cases whose output "
        "an earlier run completed with the same options (verified by hash).",
    )
    parser.add_argument("manifest", type=Path, help="CSV with columns reference, moving[, output]")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--shard", default="1/1", metavar="K/N", help="run shard K of N (default 1/1: all cases)")
    parser.add_argument("--resume", action="store_true", help="skip cases already completed with the same options")
    parser.add_argument("--workers", type=int, default=1, help="cases fused in parallel processes (default 1)")
    parser.add_argument(
        "--format",
        choices=("auto", "dicom"),
        default="auto",
        help="dicom: also write each case's fused volume as a DICOM series folder beside its output "
        "(<output name>_dicom), a new series of the reference's study when the reference is DICOM",
    )
    FusionOptions.add_arguments(parser)
    return parser


def dicom_series_folder(case) -> Path:
    """Where ``--format dicom`` puts a case's series: beside its output, named after it."""
    name = case.output.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return case.output.with_name(f"{name}_dicom")


def write_fused_case_and_dicom(case, options: FusionOptions) -> str:
    """The batch's case writer for ``--format dicom``: the DICOM series first, then the fused volume
    that the completion record hashes, so a case recorded complete has both."""
    from MedFusionLib.fusion.pipeline import fuse_volumes
    from MedFusionLib.io import write_image
    from MedFusionLib.io.dicom_export import write_fusion_as_dicom

    result = fuse_volumes(case.reference, case.moving, options)
    write_fusion_as_dicom(
        result, reference=case.reference, moving=case.moving, fused_directory=dicom_series_folder(case), overwrite=True
    )
    write_image(result.fused, case.output, overwrite=True)
    return result.model


def run(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard)
    options = FusionOptions.from_namespace(args)

    def report(outcome) -> None:
        case = outcome.case
        detail = (
            f": {outcome.error}" if outcome.error else f" ({outcome.seconds:.1f} s)" if outcome.status == "done" else ""
        )
        print(f"case {case.index}: {outcome.status}{detail}", file=sys.stderr, flush=True)

    writer = {"write_case": write_fused_case_and_dicom} if args.format == "dicom" else {}
    summary = run_batch(
        args.manifest, args.out, options, shard=shard, resume=args.resume, workers=args.workers, on_outcome=report,
        **writer,
    )  # fmt: skip
    print(
        f"{summary.count('done')} done, {summary.count('skipped')} skipped, {summary.count('failed')} failed; "
        f"report: {summary.report}"
    )
    return 1 if summary.count("failed") else 0
