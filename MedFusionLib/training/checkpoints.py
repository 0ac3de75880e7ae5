"""Checkpoints of a training run: :class:`TrainState` plus the modules' states, written atomically.

A checkpoint holds only tensors, numbers, strings and dicts of them, so that it loads with
``torch.load(..., weights_only=True)``; it is written through
:func:`~MedFusionLib.core.files.atomic_output`, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from MedFusionLib.core.files import atomic_output

CHECKPOINT_LAST = "last.pt"  # written after every epoch: what --resume continues from
CHECKPOINT_BEST = "best.pt"  # the epoch with the best validation score: what is exported


@dataclass
class TrainState:
    """Where a run stands after ``epoch`` completed epochs.

    ``step``: optimiser steps taken (skipped ones included); ``skipped_steps``: steps skipped for a
    non-finite loss or gradient; ``best_*``: the best validation so far (score ``-inf`` and epoch
    ``-1`` before any); ``seconds``: training wall time so far, over all calls.
    """

    epoch: int = 0
    step: int = 0
    skipped_steps: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_validation: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_checkpoint(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_validation": json.dumps(self.best_validation),
            "seconds": self.seconds,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        return cls(
            epoch=checkpoint["epoch"],
            step=checkpoint["step"],
            skipped_steps=checkpoint["skipped_steps"],
            best_score=checkpoint["best_score"],
            best_epoch=checkpoint["best_epoch"],
            best_validation=json.loads(checkpoint["best_validation"]),
            seconds=checkpoint["seconds"],
        )


@dataclass
class Checkpointed:
    """The modules whose states a checkpoint carries, and the run's description."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict  # TrainingConfig.to_dict()
    metadata: dict = field(default_factory=dict)  # e.g. data and command, for the model card


def save_checkpoint(path: Path, parts: Checkpointed, state: TrainState) -> None:
    """Write ``parts`` and ``state`` to ``path`` atomically, replacing an earlier checkpoint."""
    checkpoint = {
        "model": {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()},
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "config": parts.config,
        **state.to_checkpoint(),
        "metadata": json.dumps(parts.metadata),
    }
    with atomic_output(path, overwrite=True) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as written by :func:`save_checkpoint`, tensors on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_checkpoint(checkpoint: dict, parts: Checkpointed) -> TrainState:
    """Load the modules' states from ``checkpoint`` into ``parts``; returns its :class:`TrainState`."""
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    return TrainState.from_checkpoint(checkpoint)
