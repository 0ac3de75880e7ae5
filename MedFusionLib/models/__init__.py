"""Fusion models: a registry of learned networks and training-free baselines.

Every model is a :class:`FusionNet` (the contract the slice engine relies on).
``create_model(name, pretrained=True, device=...)`` builds one; ``list_models()`` names them all.
Importing this package imports each architecture module so that it registers itself.
"""

from MedFusionLib.models import baselines, densefuse, emfusion, haf  # noqa: F401  (registration side effect)
from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.registry import (
    ModelSpec,
    architecture_config,
    create_model,
    list_models,
    model_spec,
    parameter_count,
)

__all__ = [
    "FusionNet", "ModelSpec", "architecture_config", "create_model", "list_models", "model_spec", "parameter_count",
]
