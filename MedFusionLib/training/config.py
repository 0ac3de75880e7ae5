"""What defines a training run: :class:`TrainingConfig`, its shipped defaults and overrides.

The defaults of each learned model live in ``MedFusionLib/configs/<model>.json``. They hold no
architecture: a model is built from its class's defaults (the shipped architecture) updated by
``model_config``, so the architecture is stated once, in the model's file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from MedFusionLib.core.errors import InputError
from MedFusionLib.core.precision import PRECISION_CHOICES
from MedFusionLib.core.settings import reject_unknown_settings
from MedFusionLib.datasets.augmentation import AugmentationConfig
from MedFusionLib.models import model_spec
from MedFusionLib.training.losses import FusionLossWeights

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OBJECTIVES = ("fusion", "reconstruction")
PRECISIONS = PRECISION_CHOICES


@dataclass
class TrainingConfig:
    """Everything that defines a training run (a JSON file; the defaults are in ``configs/``).

    ``model_config``: constructor arguments that differ from the architecture's defaults.
    ``samples_per_epoch``: crops drawn per epoch (0: one per training pair).
    ``warmup_steps``: linear warm-up from 0; then cosine decay to ``min_lr_ratio`` × lr.
    ``precision``: ``auto`` (fp16 autocast + GradScaler on CUDA, fp32 on CPU), ``fp32``,
    ``bf16`` (autocast on either device), ``fp16`` (CUDA only).
    ``validation_pairs``: validation pairs scored per task (0: all), spread evenly.
    ``num_threads``: torch CPU threads while training (0: leave torch's setting).
    ``init_weights``: a ``.safetensors`` file of this architecture to start from (fine-tuning);
    empty: random initialisation from ``seed``.
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
    init_weights: str = ""

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        reject_unknown_settings(cls, values, "training")
        if "model" not in values:
            raise InputError("a training config needs 'model' (emfusion, haf or densefuse)")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        spec = model_spec(self.model)  # raises UnknownModelError listing the names
        if not spec.learned:
            raise InputError(
                f"model {self.model!r} has nothing to train; choose a learned model (emfusion, haf, densefuse)"
            )
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
            merge = isinstance(values.get(key), dict) and isinstance(value, dict)
            values[key] = {**values[key], **value} if merge else value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainingConfig.from_dict(values)
