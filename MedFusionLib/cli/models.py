"""``medfusion models``: every model, with parameter counts, the state of its shipped files, the CPU
time of one slice measured now on the runtime ``auto`` picks, the validation summary of each model
card, and what ``auto`` picks. Read from the model cards: no torch needed."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.choices import (
    AUTO_MODEL,
    DEFAULT_MODEL,
    DEFAULT_MODEL_BY_DEVICE,
    MODEL_CHOICES,
    resolve_model_name,
)
from MedFusionLib.core.devices import resolve_device_name
from MedFusionLib.core.model_files import is_learned, model_card_path, model_description
from MedFusionLib.fusion.pipeline import model_usable
from MedFusionLib.runtimes import RunnableNetwork, choose_runtime, load_network

# The timed input: one slice of the Harvard pictures' size, A and B.
TIMING_SIZE = 240
TIMING_REPEATS = 3


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help=COMMANDS["models"],
        description="List every fusion model: parameters, the state of its shipped weights, the CPU time of one "
        f"{TIMING_SIZE}×{TIMING_SIZE} slice measured now on the CPU runtime auto picks (one warm-up, then the "
        f"median of {TIMING_REPEATS} passes of one slice, as the engine runs each of its side-by-side slices), its "
        f"validation summary from the model card (Harvard val split), and which network model {AUTO_MODEL} picks on "
        "the CPU and on CUDA.",
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


def slice_milliseconds(network: RunnableNetwork, size: int = TIMING_SIZE, repeats: int = TIMING_REPEATS) -> float:
    """CPU milliseconds of one pass of ``network`` on one ``size``×``size`` slice pair in [0, 1]: one
    warm-up pass, then the median of ``repeats`` timed passes."""
    generator = np.random.default_rng(0)
    a = generator.random((1, size, size), dtype=np.float32)
    b = generator.random((1, size, size), dtype=np.float32)
    times = []
    network.fuse(a, b)
    for _ in range(repeats):
        started = time.perf_counter()
        network.fuse(a, b)
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
    """A :class:`ModelRow` for every model, learned first. ``weights``: the state of the files the
    CPU runtime ``auto`` picks here would run (``ok``, ``missing``, ``corrupt``); a model whose
    files are not intact is not timed."""
    runtime = choose_runtime("auto", "cpu")
    rows = []
    for name in (name for name in MODEL_CHOICES if name != AUTO_MODEL):
        learned = is_learned(name)
        usable = model_usable(name, runtime)
        card = _card(name) if learned else {}
        rows.append(
            ModelRow(
                name=name,
                kind="learned" if learned else "training-free",
                parameters=int(card.get("parameters", 0)),
                weights="ok" if usable else "missing or corrupt",
                cpu_ms=slice_milliseconds(load_network(name, runtime, "cpu")) if timing and usable else None,
                validation=validation_summary(name) if learned else "",
                description=model_description(name),
            )
        )
    return rows


def _card(name: str) -> dict:
    try:
        return json.loads(model_card_path(name).read_text())
    except (OSError, ValueError):
        return {}


def auto_line() -> str:
    """Which network model ``auto`` picks on the CPU and on CUDA, and which this machine uses."""
    picks = []
    for kind in sorted(DEFAULT_MODEL_BY_DEVICE, key=lambda kind: kind != "cpu"):  # the CPU first
        where = "the CPU" if kind == "cpu" else kind.upper()
        chosen = resolve_model_name(AUTO_MODEL, kind)
        concrete = resolve_model_name(AUTO_MODEL, kind, usable=lambda name: model_usable(name, "torch"))
        missing = f" ({chosen} once its weights are installed)" if concrete != chosen else ""
        picks.append(f"{concrete} on {where}{missing}")
    here = "CUDA" if resolve_device_name("auto") != "cpu" else "the CPU"
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
            f"CPU ms/slice: one {TIMING_SIZE}×{TIMING_SIZE} slice pair on {choose_runtime('auto', 'cpu')}, median of "
            f"{TIMING_REPEATS} passes after a warm-up, measured now (one slice, as each of the engine's side-by-side "
            "slices runs: the cores are shared out between slices)"
        )
    return 0
