"""``medfusion train``: train a learned fusion model and export its weights with a model card.

``medfusion train --model emfusion --data ../shared/data/harvard --task all --out runs/NAME``
trains on the Harvard ``train`` split (validating on ``val``) with the model's default
configuration (``MedFusionLib/configs/<model>.json``, overridable with ``--config FILE``), and
writes into ``--out``: ``last.pt`` / ``best.pt`` checkpoints, ``history.jsonl``, TensorBoard logs
(``tensorboard --logdir runs``) and, at the end, ``<model>.safetensors`` + ``<model>.json``
from the best checkpoint. ``--data`` may instead be a folder of co-registered case folders
(``<case>/<m>.nii.gz``, e.g. BraTS), trained on axial slices of ``--modalities A,B``; every
fifth case (sorted) is held out for validation. Run it under ``torchrun --nproc-per-node N``
for DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

import torch

from MedFusionLib.cli import COMMANDS
from MedFusionLib.core.devices import DEVICE_CHOICES
from MedFusionLib.core.errors import InputError
from MedFusionLib.datasets.harvard import (
    HARVARD_TASKS,
    load_harvard_pairs_array,
    resolve_tasks,
)
from MedFusionLib.datasets.volume_slices import find_volume_cases, load_volume_slices
from MedFusionLib.training.checkpoints import CHECKPOINT_BEST
from MedFusionLib.training.config import PRECISIONS, load_config
from MedFusionLib.training.export import export_weights
from MedFusionLib.training.trainer import train

TRAINABLE = ("emfusion", "emfusion-full", "haf", "haf-full", "densefuse")
VALIDATION_EVERY_NTH_CASE = 5


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help=COMMANDS["train"],
        description="Train a learned fusion model (AdamW, warm-up + cosine, checkpoints, TensorBoard) "
        "and export <model>.safetensors with its model card from the best validation epoch.",
    )
    parser.add_argument("--model", required=True, choices=TRAINABLE, help="architecture to train")
    parser.add_argument("--data", required=True, type=Path,
                        help="Harvard folder with pairs.csv, or a folder of co-registered volume case folders")
    parser.add_argument("--task", choices=(*HARVARD_TASKS, "all"), default="all",
                        help="Harvard task(s) to train on (default all)")
    parser.add_argument("--modalities", default="t1,t2",
                        help="volume data: the two file stems used as A,B (default t1,t2)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, exported weights)")
    parser.add_argument("--config", type=Path, default=None, help="JSON file overriding the default configuration")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--epochs", type=int, default=None, help="override the configured number of epochs")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="override the configured precision")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def load_training_data(args) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """``(train_pairs, val_pairs, val_tasks, description)`` for ``--data``."""
    if (args.data / "pairs.csv").is_file():
        tasks = resolve_tasks(args.task)
        train_pairs, _ = load_harvard_pairs_array(args.data, tasks, "train")
        val_pairs, val_tasks = load_harvard_pairs_array(args.data, tasks, "val")
        description = {"data": str(args.data), "dataset": "Harvard Whole Brain Atlas pairs (pairs.csv)",
                       "tasks": tasks, "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
                       "split": "pairs.csv 'split' column (by case)"}
        return train_pairs, val_pairs, val_tasks, description
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    cases = find_volume_cases(args.data, modalities)
    if len(cases) < 2:
        raise InputError(f"{args.data}: volume training needs at least two cases (one is held out for validation)")
    every = VALIDATION_EVERY_NTH_CASE
    held_out = [i for i in range(len(cases)) if i % every == every - 1] or [len(cases) - 1]
    train_cases = [c for i, c in enumerate(cases) if i not in held_out]
    val_cases = [cases[i] for i in held_out]
    train_pairs = torch.cat([load_volume_slices(a, b) for a, b in train_cases])
    val_pairs = torch.cat([load_volume_slices(a, b) for a, b in val_cases])
    name = "-".join(modalities)
    description = {"data": str(args.data), "dataset": f"co-registered volumes, axial slices of {name}",
                   "train_cases": [str(a.parent.name) for a, _ in train_cases],
                   "val_cases": [str(a.parent.name) for a, _ in val_cases],
                   "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "split": "by case"}
    return train_pairs, val_pairs, [name] * len(val_pairs), description


def command_line(args: argparse.Namespace) -> str:
    """The ``medfusion train`` command that reproduces this run (for the model card)."""
    words = ["medfusion", "train", "--model", args.model, "--data", str(args.data)]
    if (args.data / "pairs.csv").is_file():
        words += ["--task", args.task]
    else:
        words += ["--modalities", args.modalities]
    words += ["--out", str(args.out)]
    for option, value in (("--config", args.config), ("--epochs", args.epochs), ("--precision", args.precision)):
        if value is not None:
            words += [option, str(value)]
    if args.device != "auto":
        words += ["--device", args.device]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.model, args.config, epochs=args.epochs, precision=args.precision)
    train_pairs, val_pairs, val_tasks, description = load_training_data(args)
    metadata = {**description, "command": command_line(args)}
    result = train(
        config,
        train_pairs,
        args.out,
        val_pairs=val_pairs,
        val_tasks=val_tasks,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
        metadata=metadata,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 exports
        weights, card = export_weights(args.out / CHECKPOINT_BEST, args.out)
        print(f"trained {args.model} for {result.epochs_completed} epochs ({result.steps} steps, "
              f"{result.seconds / 60:.1f} min, {result.skipped_steps} skipped); best epoch {result.best_epoch} "
              f"(score {result.best_score:.3f}); wrote {weights} and {card}")
    return 0
