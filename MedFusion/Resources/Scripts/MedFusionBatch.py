"""Headless MedFusion in Slicer: fuse one pair, or every case of a CSV list, without any window.

One pair::

    Slicer --no-main-window --python-script MedFusionBatch.py -- \\
        --reference ct.nii.gz --moving mr.nii.gz --output fused.nrrd --registration rigid

A CSV list (columns ``reference``, ``moving`` and optionally ``output``; relative paths start at
the CSV's folder; the same format as ``medfusion batch``)::

    Slicer --no-main-window --python-script MedFusionBatch.py -- --cases cases.csv --output-dir fused/

A PET from a PET/MR scanner, fused in colour (RGB output), with the source map::

    Slicer --no-main-window --python-script MedFusionBatch.py -- --reference mr.nii.gz --moving pet.nii.gz \\
        --output fused_rgb.nrrd --functional harvard-pet --registration resample --source-map share.nrrd

The fusion options (``--model``, ``--registration``, ``--functional``, ...) are
``FusionOptions``' own flags, with the same names, choices and defaults as ``medfusion fuse``.

Volumes are read with Slicer's own reader into the MRML scene, fused by the module's logic (the
same code as the panel and the Python console) and written atomically. No dialog is ever shown;
progress goes to standard output. Exit status: 0 when every case succeeded, 1 when one failed
(the others still run), 2 for unusable arguments or missing dependencies
(``--install-dependencies`` installs them, which counts as consent).

The script also runs with plain Python where the ``slicer-core`` wheel provides the MRML scene.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

# In the packaged extension this file lies in <modules>/Resources/Scripts; MedFusionSlicer (and the
# bundled MedFusionLib) are in <modules>. Slicer puts that folder on sys.path; plain Python may not.
MODULE_FOLDER = Path(__file__).resolve().parents[2]
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

from MedFusionSlicer import dependencies
from MedFusionSlicer.choices import FusionOptions, OptionsError

EXIT_OK, EXIT_CASE_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="MedFusionBatch.py",
        description="Fuse a moving volume into a reference volume with MedFusion, without a window.",
    )
    parser.add_argument("--reference", type=Path, help="reference volume (its grid is the output's grid)")
    parser.add_argument("--moving", type=Path, help="volume to fuse into the reference")
    parser.add_argument("--output", type=Path, help="fused volume to write (.nrrd, .nii.gz, .mha)")
    parser.add_argument("--cases", type=Path, help="CSV with columns reference, moving[, output] instead of one pair")
    parser.add_argument("--output-dir", type=Path, help="folder for the outputs of --cases")
    # Every fusion option, with FusionOptions' names, choices and defaults: the same as the panel,
    # the console and `medfusion fuse` (values are checked by FusionOptions.from_namespace).
    FusionOptions.add_arguments(parser)
    parser.add_argument(
        "--source-map",
        type=Path,
        help="also write the source map: per voxel, the moving volume's share of the fused value "
        "(float 0-1: 0 the reference, 0.5 either, 1 the moving volume; one pair only)",
    )
    parser.add_argument("--save-registered", type=Path, help="also write the registered moving volume (one pair only)")
    parser.add_argument(
        "--save-checkerboard",
        type=Path,
        help="also write the checkerboard of reference and registered volume, to judge the registration "
        "(one pair only)",
    )
    parser.add_argument(
        "--dicom-output",
        type=Path,
        help="also write the fused volume as a DICOM series into this new folder: with a DICOM reference (a "
        "folder holding its series) a derived series of the reference's patient, study and frame of reference "
        "(one pair only; needs highdicom)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (one pair)")
    parser.add_argument("--shard", default="1/1", metavar="K/N", help="--cases: run every N-th case starting at K")
    parser.add_argument(
        "--resume", action="store_true", help="--cases: skip cases an earlier run completed with the same options"
    )
    parser.add_argument("--install-dependencies", action="store_true", help="install missing Python packages first")
    return parser


def script_arguments(argv: list[str]) -> list[str]:
    """The script's own arguments: Slicer may pass a leading ``--`` separator through."""
    return argv[1:] if argv and argv[0] == "--" else argv


