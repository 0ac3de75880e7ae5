"""The contract every fusion model keeps, and that the slice engine relies on.

A fusion model is a :class:`FusionNet`: ``forward(a, b)`` takes two ``(B, 1, H, W)`` float32
tensors in [0, 1] (the same anatomy in two modalities) and returns one ``(B, 1, H, W)`` float32
tensor in [0, 1], for any ``H, W >= 1``. Three class attributes tell
:class:`~MedFusionLib.fusion.engine.SliceFuser` how much of a slice it must feed the model for the
output inside a box to equal a whole-slice pass, and :meth:`FusionNet.fuse_for_inference` is the
model's own exact rewrite for inference (:func:`~MedFusionLib.models.optimize.prepare_for_inference`
calls it after folding BatchNorms).
"""

from __future__ import annotations

from torch import nn


class FusionNet(nn.Module):
    """Base class of every fusion model (learned networks and training-free rules).

    Class attributes (a subclass whose value depends on its configuration overrides the
    attribute with a read-only property):

    * ``receptive_radius``: pixels of input beyond an output pixel that can change it (``int``),
      or ``None`` when it is not bounded (the engine then feeds whole slices).
    * ``size_multiple``: the input's height and width must be a multiple of this for the strided
      layers to sample one grid; the engine starts crops on it.
    * ``window_step``: crops also start and end on this grid. Each new input shape makes oneDNN
      build new convolution kernels, which is worth avoiding for networks of many small layers and
      not for a few heavy ones; widening a crop only adds context, so the output is unchanged.
    """

    receptive_radius: int | None = None
    size_multiple: int = 1
    window_step: int = 1

    def fuse_for_inference(self) -> None:
        """Rewrite this (eval-mode, BatchNorm-folded) copy into a faster exact equivalent, in place.

        The default does nothing; a network with such a rewrite (HAF's gate pairs) overrides it.
        Not for a module that will be trained afterwards.
        """
