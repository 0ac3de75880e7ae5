"""Inference form of a fusion model: the same function, laid out to run fast.

:func:`prepare_for_inference` folds every BatchNorm into the convolution before it (one pass
over the features instead of two; exact up to float rounding), in a copy so the caller's network
keeps its layers, and, where it pays, sets the channels-last memory format that oneDNN (CPU) and
cuDNN (CUDA) convolutions prefer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from MedFusionLib.models.base import FusionNet


def fold_batch_norms(module: nn.Module) -> int:
    """Fold each ``Conv2d`` directly followed by a ``BatchNorm2d`` in a ``Sequential``, in place.

    The convolution takes the normalisation's scale and shift; the BatchNorm becomes an
    ``Identity``. Only valid in eval mode (running statistics). Returns how many were folded.
    """
    folded = 0
    for child in module.children():
        if isinstance(child, nn.Sequential):
            for index in range(len(child) - 1):
                conv, norm = child[index], child[index + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    child[index] = fuse_conv_bn_eval(conv, norm)
                    child[index + 1] = nn.Identity()
                    folded += 1
        folded += fold_batch_norms(child)
    return folded


def has_convolutions(module: nn.Module) -> bool:
    """True when ``module`` has ``Conv2d`` layers (what channels-last speeds up)."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def prepare_for_inference(model: FusionNet, device: torch.device, channels_last: bool) -> FusionNet:
    """``model`` in eval mode on ``device``, BatchNorms folded, optionally channels-last.

    A model with BatchNorms is copied, folded and rewritten by its own
    :meth:`~MedFusionLib.models.base.FusionNet.fuse_for_inference` (which assumes folded
    BatchNorms), so the caller's module keeps its layers; like ``Module.to``, moving to the device
    and layout acts on the module itself otherwise.
    The :class:`FusionNet` contract (``receptive_radius``, ``size_multiple``, ``window_step``)
    is kept.
    """
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model = copy.deepcopy(model)
        fold_batch_norms(model.eval())
        model.fuse_for_inference()
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
