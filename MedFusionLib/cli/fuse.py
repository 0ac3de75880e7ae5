"""``medfusion fuse REFERENCE MOVING -o OUTPUT``: register (optionally) and fuse two images."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import PROGRESS_CHOICES
from MedFusionLib.core.errors import InputError
from MedFusionLib.fusion.options import FusionOptions


def progress_reporter(
    style: str, model: str, registration: str, device: str = "auto"
) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A ``progress(stage, done, total)`` callback for :func:`fuse_volumes` and its ``close()``.

    ``bar``: a tqdm bar for fusion and a line when registration starts; ``json``: one JSON object
    per line on stderr, flushed at once, for a parent process (the Slicer module) to parse;
    ``none``: silence. The bar names the network that runs: model ``auto`` resolved on ``device``.
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
                from MedFusionLib.fusion.pipeline import resolve_model  # fusion has begun: torch is loaded

                label = resolve_model(model, device, warn=False)
                bar = tqdm(total=total, desc=f"fusing ({label})", unit="slice", file=sys.stderr)
            bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return report, close


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fuse",
        help=COMMANDS["fuse"],
        description="Fuse MOVING into REFERENCE (3D volumes or 2D images; a DICOM series is a directory). "
        "The output has the reference's geometry; its format follows OUTPUT's extension.",
    )
    parser.add_argument("reference", type=Path, help="reference image: its grid is the output's grid")
    parser.add_argument("moving", type=Path, help="image to fuse into the reference")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="fused image (.nii.gz, .nrrd, .mha, .png, ...), or with --format dicom the series folder to create",
    )
    parser.add_argument(
        "--format",
        choices=("auto", "dicom"),
        default="auto",
        help="auto (default): each output's format follows its extension; dicom: OUTPUT, --save-registered and "
        "--source-map are DICOM series folders, new series of the reference's study when it was read from DICOM",
    )
    for field, example in (("name", "Doe^Jane"), ("id", "12345"), ("birth-date", "YYYYMMDD"), ("sex", "M, F or O")):
        parser.add_argument(
            f"--patient-{field}",
            default="",
            metavar=example.upper() if field != "name" else "FAMILY^GIVEN",
            help=f"with --format dicom and a reference that is not DICOM: the new study's patient {field} "
            f"(e.g. {example}); default empty",
        )
    FusionOptions.add_arguments(parser)
    parser.add_argument(
        "--reference-series",
        default=None,
        metavar="UID",
        help="DICOM SeriesInstanceUID when REFERENCE holds several series",
    )
    parser.add_argument(
        "--moving-series", default=None, metavar="UID", help="DICOM SeriesInstanceUID when MOVING holds several series"
    )
    parser.add_argument(
        "--save-registered",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the moving image resampled on the reference grid",
    )
    parser.add_argument(
        "--save-transform",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the registration transform (.tfm or .h5)",
    )
    parser.add_argument(
        "--source-map",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the source map: per voxel, the moving image's share of the fused value (float 0-1, "
        "0 = reference, 1 = moving, 0.5 = either), on the reference grid",
    )
    parser.add_argument(
        "--qa",
        type=Path,
        default=None,
        metavar="DIR",
        help="write QA pictures of the registration into DIR: qa.png (checkerboard and edge overlay of reference vs "
        "registered moving on three planes) and qa.json (its figures and confidence)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--progress",
        choices=PROGRESS_CHOICES,
        default="bar",
        help="progress on stderr: a bar (default), one JSON object per line for programs "
        '({"stage": "fuse", "done": 12, "total": 80}), or none',
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `medfusion --help` and argument errors need neither torch nor ITK.
    from MedFusionLib.core.files import refuse_existing_outputs
    from MedFusionLib.fusion.pipeline import fuse_volumes
    from MedFusionLib.io import write_image
    from MedFusionLib.io.gate import prepare_input
    from MedFusionLib.registration.qa import QA_FILES

    options = FusionOptions.from_namespace(args)
    # Refuse before the slow part, not after it.
    if options.registration in ("none", "resample") and (args.save_transform is not None or args.qa is not None):
        flag = "--save-transform" if args.save_transform is not None else "--qa"
        raise InputError(f"{flag} needs a registration (--registration auto, rigid, affine or bspline)")
    dicom_output = dicom_output_request(args) if args.format == "dicom" else None
    qa_files = () if args.qa is None else tuple(args.qa / name for name in QA_FILES)
    refuse_existing_outputs(
        (args.output, args.save_registered, args.save_transform, args.source_map, *qa_files), overwrite=args.overwrite
    )
    # Through the input gate once: fusion and the QA picture use the same prepared scans.
    reference = prepare_input(args.reference, "reference", series_uid=args.reference_series)
    moving = prepare_input(args.moving, "moving", series_uid=args.moving_series)

    show_progress, close_progress = progress_reporter(
        args.progress, options.model, options.registration, options.device
    )
    try:
        result = fuse_volumes(
            reference,
            moving,
            options,
            progress=show_progress,
            source_map=args.source_map is not None,
            # Said as soon as registration ends: a doubtful alignment is news before a long fusion.
            on_registration=lambda registration: report_registration(registration, args.progress),
        )
    finally:
        close_progress()
    if (args.save_transform is not None or args.qa is not None) and result.registration is None:
        raise InputError(
            "--save-transform/--qa: no registration ran (with --registration auto, images on one voxel grid are "
            "taken as aligned); pass --registration rigid to register them anyway"
        )
    if dicom_output is not None:
        write_dicom_outputs(result, args, dicom_output)
    else:
        write_image(result.fused, args.output, overwrite=args.overwrite)
    if args.save_registered is not None and dicom_output is None:
        write_image(result.registered_moving, args.save_registered, overwrite=args.overwrite)
    if args.source_map is not None and dicom_output is None:
        write_image(result.source_map, args.source_map, overwrite=args.overwrite)
    if args.save_transform is not None and result.registration is not None:
        from MedFusionLib.registration import write_transform

        write_transform(result.registration.transform, args.save_transform, overwrite=args.overwrite)
    if args.qa is not None:
        from MedFusionLib.registration.qa import write_registration_qa

        write_registration_qa(args.qa, reference, result.registration, overwrite=args.overwrite)
        print(f"QA pictures: {args.qa / QA_FILES[0]}, {args.qa / QA_FILES[1]}", file=sys.stderr)
    fused = result.fused
    print(
        f"wrote {args.output}: size {fused.GetSize()}, spacing {tuple(round(s, 4) for s in fused.GetSpacing())} "
        f"(model {result.model} on {result.runtime}, {result.device}, {result.precision}, "
        f"{result.fused_slices} slices fused, "
        f"{result.seconds:.1f} s of which fusion {result.stage_seconds.get('fuse', 0.0):.1f} s)"
    )
    print("intensities: " + "; ".join(f"{role} {how}" for role, how in result.windows.items()))
    return 0


def dicom_output_request(args: argparse.Namespace):
    """The patient attributes for ``--format dicom`` (checked before fusion); refuses ``--patient-*``
    with a DICOM reference, whose own patient the series must keep."""
    from MedFusionLib.io.dicom_export import PatientAttributes, source_modality

    patient = PatientAttributes(args.patient_name, args.patient_id, args.patient_birth_date, args.patient_sex)
    if patient != PatientAttributes() and source_modality(args.reference, args.reference_series) != "":
        raise InputError(
            "--patient-* are for a reference that is not DICOM; this reference is a DICOM series, whose patient "
            "and study the fused series joins. Leave the --patient-* options out."
        )
    return patient


def write_dicom_outputs(result, args: argparse.Namespace, patient) -> None:
    """``--format dicom``: the fused volume (and the registered moving volume, the source map when asked
    for) as new series of the reference's study; says on stderr where they went and what could not be kept."""
    from MedFusionLib.io.dicom_export import write_fusion_as_dicom

    study, series = write_fusion_as_dicom(
        result,
        reference=args.reference,
        moving=args.moving,
        fused_directory=args.output,
        registered_directory=args.save_registered,
        source_map_directory=args.source_map,
        reference_series=args.reference_series,
        moving_series=args.moving_series,
        patient=patient,
        overwrite=args.overwrite,
    )
    for note in study.notes:
        print(f"DICOM: {note}", file=sys.stderr)
    where = "the reference's study" if study.from_reference else "a new study"
    for written in series:
        print(
            f"DICOM series {written.series_number} ({len(written.files)} files) in {where}: {written.directory}",
            file=sys.stderr,
        )


def report_registration(registration, progress_style: str) -> None:
    """Say on stderr which backend ran, how long it took and how confident it is; with ``--progress
    json`` as one ``{"event": "registration", ...}`` line (``doubtful``, ``summary`` and the figures)
    that the Slicer worker parses. A doubtful result was already warned about by the library."""
    confidence = registration.confidence
    if progress_style == "json":
        event = {
            "event": "registration",
            "preset": registration.preset,
            "backend": registration.backend,
            "seconds": round(registration.seconds, 3),
            "metric_before": registration.metric_before,
            "metric_after": registration.metric_after,
        }
        if confidence is not None:
            event.update(
                doubtful=confidence.doubtful, summary=confidence.summary, confidence=dataclasses.asdict(confidence)
            )
        print(json.dumps(event), file=sys.stderr, flush=True)
    elif progress_style == "bar":
        print(
            f"registration: {registration.preset} with {registration.backend} in {registration.seconds:.1f} s"
            + ("" if confidence is None or confidence.doubtful else f"; {confidence.summary}"),
            file=sys.stderr,
        )
