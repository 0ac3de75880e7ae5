"""The shipped model files, found and verified without torch.

Each learned model ``NAME`` ships ``weights/NAME.safetensors`` (for torch), ``weights/NAME.onnx``
(the same network exported for the CPU runtimes) and a model card ``weights/NAME.json`` holding the
sha256 of both: ``sha256`` for the safetensors file and ``onnx.sha256`` for the ONNX file. The
training-free rules have no weights; their exported graphs (``average.onnx`` …) are described in
``weights/training-free.json``. A file is only ever used after its hash matches its card.

The card's ``onnx`` section also carries the slice engine's crop geometry (``receptive_radius``,
``size_multiple``, ``window_step``) and ``min_size``: the smallest slice side for which the graph
equals the network (a graph traced at one size freezes choices that the torch code makes per size,
such as the Laplacian pyramid's number of levels).
"""

from __future__ import annotations

import json
from pathlib import Path

from MedFusionLib.core.choices import AUTO_MODEL, LEARNED_MODELS, MODEL_CHOICES
from MedFusionLib.core.errors import UnknownModelError, WeightsIntegrityError, WeightsNotAvailableError
from MedFusionLib.core.files import sha256_of

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
TRAINING_FREE_CARD = "training-free.json"


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def onnx_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.onnx"


def model_card_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.json"


def is_learned(name: str) -> bool:
    """True for a network with trained weights, False for a training-free rule; the registry of
    :mod:`MedFusionLib.models` registers exactly these (a test checks it)."""
    if name not in MODEL_CHOICES or name == AUTO_MODEL:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(MODEL_CHOICES)} "
            "(`medfusion models` lists them with descriptions)"
        )
    return name in LEARNED_MODELS


def _read_card(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsIntegrityError(f"model card {path} is unreadable ({error}); reinstall medfusion") from None


def _check(path: Path, expected: str | None, card: Path) -> None:
    if not isinstance(expected, str):
        raise WeightsIntegrityError(f"model card {card} records no sha256 for {path.name}; reinstall medfusion")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{path} does not match its model card {card.name} (sha256 {actual[:12]}… != {expected[:12]}…): "
            "the file is corrupt or was replaced; reinstall medfusion"
        )


def load_model_card_verified(name: str) -> dict:
    """Read ``NAME.json`` and check the safetensors weights against its ``sha256``."""
    weights, card_path = weights_path(name), model_card_path(name)
    if not weights.is_file() or not card_path.is_file():
        raise WeightsNotAvailableError(
            f"no trained weights are shipped for model {name!r} (expected {weights} and {card_path.name}). "
            "Use a training-free model instead (e.g. --model laplacian), or pass pretrained=False "
            "for a randomly initialised network to train."
        )
    card = _read_card(card_path)
    _check(weights, card.get("sha256"), card_path)
    return card


def weights_status(name: str) -> str:
    """``"ok"``, ``"missing"`` or ``"corrupt"`` (hash mismatch or unreadable card) of ``name``'s safetensors."""
    if not weights_path(name).is_file() or not model_card_path(name).is_file():
        return "missing"
    try:
        load_model_card_verified(name)
    except WeightsIntegrityError:
        return "corrupt"
    return "ok"


def onnx_card(name: str) -> dict:
    """The ``onnx`` section describing ``NAME.onnx`` (sha256, opset, crop geometry, ``min_size``)."""
    learned = is_learned(name)
    card_path = model_card_path(name) if learned else WEIGHTS_DIR / TRAINING_FREE_CARD
    if not card_path.is_file():
        raise WeightsNotAvailableError(
            f"no model card for {name!r} ({card_path} is missing); reinstall medfusion, or use --runtime torch"
        )
    card = _read_card(card_path)
    section = card.get("onnx") if learned else card.get(name, {}).get("onnx")
    if not isinstance(section, dict):
        raise WeightsNotAvailableError(
            f"no exported ONNX network is recorded for model {name!r} in {card_path.name}; "
            "reinstall medfusion (or export it: MedFusionLib.models.onnx_export.ship_onnx), or use --runtime torch"
        )
    return section


def verified_onnx(name: str) -> tuple[Path, dict]:
    """``NAME.onnx`` checked against the sha256 in its card, and that card's ``onnx`` section.

    Raises :class:`WeightsNotAvailableError` when the file or its card is missing and
    :class:`WeightsIntegrityError` when the hash does not match.
    """
    section = onnx_card(name)
    path = onnx_path(name)
    if not path.is_file():
        raise WeightsNotAvailableError(
            f"the exported network {path} is missing; reinstall medfusion, or use --runtime torch"
        )
    card_path = model_card_path(name) if is_learned(name) else WEIGHTS_DIR / TRAINING_FREE_CARD
    _check(path, section.get("sha256"), card_path)
    return path, section


def onnx_status(name: str) -> str:
    """``"ok"``, ``"missing"`` or ``"corrupt"`` for ``NAME.onnx`` and its card."""
    try:
        verified_onnx(name)
    except WeightsNotAvailableError:
        return "missing"
    except WeightsIntegrityError:
        return "corrupt"
    return "ok"


def model_description(name: str) -> str:
    """The one-line description of ``name`` from its card (what the registry says, without torch)."""
    if is_learned(name):
        path = model_card_path(name)
        return _read_card(path).get("description", "") if path.is_file() else ""
    path = WEIGHTS_DIR / TRAINING_FREE_CARD
    return _read_card(path).get(name, {}).get("description", "") if path.is_file() else ""
