"""``medfusion evaluate``: score fusion methods with the field's metrics, and write a report.

Two modes:

* Harvard pairs: ``--data DIR --task T --split val --models a,b [--fused [NAME=]DIR]`` runs each
  model (and scores each directory of already fused PNGs) over the pairs and writes
  ``scores.csv``, ``summary.md`` and ``examples_<task>.png`` into ``--out``.
* A volume: ``--fused-volume F --source-a A --source-b B`` scores a fused volume over its
  foreground slices and draws the inter-slice consistency figure (``flicker.png``).

``--report report.html`` adds one self-contained HTML page with the tables and figures.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from MedFusionLib.cli import COMMANDS
from MedFusionLib.cli.arguments import comma_separated
from MedFusionLib.core.devices import DEVICE_CHOICES, describe_device, resolve_device
from MedFusionLib.core.errors import InputError
from MedFusionLib.core.files import atomic_output, atomic_output_directory, refuse_existing_outputs
from MedFusionLib.core.geometry import SLICING_AXES, slicing_array_axis
from MedFusionLib.datasets.harvard import HARVARD_TASKS
from MedFusionLib.evaluation.metrics import METRICS
from MedFusionLib.io import read_image
from MedFusionLib.models import list_models


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description="Score fusion models (and directories of fused images) on the Harvard pairs, "
        "or one fused volume against its sources; write CSV, Markdown, figures and an HTML report.",
    )
    harvard = parser.add_argument_group("Harvard pairs")
    harvard.add_argument("--data", type=Path, help="the Harvard folder with pairs.csv (e.g. ../shared/data/harvard)")
    harvard.add_argument("--task", choices=(*HARVARD_TASKS, "all"), default="all",
                         help="task to evaluate (default all)")
    harvard.add_argument("--split", choices=("train", "val"), default="val", help="split to evaluate (default val)")
    harvard.add_argument(
        "--models",
        type=comma_separated("model"),
        default=None,
        help="comma-separated registry models (default: all; learned models without weights are skipped)",
    )
    harvard.add_argument(
        "--fused",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="also score fused PNGs from DIR/<task>/<id>.png (repeatable); NAME defaults to DIR's name",
    )
    harvard.add_argument("--examples", type=int, default=3, help="pairs per task shown in the figure (default 3)")
    volume = parser.add_argument_group("a fused volume")
    volume.add_argument("--fused-volume", type=Path, help="fused volume in [0, 1] (the output of `medfusion fuse`)")
    volume.add_argument("--source-a", type=Path, help="source A on the fused volume's grid")
    volume.add_argument("--source-b", type=Path, help="source B on the fused volume's grid")
    volume.add_argument("--axis", choices=SLICING_AXES, default="axial", help="plane that was fused slice by slice")
    parser.add_argument(
        "--metrics", type=comma_separated("metric", list(METRICS)), default=None,
        help=f"comma-separated subset of {','.join(METRICS)}",
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device for the models")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="output directory (default ./evaluation)")
    parser.add_argument("--report", type=Path, default=None, metavar="HTML",
                        help="also write a self-contained HTML report")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory and --report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    return parser


def _fused_directories(specs: list[str]) -> list[tuple[str, Path]]:
    directories = []
    for spec in specs:
        name, separator, directory = spec.partition("=")
        path = Path(directory if separator else spec)
        directories.append((name if separator else path.resolve().name, path))
    names = [name for name, _ in directories]
    if len(set(names)) != len(names):
        raise InputError(f"--fused names repeat ({names}); name them with NAME=DIR.")
    return directories


def _check_outputs(args: argparse.Namespace) -> None:
    if args.report is not None and args.report.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--report {args.report}: give a .html file name.")
    refuse_existing_outputs((args.out, args.report), overwrite=args.overwrite)


def _write_report(args: argparse.Namespace, page: str) -> None:
    if args.report is not None:
        with atomic_output(args.report, overwrite=args.overwrite) as temporary:
            temporary.write_text(page, encoding="utf-8")


def _run_harvard(args: argparse.Namespace) -> int:
    from MedFusionLib.datasets.harvard import load_harvard_pairs, resolve_tasks
    from MedFusionLib.evaluation import report
    from MedFusionLib.evaluation.scoring import FusedDirectoryMethod, build_model_methods, evaluate_pairs

    tasks = resolve_tasks(args.task)
    pairs = load_harvard_pairs(args.data, tasks, args.split)
    fused_directories = _fused_directories(args.fused)
    model_names = list_models() if args.models is None else args.models
    if args.models is None and fused_directories:
        model_names = []  # scoring outside results: run models only when asked
    device = resolve_device(args.device)
    methods, skipped = build_model_methods(model_names, device)
    methods += [FusedDirectoryMethod(name, path, single_task=len(tasks) == 1) for name, path in fused_directories]
    if not methods:
        raise InputError(
            "nothing to evaluate: " + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
            if skipped
            else "nothing to evaluate: give --models and/or --fused."
        )
    bar = None if args.quiet else tqdm(total=len(pairs), desc="evaluating", unit="pair", file=sys.stderr)
    evaluation = evaluate_pairs(
        pairs,
        methods,
        skipped=skipped,
        metric_names=args.metrics,
        examples_per_task=args.examples,
        device=describe_device(device),
        progress=None if bar is None else (lambda done, total: bar.update(done - bar.n)),
    )
    if bar is not None:
        bar.close()
    with atomic_output_directory(args.out, overwrite=args.overwrite) as staging:
        report.write_evaluation(evaluation, staging)
    _write_report(args, report.html_report(evaluation))
    if not args.quiet:
        print(report.markdown_summary(evaluation))
    for name, reason in skipped.items():
        print(f"medfusion: skipped {name}: {reason}", file=sys.stderr)
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""), file=sys.stderr)
    return 0


def _run_volume(args: argparse.Namespace) -> int:
    from MedFusionLib.evaluation import figures, report
    from MedFusionLib.evaluation.scoring import evaluate_volume

    if args.source_a is None or args.source_b is None:
        raise InputError("--fused-volume needs --source-a and --source-b (the two sources on its grid).")
    fused = read_image(args.fused_volume)
    if fused.GetDimension() != 3:
        raise InputError(f"{args.fused_volume} is {fused.GetDimension()}D; --fused-volume takes a 3D volume.")
    result = evaluate_volume(
        fused,
        read_image(args.source_a),
        read_image(args.source_b),
        axis=slicing_array_axis(fused, args.axis),
        metric_names=args.metrics,
    )
    figure = figures.flicker_figure(result, f"Inter-slice consistency ({args.axis} slices)")
    with atomic_output_directory(args.out, overwrite=args.overwrite) as staging:
        with open(staging / "volume_scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "value"])
            writer.writerows(result.scores.items())
            writer.writerow(["flicker_median", result.median_flicker])
            writer.writerow(["flicker_worst", result.worst_flicker])
        figure.save(staging / "flicker.png")
    if args.report is not None:
        _write_report(args, report.volume_html_report(result, figure, str(args.fused_volume)))
    if not args.quiet:
        for name, value in result.scores.items():
            print(f"{name:>6}  {value:.4f}")
        print(f"flicker ratio: median {result.median_flicker:.3f}, worst {result.worst_flicker:.3f}")
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.fused_volume is None):
        raise InputError("give either --data (Harvard pairs) or --fused-volume (one volume), not both or neither.")
    if args.metrics is not None:
        unknown = [name for name in args.metrics if name not in METRICS]
        if unknown:
            raise InputError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}.")
    _check_outputs(args)
    return _run_harvard(args) if args.data is not None else _run_volume(args)
