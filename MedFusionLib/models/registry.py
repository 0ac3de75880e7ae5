"""The model registry: every fusion method by name, built with :func:`create_model`.

A fusion model is an ``nn.Module`` whose ``forward(a, b)`` takes two ``(B, 1, H, W)`` float32
tensors in [0, 1] (the same anatomy in two modalities) and returns one ``(B, 1, H, W)`` float32
tensor in [0, 1], for any ``H, W >= 1``. Learned models need trained weights
(:mod:`MedFusionLib.models.pretrained`); training-free baselines have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from MedFusionLib.core.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one model."""

    name: str
    description: str  # one line, shown in `medfusion models` and the Slicer panel
    builder: Callable[..., nn.Module]
    learned: bool  # True: trainable parameters that need shipped weights
    reference: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, learned: bool, reference: str = "") -> Callable:
    """Class decorator that adds a model class (or factory) to the registry under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, description, builder, learned, reference)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of every registered model: learned ones first, then baselines, each alphabetical."""
    return sorted(_REGISTRY, key=lambda name: (not _REGISTRY[name].learned, name))


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; raises :class:`UnknownModelError` listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())} "
            "(`medfusion models` lists them with descriptions)"
        ) from None


def create_model(
    name: str,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    **config,
) -> nn.Module:
    """Build the model ``name`` on ``device``, in eval mode.

    ``pretrained=True`` loads the shipped weights of a learned model, after checking their sha256
    against the model card, with the architecture configuration stored in that card; if none are
    shipped it raises :class:`~MedFusionLib.core.errors.WeightsNotAvailableError` rather than returning
    random weights. ``pretrained=False`` gives a freshly initialised network (for training), built
    from ``config``. Baselines ignore ``pretrained``. Call ``.train()`` on the result to train it.
    """
    from MedFusionLib.models.pretrained import load_pretrained_state  # late: pretrained imports this module

    spec = model_spec(name)
    if spec.learned and pretrained:
        card, state = load_pretrained_state(name)
        model = spec.builder(**{**card.get("config", {}), **config})
        model.load_state_dict(state, strict=True)
    else:
        model = spec.builder(**config)
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
