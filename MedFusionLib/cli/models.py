"""``medfusion models``: the registry, with parameter counts and the state of shipped weights."""

from __future__ import annotations

import argparse

from MedFusionLib.cli import COMMANDS
from MedFusionLib.models import create_model, list_models, model_spec, parameter_count
from MedFusionLib.models.pretrained import weights_status


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("models", help=COMMANDS["models"], description="List every fusion model.")


def model_rows() -> list[tuple[str, str, str, str, str]]:
    """``(name, kind, parameters, weights, description)`` for every registered model."""
    rows = []
    for name in list_models():
        spec = model_spec(name)
        weights = weights_status(name) if spec.learned else "not needed"
        # The network `create_model(name)` gives: the shipped configuration when weights are
        # present (it may differ from the class defaults), else the defaults.
        parameters = parameter_count(create_model(name, pretrained=weights == "ok"))
        kind = "learned" if spec.learned else "training-free"
        rows.append((name, kind, f"{parameters:,}", weights, spec.description))
    return rows


def run(args: argparse.Namespace) -> int:
    header = ("model", "kind", "parameters", "weights", "description")
    rows = model_rows()
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    return 0
