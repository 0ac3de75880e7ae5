"""Shipped trained weights: where they live, how they are verified and loaded.

Each learned model ``NAME`` ships ``MedFusionLib/weights/NAME.safetensors`` and a model card
``NAME.json`` holding at least ``sha256`` (of the weights file) and ``config`` (the keyword
arguments the architecture was built with). Weights are only ever read as safetensors, never
pickles, and only after their hash matches the card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from MedFusionLib.core.errors import WeightsIntegrityError, WeightsNotAvailableError
from MedFusionLib.core.files import sha256_of

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def model_card_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.json"


def weights_status(name: str) -> str:
    """``"ok"``, ``"missing"`` or ``"corrupt"`` (hash mismatch or unreadable card) for ``name``."""
    if not weights_path(name).is_file() or not model_card_path(name).is_file():
        return "missing"
    try:
        load_model_card_verified(name)
    except WeightsIntegrityError:
        return "corrupt"
    return "ok"


def load_model_card_verified(name: str) -> dict:
    """Read ``NAME.json`` and check the weights file against its ``sha256``."""
    weights, card_path = weights_path(name), model_card_path(name)
    if not weights.is_file() or not card_path.is_file():
        raise WeightsNotAvailableError(
            f"no trained weights are shipped for model {name!r} (expected {weights} and {card_path.name}). "
            "Use a training-free model instead (e.g. --model laplacian), or pass pretrained=False "
            "for a randomly initialised network to train."
        )
    try:
        card = json.loads(card_path.read_text())
        expected = card["sha256"]
    except (ValueError, KeyError) as error:
        raise WeightsIntegrityError(
            f"model card {card_path} is unreadable or has no 'sha256' ({error}); reinstall medfusion"
        ) from None
    actual = sha256_of(weights)
    if actual != expected:
        raise WeightsIntegrityError(
            f"weights file {weights} does not match its model card (sha256 {actual[:12]}… != {expected[:12]}…): "
            "the file is corrupt or was replaced; reinstall medfusion"
        )
    return card


def load_pretrained_state(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The verified model card and the state dict of ``name`` (tensors on the CPU)."""
    card = load_model_card_verified(name)
    return card, load_file(str(weights_path(name)), device="cpu")
