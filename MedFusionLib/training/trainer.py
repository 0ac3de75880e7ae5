"""Training the learned fusion models: one loop for EMFusion, HAF and DenseFuse.

:func:`train` runs AdamW with a linear warm-up then cosine ``LambdaLR`` schedule, mixed precision
(CUDA: fp16 autocast + ``GradScaler``; CPU: bf16 autocast when asked, see ``precision``),
gradient clipping, a guard against non-finite losses or gradients (the step is skipped and
logged; training stops with :class:`TrainingDivergedError` after ``max_nonfinite_steps`` in a
row), TensorBoard logs, and checkpoints ``last.pt`` (every epoch) and ``best.pt`` (best
validation score). Every epoch draws its sample order and its augmentation from generators
seeded by ``(seed, epoch, rank)``, so a run resumed from ``last.pt`` continues bit for bit on
the CPU. Under ``torchrun`` the same code runs DistributedDataParallel (gloo on CPU, NCCL on
CUDA); rank 0 alone writes logs and checkpoints.

Objectives: ``fusion`` (EMFusion, HAF): ``model(a, b)`` trained with
:class:`~MedFusionLib.training.losses.FusionLoss`; ``reconstruction`` (DenseFuse): ``model.reconstruct(x)``
on single images of either modality with :class:`~MedFusionLib.training.losses.ReconstructionLoss`, the
fusion rule being fixed.

Validation fuses whole validation pairs and scores them with :mod:`MedFusionLib.evaluation.metrics` next to
the ``average`` rule; the score used to keep ``best.pt`` is, over the tasks, the smallest number
of the eight metrics (:data:`SELECTION_METRICS`) on which the model beats ``average``, plus a
tie-break in [0, 1) from the mean relative gain.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from MedFusionLib.evaluation import metrics
from MedFusionLib.datasets.augmentation import AugmentationConfig, PairAugmentation
from MedFusionLib.datasets.pairs import PairDataset
from MedFusionLib.core.devices import resolve_device
from MedFusionLib.core.errors import InputError, MedFusionError
from MedFusionLib.training.losses import FusionLoss, FusionLossWeights, ReconstructionLoss
from MedFusionLib.models import create_model, model_spec
from MedFusionLib.models.registry import parameter_count
from MedFusionLib.core.precision import PRECISION_CHOICES, autocast_dtype

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SELECTION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
OBJECTIVES = ("fusion", "reconstruction")
PRECISIONS = PRECISION_CHOICES
CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"


class TrainingDivergedError(MedFusionError, RuntimeError):
    """The loss or its gradients stayed NaN/Inf for too many steps in a row."""


@dataclass
class TrainingConfig:
    """Everything that defines a training run (a JSON file; the defaults are in ``configs/``).

    ``model_config``: the architecture's constructor kwargs (stored in the model card).
    ``samples_per_epoch``: crops drawn per epoch (0: one per training pair).
    ``warmup_steps``: linear warm-up from 0; then cosine decay to ``min_lr_ratio`` × lr.
    ``precision``: ``auto`` (fp16 autocast + GradScaler on CUDA, fp32 on CPU), ``fp32``,
    ``bf16`` (autocast on either device), ``fp16`` (CUDA only).
    ``validation_pairs``: validation pairs scored per task (0: all), spread evenly.
    ``num_threads``: torch CPU threads (0: leave torch's default).
    """

    model: str
    objective: str = "fusion"
    model_config: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 8
    samples_per_epoch: int = 0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    precision: str = "auto"
    seed: int = 0
    num_threads: int = 0
    validate_every: int = 1
    validation_pairs: int = 8
    max_nonfinite_steps: int = 20
    tensorboard: bool = True
    image_every: int = 1

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        if "model" not in values:
            raise InputError("a training config needs 'model' (emfusion, haf or densefuse)")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        spec = model_spec(self.model)  # raises UnknownModelError listing the names
        if not spec.learned:
            raise InputError(f"model {self.model!r} has nothing to train; choose a learned model (emfusion, haf, densefuse)")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("epochs", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        AugmentationConfig.from_dict(self.augmentation)
        if self.objective == "fusion":
            FusionLossWeights.from_dict(self.loss)
        elif set(self.loss) - {"ssim_weight"}:
            raise InputError(f"the reconstruction loss takes only 'ssim_weight', got {sorted(self.loss)}")

    def to_dict(self) -> dict:
        return asdict(self)


def default_config(model: str) -> TrainingConfig:
    """The shipped default configuration of ``model`` (``MedFusionLib/configs/<model>.json``)."""
    path = CONFIG_DIR / f"{model}.json"
    if not path.is_file():
        model_spec(model)  # an unknown name gets the registry's error
        raise InputError(f"no default training configuration for {model!r} ({path} missing)")
    return TrainingConfig.from_dict(json.loads(path.read_text()))


def load_config(model: str, override_path: str | Path | None = None, **overrides) -> TrainingConfig:
    """``model``'s default config, updated by a JSON file (nested dicts merged) and keyword overrides."""
    values = default_config(model).to_dict()
    if override_path is not None:
        path = Path(override_path)
        try:
            update = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"--config {path}: no such file") from None
        except ValueError as error:
            raise InputError(f"--config {path} is not valid JSON: {error}") from None
        if update.get("model", model) != model:
            raise InputError(f"--config {path} is for model {update['model']!r}, not {model!r}")
        for key, value in update.items():
            values[key] = {**values[key], **value} if isinstance(values.get(key), dict) and isinstance(value, dict) else value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainingConfig.from_dict(values)


