"""``medfusion benchmark``: naive loop vs product path per model and runtime, and registration timings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from MedFusionLib.cli import COMMANDS
from MedFusionLib.cli.arguments import comma_separated
from MedFusionLib.core.choices import BACKEND_CHOICES, DEVICE_CHOICES, PRECISION_CHOICES, REGISTRATION_PRESETS
from MedFusionLib.core.files import atomic_output
from MedFusionLib.devtools.benchmark import DEFAULT_MODELS, DEFAULT_SIZE, RUNTIMES, markdown_report, run_benchmark
from MedFusionLib.models import list_models


def parse_size(text: str) -> tuple[int, int, int]:
    """``"240x240x155"`` -> ``(240, 240, 155)``."""
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 8:
        raise argparse.ArgumentTypeError(f"a size is XxYxZ with each at least 8, e.g. 240x240x155, not {text!r}")
    return size


def add_parser(subparsers) -> argparse.ArgumentParser:
    presets = comma_separated("preset", REGISTRATION_PRESETS)
    parser = subparsers.add_parser(
        "benchmark",
        help=COMMANDS["benchmark"],
        description="Fuse one volume pair with every model in one process, the naive way (each whole "
        "slice alone, fp32, eager torch) and the product way on each runtime (torch, openvino, onnxruntime: "
        "every installed one by default), and print a Markdown table: seconds per volume, "
        "ms per slice, voxels per second, speed-up, peak memory and the largest difference between the two "
        "outputs; then registration timings per preset and backend. Input: the shared BraTS T1/T2 case when "
        "this checkout has ../shared/data, else --data, else a phantom of --size.",
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        type=comma_separated("model", list_models()),
                        help=f"comma-separated models (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--data", type=Path, default=None, help="a case folder with t1.nii.gz and t2.nii.gz")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, metavar="XxYxZ",
                        help="phantom size when no data is found (default 240x240x155)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto)")
    parser.add_argument("--runtimes", default=None, type=comma_separated("runtime", RUNTIMES),
                        help="product path on these runtimes (default: every installed one; torch only on CUDA)")
    parser.add_argument("--precisions", default=[], type=comma_separated("precision", PRECISION_CHOICES),
                        help="also time the product path in these precisions, on the runtimes that offer them "
                        "(bf16: torch, openvino; fp16: torch on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="product path's slices per pass (default: the device's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of every runtime (default: one per core)")
    parser.add_argument("--compile", action="store_true", help="also time the product path under torch.compile")
    parser.add_argument("--registration", default="rigid,affine",
                        type=lambda text: [] if text == "none" else presets(text),
                        help="registration presets to time, or none (default rigid,affine)")
    parser.add_argument("--backends", default=None,
                        type=comma_separated("backend", [name for name in BACKEND_CHOICES if name != "auto"]),
                        help="registration backends (default: every installed one)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each fusion row this often, in rounds over a model's rows; keep the fastest "
                        "(default 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write every figure as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    report = run_benchmark(
        models=args.models,
        data=args.data,
        size=args.size,
        device=args.device,
        precisions=args.precisions,
        batch_size=args.batch_size,
        compile=args.compile,
        presets=args.registration,
        backends=args.backends,
        repeats=args.repeats,
        report=lambda line: print(line, flush=True),
        runtimes=args.runtimes,
        threads=args.threads,
    )
    print("\n" + markdown_report(report))
    if args.json is not None:
        with atomic_output(args.json, overwrite=True) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0
