"""The model registry: every fusion method by name, built with :func:`create_model`.

A fusion model is a :class:`~MedFusionLib.models.base.FusionNet` (``forward(a, b)``: two
``(B, 1, H, W)`` float32 tensors in [0, 1] -> one). Its architecture configuration is the keyword
arguments of its class, whose defaults are the shipped architecture; the model card of shipped
weights records the arguments they were built with. Learned models need trained weights
(:mod:`MedFusionLib.models.pretrained`); training-free baselines have none.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from MedFusionLib.core.errors import UnknownModelError
from MedFusionLib.models.base import FusionNet


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one model."""

    name: str
    description: str  # one line, shown in `medfusion models` and the Slicer panel
    builder: Callable[..., FusionNet]
    learned: bool  # True: trainable parameters that need shipped weights
    reference: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, learned: bool, reference: str = "") -> Callable:
    """Class decorator that adds a :class:`FusionNet` subclass to the registry under ``name``."""

    def decorate(builder: type[FusionNet]) -> type[FusionNet]:
        if not (isinstance(builder, type) and issubclass(builder, FusionNet)):
            raise TypeError(f"model {name!r}: {builder!r} is not a FusionNet subclass")
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
) -> FusionNet:
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


def architecture_config(name: str, **config) -> dict:
    """Every constructor argument of model ``name``: its class's defaults updated by ``config``.

    What a model card stores beside the weights, so that they load whatever later defaults are.
    Tuples become lists (as JSON keeps them). Unknown arguments raise ``TypeError`` as the
    constructor would.
    """
    signature = inspect.signature(model_spec(name).builder)
    bound = signature.bind(**config)
    bound.apply_defaults()
    return {key: list(value) if isinstance(value, tuple) else value for key, value in bound.arguments.items()}


def parameter_count(model: torch.nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