# ----------------------------------------------------------------------------- pieces


def lr_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


class TrainingObjective(nn.Module):
    """Wraps a fusion model so that one ``forward`` computes the training loss.

    ``forward(pairs)`` with ``pairs`` ``(B, 2, h, w)`` returns ``(loss, parts)``. Wrapping the
    objective (not the bare model) in DistributedDataParallel makes DDP see DenseFuse's
    ``reconstruct`` pass too.
    """

    def __init__(self, model: nn.Module, objective: str, loss: dict) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        if objective == "fusion":
            self.loss = FusionLoss(FusionLossWeights.from_dict(loss))
        else:
            self.loss = ReconstructionLoss(**loss)

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, b = pairs[:, :1], pairs[:, 1:]
        if self.objective == "fusion":
            return self.loss(self.model(a, b), a, b)
        # Both modalities as single images: the auto-encoder must serve either source.
        images = torch.cat([a, b], dim=0)
        return self.loss(self.model.reconstruct(images), images)


def epoch_indices(samples: int, count: int, generator: torch.Generator) -> list[int]:
    """``samples`` indices into ``count`` pairs in random order: whole permutations, the last cut short.

    Every pair appears once before any appears twice. Under DDP each rank takes every
    ``world_size``-th index of the same list (the generator is seeded alike on every rank).
    """
    permutations = [torch.randperm(count, generator=generator) for _ in range(math.ceil(samples / count))]
    return torch.cat(permutations)[:samples].tolist()


def _seeded_generator(seed: int, epoch: int, rank: int, stream: int) -> torch.Generator:
    """A CPU generator for one (epoch, rank, purpose): its draws do not depend on earlier epochs."""
    generator = torch.Generator()
    generator.manual_seed(((seed * 1_000_003 + epoch) * 1_009 + rank) * 7 + stream)
    return generator


