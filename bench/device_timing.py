"""Time per 240×240 slice of each learned network through the slice engine, per precision.

Speed does not depend on the weights, so the networks are built untrained (``pretrained=False``)
and fed noise: whole slices (no foreground boxes), batches of the engine's default size for the
device, the mean of three passes over ``--slices`` slices after a warm-up. Meant for a GPU machine
without SimpleITK (it runs where only torch is installed, like bench/device_training_sweep.py);
on the CPU it times fp32 only.

    python bench/device_timing.py [--slices 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
MODELS = ("emfusion", "emfusion-full", "haf", "haf-full", "densefuse")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=None, help="slices per pass (default 128 on CUDA, 4 on the CPU)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    sys.path.insert(0, str(REPOSITORY / "bench"))
    from device_training_sweep import _placeholder_for_missing_simpleitk

    _placeholder_for_missing_simpleitk()
    import numpy as np
    import torch

    from MedFusionLib.fusion.engine import SliceFuser
    from MedFusionLib.models import create_model, parameter_count

    device = "cuda" if torch.cuda.is_available() else "cpu"
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    slices = args.slices or (128 if device == "cuda" else 4)
    precisions = ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {slices} slices of 240x240")
    rng = np.random.default_rng(0)
    a = rng.random((slices, 240, 240), dtype=np.float32)
    b = rng.random((slices, 240, 240), dtype=np.float32)
    print("| model | parameters | " + " | ".join(precisions) + " |")
    print("|---|---|" + "---|" * len(precisions))
    for model_name in MODELS:
        cells = []
        for precision in precisions:
            model = create_model(model_name, pretrained=False)
            fuser = SliceFuser(model, device=device, precision=precision)
            fuser.fuse_stack(a[:8], b[:8])  # warm-up: kernels chosen, memory allocated
            synchronize()
            started = time.perf_counter()
            for _ in range(3):
                fuser.fuse_stack(a, b)
            synchronize()
            cells.append(f"{1e3 * (time.perf_counter() - started) / 3 / slices:.2f}")
        print(f"| {model_name} | {parameter_count(model):,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