def headless_python() -> str:
    """The Python to run pip with: Slicer's ``PythonSlicer`` inside Slicer, else this interpreter."""
    from MedFusionSlicer.worker import python_executable

    app = getattr(sys.modules.get("slicer"), "app", None)
    return python_executable(slicer_home=app.slicerHome) if app is not None else sys.executable


def ensure_dependencies(install_allowed: bool) -> bool:
    missing = dependencies.missing_requirements(include_optional=False)
    if not missing:
        return True
    names = ", ".join(requirement.specifier for requirement in missing)
    if not install_allowed:
        print(f"MedFusion needs {names}; run again with --install-dependencies to install them.", file=sys.stderr)
        return False
    print(f"installing {names} ...", flush=True)
    try:
        # pip as a plain process: slicer.util.pip_install may open dialogs, which would wait forever here.
        pip = dependencies.process_pip_install(headless_python())
        for line in dependencies.install(missing, pip, dependencies.slicer_torch_index()):
            print(line, flush=True)
    except Exception as error:  # noqa: BLE001  (network, proxy or build failure: say how to install by hand)
        print(f"installing failed ({error}).\n{dependencies.offline_instructions(missing)}", file=sys.stderr)
        return False
    return True


def fuse_one(
    logic, scene, reference: Path, moving: Path, output: Path, overwrite: bool, options, extra: dict[str, Path | None]
) -> str:
    """Load, fuse with ``options`` (a ``FusionOptions``), write one pair (and the ``extra`` outputs:
    ``registered``, ``checkerboard``, ``sourcemap``, and ``dicom``: a folder for the fused volume as
    a DICOM series of the reference's study); remove its nodes from the scene afterwards.
    Returns the model that ran (model ``auto`` resolved by the device)."""
    from MedFusionLib.core.files import refuse_existing_outputs
    from MedFusionLib.io import write_image
    from MedFusionSlicer.volumes import image_from_volume_node, load_volume_node

    refuse_existing_outputs((output, *extra.values()), overwrite=overwrite)
    added = []
    try:
        referenceNode = load_volume_node(scene, reference)
        added.append(referenceNode)
        movingNode = load_volume_node(scene, moving)
        added.append(movingNode)

        def progress(stage: str, done: int, total: int) -> None:
            print(f"  {stage} {done}/{total}", flush=True)

        nodes = logic.process(
            referenceNode,
            movingNode,
            options=options,
            progress=progress,
            log=lambda message: print(f"  {message}", flush=True),
            sourceMap=extra.get("sourcemap") is not None,
        )  # registration summary included
        added += [
            node
            for node in (
                nodes.fusedNode,
                nodes.sourceMapNode,
                nodes.registeredNode,
                nodes.transformNode,
                nodes.checkerboardNode,
            )
            if node
        ]
        # vector=True: a colour (functional) fusion is an RGB vector volume node.
        fused = image_from_volume_node(nodes.fusedNode, vector=True)
        if extra.get("dicom") is not None:  # first: the step most likely to refuse (e.g. highdicom missing)
            write_dicom(fused, nodes, reference, moving, extra["dicom"], overwrite)
        write_image(fused, output, overwrite=overwrite)
        for role, node in (
            ("registered", nodes.registeredNode),
            ("checkerboard", nodes.checkerboardNode),
            ("sourcemap", nodes.sourceMapNode),
        ):
            if extra.get(role) is not None and node is not None:
                write_image(image_from_volume_node(node), extra[role], overwrite=overwrite)
        return nodes.model
    finally:
        for node in added:
            scene.RemoveNode(node)