@dataclass
class Distributed:
    """The process group this process is in (``world_size`` 1: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process.

    gloo on CPU, NCCL on CUDA, the rendezvous from torchrun's environment variables.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ----------------------------------------------------------------------------- validation


def fuse_levels(model: nn.Module, pairs: torch.Tensor, device: torch.device) -> np.ndarray:
    """Fuse ``(N, 2, H, W)`` uint8 pairs one by one: ``(N, H, W)`` float64 8-bit levels.

    As :class:`MedFusionLib.evaluation.scoring.ModelMethod` scores them: [0, 1] inputs, output rounded.
    """
    outputs = []
    with torch.inference_mode():
        for pair in pairs:
            x = (pair.float() / 255.0).unsqueeze(1).to(device)
            fused = model(x[0:1], x[1:2])[0, 0].float().cpu().numpy()
            outputs.append(metrics.to_eight_bit(fused))
    return np.stack(outputs)


def score_levels(fused: np.ndarray, pairs: torch.Tensor) -> dict[str, float]:
    """Mean of each :data:`SELECTION_METRICS` over the pairs, fused ``(N, H, W)`` 8-bit levels."""
    sources = pairs.numpy().astype(np.float64)
    totals = {name: 0.0 for name in SELECTION_METRICS}
    for index in range(len(fused)):
        scores = metrics.score(fused[index], sources[index, 0], sources[index, 1], list(SELECTION_METRICS))
        for name in SELECTION_METRICS:
            totals[name] += scores[name]
    return {name: value / len(fused) for name, value in totals.items()}


def average_rule_levels(pairs: torch.Tensor) -> np.ndarray:
    """The ``average`` baseline on ``(N, 2, H, W)`` uint8 pairs, as 8-bit levels."""
    return fuse_levels(create_model("average"), pairs, torch.device("cpu"))


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
    def build(cls, pairs: torch.Tensor, tasks: list[str], per_task: int) -> "ValidationSet":
        """``per_task`` pairs of each task spread evenly over its pairs (0: all of them)."""
        chosen: dict[str, torch.Tensor] = {}
        for task in dict.fromkeys(tasks):
            indices = [i for i, t in enumerate(tasks) if t == task]
            if per_task and per_task < len(indices):
                indices = [indices[int(round(k))] for k in np.linspace(0, len(indices) - 1, per_task)]
            chosen[task] = pairs[indices]
        validation = cls(chosen)
        validation.average = {task: score_levels(average_rule_levels(p), p) for task, p in chosen.items()}
        return validation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, dict[str, float]]:
        return {task: score_levels(fuse_levels(model, p, device), p) for task, p in self.pairs.items()}


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainingResult:
    """What :func:`train` did: the trained model (last epoch, eval mode), the run folder, best
    validation, epochs completed in total and wall time."""

    model: nn.Module
    out_dir: Path
    epochs_completed: int
    steps: int
    seconds: float
    best_score: float
    best_epoch: int
    best_validation: dict[str, dict[str, float]]
    average_validation: dict[str, dict[str, float]]
    skipped_steps: int


def _state_for_checkpoint(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train(
    config: TrainingConfig,
    train_pairs: torch.Tensor,
    out_dir: str | Path,
    *,
    val_pairs: torch.Tensor | None = None,
    val_tasks: list[str] | None = None,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    metadata: dict | None = None,
    stop_after_epochs: int | None = None,
) -> TrainingResult:
    """Train ``config.model`` on ``train_pairs`` (``(N, 2, H, W)`` uint8) into ``out_dir``.

    ``val_pairs``/``val_tasks``: validation pairs and each one's task (None: no validation;
    ``best.pt`` is then the last epoch). ``resume``: continue from ``out_dir/last.pt``, which
    must come from the same configuration. ``stop_after_epochs``: return after that many epochs
    of this call (to fit a time slot), the schedule unchanged; ``resume`` continues later.
    ``metadata`` (e.g. data and command) is stored in the
    checkpoints and the exported model card. Raises :class:`InputError` for an existing run
    without ``resume`` or a resume without a checkpoint.
    """
    threads_before = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, train_pairs, Path(out_dir), val_pairs, val_tasks, resume, device, progress, metadata,
                      stop_after_epochs)
    finally:
        torch.set_num_threads(threads_before)


def _train(config, train_pairs, out_dir, val_pairs, val_tasks, resume, device, progress, metadata,
           stop_after_epochs) -> TrainingResult:
    resolved = resolve_device(device)
    distributed = init_distributed(resolved)
    if distributed.world_size > 1 and resolved.type == "cuda":
        resolved = torch.device("cuda", distributed.local_rank)
        torch.cuda.set_device(resolved)
    last_path = out_dir / CHECKPOINT_LAST
    if resume and not last_path.is_file():
        raise InputError(f"--resume: no checkpoint {last_path}; start without --resume")
    if not resume and last_path.is_file():
        raise InputError(f"{out_dir} already holds a training run ({last_path.name}); pass --resume to continue it or choose another --out")

    torch.manual_seed(config.seed)  # model initialisation
    model = create_model(config.model, pretrained=False, device=resolved, **config.model_config).train()
    objective = TrainingObjective(model, config.objective, config.loss).to(resolved)
    trainable: nn.Module = objective
    if distributed.world_size > 1:
        trainable = nn.parallel.DistributedDataParallel(
            objective, device_ids=[resolved.index] if resolved.type == "cuda" else None
        )
    dataset = PairDataset(train_pairs)
    samples = config.samples_per_epoch or len(dataset)
    per_rank = math.ceil(samples / distributed.world_size)
    steps_per_epoch = max(1, per_rank // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, total_steps, config.min_lr_ratio)
    )
    amp_dtype = autocast_dtype(config.precision, resolved)
    scaler = torch.amp.GradScaler(resolved.type, enabled=amp_dtype == torch.float16)
    augmentation = PairAugmentation(AugmentationConfig.from_dict(config.augmentation))

    validation = None
    if val_pairs is not None and distributed.is_main:
        validation = ValidationSet.build(val_pairs, val_tasks or ["val"] * len(val_pairs), config.validation_pairs)

    start_epoch, global_step, skipped_total = 0, 0, 0
    best_score, best_epoch, best_validation = -math.inf, -1, {}
    elapsed_before = 0.0
    if resume:
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=True)
        if checkpoint["config"] != config.to_dict():
            raise InputError(f"{last_path} was trained with another configuration; resume with the same --config")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, global_step = checkpoint["epoch"], checkpoint["step"]
        skipped_total = checkpoint["skipped_steps"]
        best_score, best_epoch = checkpoint["best_score"], checkpoint["best_epoch"]
        best_validation = json.loads(checkpoint["best_validation"])
        elapsed_before = checkpoint["seconds"]

    writer = None
    if distributed.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        if config.tensorboard:
            writer = _tensorboard_writer(out_dir / "tensorboard")

    started = time.perf_counter()
    consecutive_bad = 0
    epoch = start_epoch
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        order = _seeded_generator(config.seed, epoch, 0, stream=0)  # the same on every rank
        indices = epoch_indices(samples, len(dataset), order)[distributed.rank :: distributed.world_size]
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=indices, drop_last=True)
        augment_generator = _seeded_generator(config.seed, epoch, distributed.rank, stream=1)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{config.model} epoch {epoch + 1}/{config.epochs}",
            disable=not (progress and distributed.is_main),
            file=sys.stderr,
        )
        sums: dict[str, float] = {}
        counted = 0
        for step_in_epoch, batch in enumerate(loader):
            if step_in_epoch >= steps_per_epoch:
                break
            crops = augmentation(batch.to(resolved), augment_generator)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(resolved.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, parts = trainable(crops)
            finite = bool(torch.isfinite(loss.detach()))
            if distributed.world_size > 1:
                # Every rank must run backward (its all-reduce) or skip the step together.
                flag = torch.tensor([float(finite)], device=resolved)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag.item())
            if finite:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                # Gradients are already averaged over the ranks, so every rank sees the same norm.
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                finite = bool(torch.isfinite(grad_norm))
            if finite:
                scaler.step(optimizer)
                scaler.update()
                consecutive_bad = 0
                for name, value in {"total": loss, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                counted += 1
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped_total += 1
                consecutive_bad += 1
                message = f"step {global_step}: non-finite loss or gradient, step skipped ({consecutive_bad} in a row)"
                if distributed.is_main:
                    tqdm.write(message, file=sys.stderr)
                if writer is not None:
                    writer.add_scalar("train/skipped_steps", skipped_total, global_step)
                if consecutive_bad >= config.max_nonfinite_steps:
                    raise TrainingDivergedError(
                        f"{consecutive_bad} steps in a row had a NaN/Inf loss or gradient at step {global_step}; "
                        "lower learning_rate, use precision fp32, or check the data for NaN"
                    )
            scheduler.step()
            global_step += 1
            if writer is not None and finite:
                writer.add_scalar("train/loss", float(loss.detach()), global_step)
                for name, value in parts.items():
                    writer.add_scalar(f"train/{name}", float(value.detach()), global_step)
                writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], global_step)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update()
        bar.close()

        if distributed.is_main:
            means = {name: total / max(1, counted) for name, total in sums.items()}
            line = {"epoch": epoch + 1, "step": global_step, "train": means, "lr": scheduler.get_last_lr()[0],
                    "seconds": elapsed_before + time.perf_counter() - started}
            if validation is not None and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
                model.eval()
                scores = validation.evaluate(model, resolved)
                score = selection_score(scores, validation.average)
                line["validation"], line["score"] = scores, score
                if writer is not None:
                    _log_validation(writer, model, validation, scores, score, epoch + 1, config, resolved)
                if score > best_score:
                    best_score, best_epoch, best_validation = score, epoch + 1, scores
                    _save_checkpoint(out_dir / CHECKPOINT_BEST, model, optimizer, scheduler, scaler, config, epoch + 1,
                                     global_step, skipped_total, best_score, best_epoch, best_validation,
                                     elapsed_before + time.perf_counter() - started, metadata)
            elif validation is None:
                best_epoch = epoch + 1
                _save_checkpoint(out_dir / CHECKPOINT_BEST, model, optimizer, scheduler, scaler, config, epoch + 1,
                                 global_step, skipped_total, best_score, best_epoch, best_validation,
                                 elapsed_before + time.perf_counter() - started, metadata)
            _save_checkpoint(last_path, model, optimizer, scheduler, scaler, config, epoch + 1, global_step,
                             skipped_total, best_score, best_epoch, best_validation,
                             elapsed_before + time.perf_counter() - started, metadata)
            with open(out_dir / "history.jsonl", "a") as log:
                log.write(json.dumps(line) + "\n")
        if distributed.world_size > 1:
            dist.barrier()

    if writer is not None:
        writer.close()
    if distributed.world_size > 1:
        dist.destroy_process_group()
    return TrainingResult(
        model=model.eval(),
        out_dir=out_dir,
        epochs_completed=end_epoch,
        steps=global_step,
        seconds=elapsed_before + time.perf_counter() - started,
        best_score=best_score,
        best_epoch=best_epoch,
        best_validation=best_validation,
        average_validation=validation.average if validation is not None else {},
        skipped_steps=skipped_total,
    )


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, config, epoch, step, skipped, best_score,
                     best_epoch, best_validation, seconds, metadata) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact).

    Only tensors, numbers, strings and dicts of them, so that it loads with ``weights_only=True``.
    """
    state = {
        "model": _state_for_checkpoint(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": config.to_dict(),
        "epoch": epoch,
        "step": step,
        "skipped_steps": skipped,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "best_validation": json.dumps(best_validation),
        "seconds": seconds,
        "metadata": json.dumps(metadata or {}),
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _tensorboard_writer(log_dir: Path):
    """A ``SummaryWriter``; TensorBoard is the optional ``train`` extra, so say how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            "TensorBoard logging needs the tensorboard package: pip install 'medfusion[train]' "
            "(or set \"tensorboard\": false in the training config)"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


def _log_validation(writer, model, validation: ValidationSet, scores, score, epoch, config, device) -> None:
    """Validation metrics next to ``average``, the selection score, and an image grid per task."""
    writer.add_scalar("validation/score", score, epoch)
    for task, values in scores.items():
        for name, value in values.items():
            writer.add_scalars(f"validation/{task}/{name}", {"model": value, "average": validation.average[task][name]}, epoch)
    if epoch % config.image_every:
        return
    for task, pairs in validation.pairs.items():
        first = pairs[:1]
        fused = torch.from_numpy(fuse_levels(model, first, device)).float() / 255.0
        sources = first[0].float() / 255.0
        grid = torch.cat([sources[0], sources[1], fused[0]], dim=1).unsqueeze(0)  # A | B | fused
        writer.add_image(f"fused/{task}", grid.clamp(0, 1), epoch)


# ----------------------------------------------------------------------------- export


def export_weights(checkpoint_path: str | Path, out_dir: str | Path, extra_card: dict | None = None) -> tuple[Path, Path]:
    """Write ``<model>.safetensors`` and its model card ``<model>.json`` from a checkpoint.

    The card holds ``sha256`` and ``config`` (what :mod:`MedFusionLib.models.pretrained` needs)
    and the training facts; ``extra_card`` adds or replaces fields (e.g. full validation
    metrics). Both files are written atomically into ``out_dir``. Returns their paths.
    """
    from safetensors.torch import save_file

    from MedFusionLib.core.files import atomic_output
    from MedFusionLib.models.pretrained import sha256_of

    checkpoint_path = Path(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config = TrainingConfig.from_dict(checkpoint["config"])
    run_totals = {}
    last_path = checkpoint_path.with_name(CHECKPOINT_LAST)
    if last_path.is_file():  # the whole run, beyond the selected epoch
        last = torch.load(last_path, map_location="cpu", weights_only=True)
        run_totals = {"run_epochs": last["epoch"], "run_steps": last["step"], "run_seconds": round(last["seconds"], 1)}
    model = create_model(config.model, pretrained=False, **config.model_config)
    model.load_state_dict(checkpoint["model"], strict=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{config.model}.safetensors"
    card_path = out_dir / f"{config.model}.json"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_output(weights, overwrite=True) as temporary:
        save_file(state, str(temporary))
    spec = model_spec(config.model)
    card = {
        "name": config.model,
        "architecture": type(model).__name__,
        "description": spec.description,
        "reference": spec.reference,
        "parameters": parameter_count(model),
        "config": config.model_config,
        "training": {
            **json.loads(checkpoint["metadata"]),
            "config": config.to_dict(),
            "epochs_planned": config.epochs,
            "selected_epoch": checkpoint["epoch"],
            "steps_to_selected_epoch": checkpoint["step"],
            "seconds_to_selected_epoch": round(checkpoint["seconds"], 1),
            **run_totals,
            "skipped_steps": checkpoint["skipped_steps"],
            "torch": torch.__version__,
        },
        "validation_during_training": {
            "score": checkpoint["best_score"],
            "metrics": json.loads(checkpoint["best_validation"]),
        },
        **(extra_card or {}),
        "sha256": sha256_of(weights),
    }
    with atomic_output(card_path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(card, indent=2) + "\n")
    for path in (weights, card_path):
        path.chmod(0o644)  # package data: readable by every user of an installation
    return weights, card_path


def harvard_validation(model: nn.Module, name: str, data_dir: str | Path, tasks: list[str], split: str = "val") -> dict:
    """Score ``model`` and the ``average`` rule on every Harvard pair of ``tasks`` in ``split``.

    The same code path as ``medfusion evaluate`` (:func:`MedFusionLib.evaluation.scoring.evaluate_pairs`).
    Returns ``{task: {"pairs": n, name: {metric: mean}, "average": {...}, "beats_average_on": [...]}}``
    over :data:`SELECTION_METRICS`, for a model card.
    """
    from MedFusionLib.datasets.harvard import load_harvard_pairs
    from MedFusionLib.evaluation.scoring import ModelMethod, evaluate_pairs

    pairs = load_harvard_pairs(data_dir, tasks, split)
    methods = [ModelMethod(name, model.eval(), torch.device("cpu")), ModelMethod("average", create_model("average"), torch.device("cpu"))]
    evaluation = evaluate_pairs(pairs, methods, metric_names=list(SELECTION_METRICS), include_references=False,
                                examples_per_task=0)
    result = {}
    for task in evaluation.tasks:
        summary = evaluation.summary(task)
        means = {method: {m: round(summary[method][m][0], 4) for m in SELECTION_METRICS} for method in (name, "average")}
        result[task] = {
            "pairs": evaluation.pair_count(task),
            **means,
            "beats_average_on": [m for m in SELECTION_METRICS if means[name][m] > means["average"][m]],
        }
    return result
