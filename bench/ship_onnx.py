"""Export every shipped model to ONNX beside its weights and record each file in its card.

    python bench/ship_onnx.py            # all models
    python bench/ship_onnx.py haf emfusion

The learned networks are exported from their verified safetensors (their cards gain an ``onnx``
section with the file's sha256); the training-free rules are recorded in ``training-free.json``.
``medfusion train`` writes the ONNX file of a new run itself (MedFusionLib.training.export).
"""

from __future__ import annotations

import sys

from MedFusionLib.core.choices import AUTO_MODEL, MODEL_CHOICES
from MedFusionLib.models.onnx_export import ship_onnx

if __name__ == "__main__":
    for name in sys.argv[1:] or [name for name in MODEL_CHOICES if name != AUTO_MODEL]:
        path = ship_onnx(name)
        print(f"{name:14s} {path} ({path.stat().st_size / 1e6:.2f} MB)")
