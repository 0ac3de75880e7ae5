"""Export a checkpoint as shipped weights: ``<model>.safetensors``, its ONNX export ``<model>.onnx``
(for the CPU runtimes) and its model card ``<model>.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from MedFusionLib.core.files import atomic_output, sha256_of
from MedFusionLib.models import architecture_config, create_model, model_spec, parameter_count
from MedFusionLib.models.onnx_export import export_onnx
from MedFusionLib.training.checkpoints import CHECKPOINT_LAST, load_checkpoint
from MedFusionLib.training.config import TrainingConfig


def export_weights(checkpoint_path: str | Path, out_dir: str | Path, extra_card: dict | None = None) -> tuple[Path,
                                                                                                              Path]:
    """Write ``<model>.safetensors``, ``<model>.onnx`` and their model card ``<model>.json`` from a checkpoint.

    The card holds ``sha256`` and ``config`` (every constructor argument of the architecture, what
    :mod:`MedFusionLib.models.pretrained` builds the network with) and the training facts: the
    run's configuration without ``model_config`` (``config`` states the architecture), the command
    and data, and ``onnx`` (:func:`~MedFusionLib.models.onnx_export.export_onnx`: the export's sha256
    and crop geometry). ``extra_card`` adds or replaces fields (e.g. full validation metrics). Every
    file is written atomically into ``out_dir``. Returns the paths of the weights and the card.
    """
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    config = TrainingConfig.from_dict(checkpoint["config"])
    run_totals = {}
    last_path = checkpoint_path.with_name(CHECKPOINT_LAST)
    if last_path.is_file():  # the whole run, beyond the selected epoch
        last = load_checkpoint(last_path)
        run_totals = {"run_epochs": last["epoch"], "run_steps": last["step"], "run_seconds": round(last["seconds"], 1)}
    model = create_model(config.model, pretrained=False, **config.model_config)
    model.load_state_dict(checkpoint["model"], strict=True)
    out_dir = Path(out_dir)
    weights = out_dir / f"{config.model}.safetensors"
    card_path = out_dir / f"{config.model}.json"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_output(weights, overwrite=True) as temporary:
        save_file(state, str(temporary))
    onnx = export_onnx(model, out_dir / f"{config.model}.onnx")  # for the CPU runtimes
    spec = model_spec(config.model)
    run_config = {key: value for key, value in config.to_dict().items() if key != "model_config"}
    card = {
        "name": config.model,
        "architecture": type(model).__name__,
        "description": spec.description,
        "reference": spec.reference,
        "parameters": parameter_count(model),
        "config": architecture_config(config.model, **config.model_config),
        "training": {
            **json.loads(checkpoint["metadata"]),
            "config": run_config,
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
        "onnx": onnx,
        "sha256": sha256_of(weights),
    }
    with atomic_output(card_path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(card, indent=2) + "\n")
    for path in (weights, card_path):
        path.chmod(0o644)  # package data: readable by every user of an installation
    return weights, card_path
