"""Training the learned fusion models: one :class:`Trainer` for EMFusion, HAF and DenseFuse.

:func:`train` runs AdamW with a linear warm-up then cosine ``LambdaLR`` schedule, mixed precision
(CUDA: fp16 autocast + ``GradScaler``; CPU: bf16 autocast when asked, see ``precision``),
gradient clipping, a guard against non-finite losses or gradients (the step is skipped and
logged; training stops with :class:`TrainingDivergedError` after ``max_nonfinite_steps`` in a
row), TensorBoard logs, and checkpoints ``last.pt`` (every epoch) and ``best.pt`` (best
validation score, :mod:`~MedFusionLib.training.validation`). Every epoch draws its sample order
and its augmentation from generators seeded by ``(seed, epoch, rank)``, so a run resumed from
``last.pt`` continues bit for bit on the CPU. Under ``torchrun`` the same code runs
DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 alone validates and writes logs and
checkpoints.

Objectives: ``fusion`` (EMFusion, HAF): ``model(a, b)`` trained with
:class:`~MedFusionLib.training.losses.FusionLoss`; ``reconstruction`` (DenseFuse):
``model.reconstruct(x)`` on single images of either modality with
:class:`~MedFusionLib.training.losses.ReconstructionLoss`, the fusion rule being fixed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from MedFusionLib.core.devices import resolve_device, torch_threads
from MedFusionLib.core.errors import InputError, MedFusionError
from MedFusionLib.core.precision import autocast_dtype
from MedFusionLib.datasets.augmentation import AugmentationConfig, PairAugmentation
from MedFusionLib.datasets.pairs import PairDataset
from MedFusionLib.models import create_model
from MedFusionLib.training.checkpoints import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    Checkpointed,
    TrainState,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from MedFusionLib.training.config import TrainingConfig
from MedFusionLib.training.distributed import init_distributed
from MedFusionLib.training.losses import FusionLoss, FusionLossWeights, ReconstructionLoss
from MedFusionLib.training.validation import ValidationSet, fuse_levels, selection_score


class TrainingDivergedError(MedFusionError, RuntimeError):
    """The loss or its gradients stayed NaN/Inf for too many steps in a row."""


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


class Trainer:
    """One training run of ``config`` on ``train_pairs`` (``(N, 2, H, W)`` uint8) into ``out_dir``.

    Building it initialises the model from ``config.seed`` (or loads ``config.init_weights``) and
    the optimiser, schedule, scaler and augmentation; :meth:`resume` loads ``out_dir/last.pt``
    into them; :meth:`fit` runs epochs.
    ``val_pairs``/``val_tasks``: validation pairs and each one's task (None: no validation;
    ``best.pt`` is then the last epoch). ``metadata`` (e.g. data and command) is stored in the
    checkpoints and the exported model card.
    """

    def __init__(
        self,
        config: TrainingConfig,
        train_pairs: torch.Tensor,
        out_dir: str | Path,
        *,
        val_pairs: torch.Tensor | None = None,
        val_tasks: list[str] | None = None,
        device: str | torch.device = "auto",
        progress: bool = True,
        metadata: dict | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        device = resolve_device(device)
        self.distributed = init_distributed(device)
        if self.distributed.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", self.distributed.local_rank)
            torch.cuda.set_device(device)
        self.device = device

        torch.manual_seed(config.seed)  # model initialisation
        self.model = create_model(config.model, pretrained=False, device=device, **config.model_config).train()
        if config.init_weights:
            self.model.load_state_dict(_initial_weights(config.init_weights), strict=True)
        objective = TrainingObjective(self.model, config.objective, config.loss).to(device)
        self.trainable: nn.Module = objective
        if self.distributed.world_size > 1:
            self.trainable = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.dataset = PairDataset(train_pairs)
        self.samples_per_epoch = config.samples_per_epoch or len(self.dataset)
        per_rank = math.ceil(self.samples_per_epoch / self.distributed.world_size)
        self.steps_per_epoch = max(1, per_rank // config.batch_size)
        total_steps = self.steps_per_epoch * config.epochs
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, total_steps,
                                                                           config.min_lr_ratio))
        self.amp_dtype = autocast_dtype(config.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.parts = Checkpointed(self.model, optimizer, scheduler, scaler, config.to_dict(), metadata or {})
        self.augmentation = PairAugmentation(AugmentationConfig.from_dict(config.augmentation))
        self.validation = None
        if val_pairs is not None and self.distributed.is_main:
            tasks = val_tasks or ["val"] * len(val_pairs)
            self.validation = ValidationSet.build(val_pairs, tasks, config.validation_pairs)
        self.state = TrainState()
        self.writer = None
        self._elapsed: Callable[[], float] = lambda: self.state.seconds  # set by fit

    def resume(self) -> None:
        """Continue from ``out_dir/last.pt``, which must come from the same configuration."""
        path = self.out_dir / CHECKPOINT_LAST
        checkpoint = load_checkpoint(path)
        if checkpoint["config"] != self.parts.config:
            raise InputError(f"{path} was trained with another configuration; resume with the same --config")
        self.state = restore_checkpoint(checkpoint, self.parts)

    def fit(self, stop_after_epochs: int | None = None) -> TrainingResult:
        """Train from the current state to ``config.epochs``, or for ``stop_after_epochs`` epochs of
        this call (to fit a time slot; the schedule is unchanged and :meth:`resume` continues later)."""
        config, distributed = self.config, self.distributed
        if distributed.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.parts.config, indent=2) + "\n")
            if config.tensorboard:
                self.writer = _tensorboard_writer(self.out_dir / "tensorboard")
        started, seconds_before = time.perf_counter(), self.state.seconds
        self._elapsed = lambda: seconds_before + time.perf_counter() - started  # over all calls
        end_epoch = config.epochs
        if stop_after_epochs is not None:
            end_epoch = min(config.epochs, self.state.epoch + stop_after_epochs)
        consecutive_bad = 0
        for epoch in range(self.state.epoch, end_epoch):
            means, consecutive_bad = self._train_epoch(epoch, consecutive_bad)
            self.state.epoch = epoch + 1
            if distributed.is_main:
                self._end_epoch(means)
            if distributed.world_size > 1:
                dist.barrier()
        if self.writer is not None:
            self.writer.close()
        if distributed.world_size > 1:
            dist.destroy_process_group()
        return TrainingResult(
            model=self.model.eval(),
            out_dir=self.out_dir,
            epochs_completed=end_epoch,
            steps=self.state.step,
            seconds=self._elapsed(),
            best_score=self.state.best_score,
            best_epoch=self.state.best_epoch,
            best_validation=self.state.best_validation,
            average_validation=self.validation.average if self.validation is not None else {},
            skipped_steps=self.state.skipped_steps,
        )

    def _train_epoch(self, epoch: int, consecutive_bad: int) -> tuple[dict[str, float], int]:
        """One epoch of steps; returns the mean of each loss part over its finite steps, and the
        count of non-finite steps in a row at its end (the guard spans epochs)."""
        config, distributed, state = self.config, self.distributed, self.state
        optimizer, scheduler, scaler = self.parts.optimizer, self.parts.scheduler, self.parts.scaler
        self.model.train()
        order = _seeded_generator(config.seed, epoch, 0, stream=0)  # the same on every rank
        indices = epoch_indices(self.samples_per_epoch, len(self.dataset), order)
        loader = DataLoader(self.dataset, batch_size=config.batch_size,
                            sampler=indices[distributed.rank :: distributed.world_size], drop_last=True)
        augment_generator = _seeded_generator(config.seed, epoch, distributed.rank, stream=1)
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"{config.model} epoch {epoch + 1}/{config.epochs}",
            disable=not (self.progress and distributed.is_main),
            file=sys.stderr,
        )
        sums: dict[str, float] = {}
        counted = 0
        for step_in_epoch, batch in enumerate(loader):
            if step_in_epoch >= self.steps_per_epoch:
                break
            crops = self.augmentation(batch.to(self.device), augment_generator)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                loss, parts = self.trainable(crops)
            finite = loss_finite = self._all_ranks_agree(bool(torch.isfinite(loss.detach())))
            if finite:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                # Gradients are already averaged over the ranks, so every rank sees the same norm.
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                finite = bool(torch.isfinite(grad_norm))
            if finite:
                scaler.step(optimizer)
                scaler.update()
                consecutive_bad = 0
                for name, value in {"total": loss, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                counted += 1
            else:
                if scaler.is_enabled() and loss_finite:
                    # fp16 overflow: unscale_ recorded it; update() lowers the scale and closes the
                    # step's bookkeeping (without it the next unscale_ raises).
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                consecutive_bad += 1
                self._report_skipped(consecutive_bad)
            scheduler.step()
            state.step += 1
            if self.writer is not None and finite:
                self.writer.add_scalar("train/loss", float(loss.detach()), state.step)
                for name, value in parts.items():
                    self.writer.add_scalar(f"train/{name}", float(value.detach()), state.step)
                self.writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], state.step)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update()
        bar.close()
        return {name: total / max(1, counted) for name, total in sums.items()}, consecutive_bad

    def _all_ranks_agree(self, finite: bool) -> bool:
        """Every rank must run backward (its all-reduce) or skip the step together."""
        if self.distributed.world_size == 1:
            return finite
        flag = torch.tensor([float(finite)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _report_skipped(self, consecutive_bad: int) -> None:
        """Log a skipped step; raise :class:`TrainingDivergedError` after too many in a row."""
        step = self.state.step
        message = f"step {step}: non-finite loss or gradient, step skipped ({consecutive_bad} in a row)"
        if self.distributed.is_main:
            tqdm.write(message, file=sys.stderr)
        if self.writer is not None:
            self.writer.add_scalar("train/skipped_steps", self.state.skipped_steps, step)
        if consecutive_bad >= self.config.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"{consecutive_bad} steps in a row had a NaN/Inf loss or gradient at step {step}; "
                "lower learning_rate, use precision fp32, or check the data for NaN"
            )

    def _end_epoch(self, means: dict[str, float]) -> None:
        """Rank 0 after an epoch: validate when due, write ``best.pt`` and ``last.pt``, log a history line."""
        config, state = self.config, self.state
        scheduler = self.parts.scheduler
        line = {"epoch": state.epoch, "step": state.step, "train": means, "lr": scheduler.get_last_lr()[0],
                "seconds": self._elapsed()}
        due = state.epoch % config.validate_every == 0 or state.epoch == config.epochs
        if self.validation is not None and due:
            self.model.eval()
            scores = self.validation.evaluate(self.model, self.device)
            score = selection_score(scores, self.validation.average)
            line["validation"], line["score"] = scores, score
            if self.writer is not None:
                _log_validation(self.writer, self.model, self.validation, scores, score, state.epoch, config,
                                self.device)
            if score > state.best_score:
                state.best_score, state.best_epoch, state.best_validation = score, state.epoch, scores
                state.seconds = self._elapsed()
                save_checkpoint(self.out_dir / CHECKPOINT_BEST, self.parts, state)
        elif self.validation is None:
            state.best_epoch = state.epoch
            state.seconds = self._elapsed()
            save_checkpoint(self.out_dir / CHECKPOINT_BEST, self.parts, state)
        state.seconds = self._elapsed()
        save_checkpoint(self.out_dir / CHECKPOINT_LAST, self.parts, state)
        with open(self.out_dir / "history.jsonl", "a") as log:
            log.write(json.dumps(line) + "\n")


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

    A :class:`Trainer` under ``config.num_threads`` torch threads (restored after). ``resume``:
    continue from ``out_dir/last.pt``; ``stop_after_epochs``: see :meth:`Trainer.fit`. Raises
    :class:`InputError` for an existing run without ``resume`` or a resume without a checkpoint.
    """
    last_path = Path(out_dir) / CHECKPOINT_LAST
    with torch_threads(config.num_threads or None):
        if resume and not last_path.is_file():
            raise InputError(f"--resume: no checkpoint {last_path}; start without --resume")
        if not resume and last_path.is_file():
            raise InputError(f"{out_dir} already holds a training run ({last_path.name}); "
                             "pass --resume to continue it or choose another --out")
        trainer = Trainer(config, train_pairs, out_dir, val_pairs=val_pairs, val_tasks=val_tasks, device=device,
                          progress=progress, metadata=metadata)
        if resume:
            trainer.resume()
        return trainer.fit(stop_after_epochs)


def _initial_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict in ``init_weights`` (safetensors only, never a pickle)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InputError(f"init_weights: no such file {path}; give a .safetensors file of the same architecture")
    return load_file(path, device="cpu")


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
            writer.add_scalars(f"validation/{task}/{name}", {"model": value, "average": validation.average[task][name]},
                               epoch)
    if epoch % config.image_every:
        return
    for task, pairs in validation.pairs.items():
        first = pairs[:1]
        fused = torch.from_numpy(fuse_levels(model, first, device)).float() / 255.0
        sources = first[0].float() / 255.0
        grid = torch.cat([sources[0], sources[1], fused[0]], dim=1).unsqueeze(0)  # A | B | fused
        writer.add_image(f"fused/{task}", grid.clamp(0, 1), epoch)
