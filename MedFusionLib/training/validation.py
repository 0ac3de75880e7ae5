"""Validation during training: fuse held-out pairs, score them next to the ``average`` rule.

Pairs are fused and scored as ``medfusion evaluate`` does
(:class:`~MedFusionLib.evaluation.scoring.ModelMethod`, :mod:`~MedFusionLib.evaluation.metrics`).
The score that keeps ``best.pt`` is, over the tasks, the smallest number of the eight metrics
(:data:`SELECTION_METRICS`) on which the model beats ``average``, plus a tie-break in [0, 1) from
the mean relative gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from MedFusionLib.evaluation import metrics
from MedFusionLib.evaluation.scoring import ModelMethod
from MedFusionLib.models import create_model

SELECTION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


def fuse_levels(model: nn.Module, pairs: torch.Tensor, device: torch.device) -> np.ndarray:
    """Fuse ``(N, 2, H, W)`` uint8 pairs one by one: ``(N, H, W)`` float64 8-bit levels."""
    method = ModelMethod("validation", model, device)
    sources = pairs.numpy().astype(np.float64)
    return np.stack([method.fuse_levels(a, b, f"validation pair {index}") for index, (a, b) in enumerate(sources)])


def score_levels(fused: np.ndarray, pairs: torch.Tensor) -> dict[str, float]:
    """Mean of each :data:`SELECTION_METRICS` over the pairs, fused ``(N, H, W)`` 8-bit levels."""
    sources = pairs.numpy().astype(np.float64)
    totals = {name: 0.0 for name in SELECTION_METRICS}
    for index in range(len(fused)):
        scores = metrics.score(fused[index], sources[index, 0], sources[index, 1], list(SELECTION_METRICS))
        for name in SELECTION_METRICS:
            totals[name] += scores[name]
    return {name: value / len(fused) for name, value in totals.items()}


def selection_score(per_task: dict[str, dict[str, float]], average: dict[str, dict[str, float]]) -> float:
    """Smallest count over tasks of metrics beating ``average``, plus a tie-break in [0, 1)."""
    wins, gains = [], []
    for task, scores in per_task.items():
        wins.append(sum(scores[m] > average[task][m] for m in SELECTION_METRICS))
        gains.extend((scores[m] - average[task][m]) / max(abs(average[task][m]), 1e-6) for m in SELECTION_METRICS)
    return float(min(wins)) + 0.5 * (1.0 + math.tanh(float(np.mean(gains)))) * 0.999


@dataclass
class ValidationSet:
    """Validation pairs per task (``(N, 2, H, W)`` uint8) with the ``average`` rule's scores."""

    pairs: dict[str, torch.Tensor]
    average: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def build(cls, pairs: torch.Tensor, tasks: list[str], per_task: int) -> ValidationSet:
        """``per_task`` pairs of each task spread evenly over its pairs (0: all of them)."""
        chosen: dict[str, torch.Tensor] = {}
        for task in dict.fromkeys(tasks):
            indices = [i for i, t in enumerate(tasks) if t == task]
            if per_task and per_task < len(indices):
                indices = [indices[int(round(k))] for k in np.linspace(0, len(indices) - 1, per_task)]
            chosen[task] = pairs[indices]
        average = create_model("average")
        validation = cls(chosen)
        validation.average = {
            task: score_levels(fuse_levels(average, p, torch.device("cpu")), p) for task, p in chosen.items()
        }
        return validation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, dict[str, float]]:
        """The model's mean :data:`SELECTION_METRICS` per task (call with the model in eval mode)."""
        return {task: score_levels(fuse_levels(model, p, device), p) for task, p in self.pairs.items()}
