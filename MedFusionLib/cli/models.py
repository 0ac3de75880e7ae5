"""``medfusion models``: the registry, with parameter counts, the state of shipped weights, the CPU
time of one slice measured now, the validation summary of each model card, and what ``auto`` picks."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import AUTO_MODEL, DEFAULT_MODEL, DEFAULT_MODEL_BY_DEVICE, resolve_model_name
from MedFusionLib.fusion.pipeline import model_usable
from MedFusionLib.models import create_model, list_models, model_spec, parameter_count
from MedFusionLib.models.pretrained import model_card_path, weights_status

# The timed input: one slice of the Harvard pictures' size, A and B.
TIMING_SIZE = 240
TIMING_REPEATS = 3


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help=COMMANDS["models"],
        description="List every fusion model: parameters, the state of its shipped weights, the CPU time of one "
        f"{TIMING_SIZE}×{TIMING_SIZE} slice measured now (one warm-up, then the median of {TIMING_REPEATS} forward "
        "passes with torch's current thread count; an architecture without weights is timed with random ones, "
        "speed does not depend on them), its validation summary from the model card (Harvard val split), and which "
        f"network model {AUTO_MODEL} picks on the CPU and on CUDA.",
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the CPU timing (a quick listing)")
    return parser


@dataclass(frozen=True)
class ModelRow:
    """One line of the listing; ``cpu_ms`` is ``None`` when not timed."""

    name: str
    kind: str
    parameters: int
    weights: str
    cpu_ms: float | None
    validation: str
    description: str


def slice_milliseconds(model: torch.nn.Module, size: int = TIMING_SIZE, repeats: int = TIMING_REPEATS) -> float:
    """CPU milliseconds of one forward pass of ``model`` on one ``size``×``size`` slice pair: one
    warm-up pass, then the median of ``repeats`` timed passes, under ``torch.no_grad`` with torch's
    current thread count."""
    model = model.to("cpu").eval()
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, size, size, generator=generator)
    b = torch.rand(1, 1, size, size, generator=generator)
    times = []
    with torch.no_grad():
        model(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            model(a, b)
            times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def validation_summary(name: str) -> str:
    """One line from the model card's ``validation`` block, e.g. ``"beats average on 6/7/6 of 8
    (CT/PET/SPECT), Qabf .57/.77/.73"``; ``""`` without a card or block."""
    try:
        card = json.loads(model_card_path(name).read_text())
        tasks = card["validation"]["tasks"]
        labels, wins, qabf, counts = [], [], [], set()
        for task, numbers in tasks.items():
            labels.append(task.split("-")[0])
            wins.append(str(len(numbers.get("beats_average_on", []))))
            scores = numbers[name]
            counts.add(len(scores))
            qabf.append(f"{scores['Qabf']:.2f}".removeprefix("0") if "Qabf" in scores else "?")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    if not labels:
        return ""
    of = f" of {counts.pop()}" if len(counts) == 1 else ""
    return f"beats average on {'/'.join(wins)}{of} ({'/'.join(labels)}), Qabf {'/'.join(qabf)}"


def model_rows(timing: bool = True) -> list[ModelRow]:
    """A :class:`ModelRow` for every registered model, in the registry's order."""
    rows = []
    for name in list_models():
        spec = model_spec(name)
        weights = weights_status(name) if spec.learned else "not needed"
        # The network `create_model(name)` gives: the shipped configuration when weights are
        # present (it may differ from the class defaults), else the defaults (random weights: the
        # architecture's size and speed do not depend on them).
        model = create_model(name, pretrained=weights == "ok")
        rows.append(
            ModelRow(
                name=name,
                kind="learned" if spec.learned else "training-free",
                parameters=parameter_count(model),
                weights=weights,
                cpu_ms=slice_milliseconds(model) if timing else None,
                validation=validation_summary(name) if spec.learned else "",
                description=spec.description,
            )
        )
    return rows


def auto_line() -> str:
    """Which network model ``auto`` picks on the CPU and on CUDA, and which this machine uses."""
    picks = []
    for kind in sorted(DEFAULT_MODEL_BY_DEVICE, key=lambda kind: kind != "cpu"):  # the CPU first
        where = "the CPU" if kind == "cpu" else kind.upper()
        chosen = resolve_model_name(AUTO_MODEL, kind)
        concrete = resolve_model_name(AUTO_MODEL, kind, usable=model_usable)
        missing = f" ({chosen} once its weights are installed)" if concrete != chosen else ""
        picks.append(f"{concrete} on {where}{missing}")
    here = "CUDA" if torch.cuda.is_available() else "the CPU"
    default = " (the default)" if DEFAULT_MODEL == AUTO_MODEL else ""
    return f"model {AUTO_MODEL}{default} picks {', '.join(picks)}; this machine runs on {here}"


def run(args: argparse.Namespace) -> int:
    timing = not args.no_timing
    rows = model_rows(timing=timing)
    header = ("model", "kind", "parameters", "weights", "CPU ms/slice", "val (Harvard)", "description")
    cells = [
        (
            row.name,
            row.kind,
            f"{row.parameters:,}",
            row.weights,
            "-" if row.cpu_ms is None else f"{row.cpu_ms:.1f}" if row.cpu_ms >= 1 else f"{row.cpu_ms:.2f}",
            row.validation or "-",
            row.description,
        )
        for row in rows
    ]
    right = {2, 4}  # numbers, aligned on the right
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)]
    for line in [header, *cells]:
        fields = [cell.rjust(width) if i in right else cell.ljust(width) for i, (cell, width) in
                  enumerate(zip(line, widths))]  # fmt: skip
        print("  ".join([*fields, line[-1]]).rstrip())
    print()
    print(auto_line())
    if timing:
        print(
            f"CPU ms/slice: one {TIMING_SIZE}×{TIMING_SIZE} slice pair, median of {TIMING_REPEATS} forward passes "
            f"after a warm-up, {torch.get_num_threads()} torch thread(s), measured now"
        )
    return 0
