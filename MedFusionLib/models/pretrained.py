"""Shipped trained weights: where they live, how they are verified and loaded.

Each learned model ``NAME`` ships ``MedFusionLib/weights/NAME.safetensors`` and a model card
``NAME.json`` holding at least ``sha256`` (of the weights file) and ``config`` (the keyword
arguments the architecture was built with). Weights are only ever read as safetensors, never
pickles, and only after their hash matches the card; finding and verifying the files needs no torch
and lives in :mod:`MedFusionLib.core.model_files`.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from MedFusionLib.core.files import sha256_of  # noqa: F401  (tests and tools hash files through this module)
from MedFusionLib.core.model_files import (  # noqa: F401  (the torch side reads the same verified cards)
    WEIGHTS_DIR,
    load_model_card_verified,
    model_card_path,
    weights_path,
    weights_status,
)


def load_pretrained_state(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The verified model card and the state dict of ``name`` (tensors on the CPU)."""
    card = load_model_card_verified(name)
    return card, load_file(str(weights_path(name)), device="cpu")