def write_dicom(fused, nodes, reference: Path, moving: Path, folder: Path, overwrite: bool) -> None:
    """The fused volume as a DICOM series in ``folder`` (MedFusionLib's DICOM export: a derived series
    of the reference's study when the reference is a DICOM series), saying what it did."""
    from types import SimpleNamespace

    from MedFusionLib.io.dicom_export import write_fusion_as_dicom

    result = SimpleNamespace(fused=fused, registration=nodes.registration, model=nodes.model,
                             registered_moving=None, source_map=None)
    study, series = write_fusion_as_dicom(result, reference=reference, moving=moving, fused_directory=folder,
                                          overwrite=overwrite)
    for note in study.notes:
        print(f"  DICOM: {note}", flush=True)
    for written in series:
        print(f"  DICOM: wrote series {written.series_number} ({len(written.files)} files) to {written.directory}",
              flush=True)


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(script_arguments(argv))
    single = args.reference is not None or args.moving is not None or args.output is not None
    if single == (args.cases is not None):
        parser.print_usage(sys.stderr)
        print("give either --reference, --moving and --output, or --cases and --output-dir", file=sys.stderr)
        return EXIT_USAGE
    if single and None in (args.reference, args.moving, args.output):
        print("one pair needs all of --reference, --moving and --output", file=sys.stderr)
        return EXIT_USAGE
    if args.cases is not None and args.output_dir is None:
        print("--cases needs --output-dir", file=sys.stderr)
        return EXIT_USAGE
    if args.cases is not None and any((args.save_registered, args.save_checkerboard, args.source_map,
                                       args.dicom_output)):
        print("--save-registered, --save-checkerboard, --source-map and --dicom-output are for one pair, not --cases",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        options = FusionOptions.from_namespace(args)
    except OptionsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not ensure_dependencies(args.install_dependencies):
        return EXIT_USAGE

    import slicer  # after checking the arguments: loading the MRML libraries takes seconds

    from MedFusionLib.core.errors import MedFusionError
    from MedFusionSlicer.logic import FusionLogic

    # Slicer has its scene; with slicer-core alone, make one.
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        scene = slicer.vtkMRMLScene()
    logic = FusionLogic()
    if args.cases is not None:
        return run_cases(args, options, logic, scene)

    print(f"fusing {args.reference.name} + {args.moving.name} -> {args.output}", flush=True)
    started = time.perf_counter()
    extra = {"registered": args.save_registered, "checkerboard": args.save_checkerboard, "sourcemap": args.source_map,
             "dicom": args.dicom_output}
    try:
        fuse_one(logic, scene, args.reference, args.moving, args.output, args.overwrite, options, extra)
    except MedFusionError as error:
        print(f"failed: {error}", file=sys.stderr, flush=True)
        return EXIT_CASE_FAILED
    print(f"done in {time.perf_counter() - started:.1f} s", flush=True)
    return EXIT_OK


def run_cases(args, options, logic, scene) -> int:
    """Every case of ``--cases`` through MedFusionLib's cohort runner (the one ``medfusion batch`` uses:
    the same manifest, shards, resume records, report CSV and failure handling), each case read,
    fused and written through the module's logic and MRML nodes."""
    from MedFusionLib.core.errors import MedFusionError
    from MedFusionLib.fusion.batch import parse_shard, run_batch

    def write_case(case, case_options) -> str:
        print(f"case {case.index}: {case.reference.name} + {case.moving.name} -> {case.output}", flush=True)
        return fuse_one(logic, scene, case.reference, case.moving, case.output, True, case_options, {})

    def report(outcome) -> None:
        if outcome.status == "failed":
            print(f"case {outcome.case.index} failed: {outcome.error}", file=sys.stderr, flush=True)
        else:
            print(f"case {outcome.case.index} {outcome.status} ({outcome.seconds:.1f} s)", flush=True)

    try:
        summary = run_batch(
            args.cases, args.output_dir, options, shard=parse_shard(args.shard), resume=args.resume,
            on_outcome=report, write_case=write_case,
        )
    except MedFusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    done, skipped = summary.count("done"), summary.count("skipped")
    print(
        f"{done + skipped} of {len(summary.outcomes)} cases fused ({skipped} already complete); "
        f"report: {summary.report}",
        flush=True,
    )
    return EXIT_CASE_FAILED if summary.count("failed") else EXIT_OK


def exit_with(status: int) -> None:
    """Leave Slicer (which keeps running after a --python-script otherwise) or plain Python."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        slicer.util.exit(status)
    else:
        sys.exit(status)


if __name__ == "__main__":
    # Never leave an exception to Slicer: under --no-main-window it would print it and keep running.
    try:
        status = run(sys.argv[1:])
    except Exception:  # noqa: BLE001  (never leave an exception to Slicer)
        traceback.print_exc()
        status = EXIT_CASE_FAILED
    exit_with(status)
