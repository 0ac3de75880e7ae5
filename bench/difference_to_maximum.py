"""How far each model's output is from the pixel-wise maximum of the sources, on the Harvard val pairs.

A model can score well on Q^AB/F, SD or MI by copying the brighter source at every pixel, which
on CT-MRI paints the CT's bone and the brighter soft tissue over the MRI. This prints, per task,
the mean absolute difference (8-bit grey levels, over all pixels of all val pairs) between each
model's fused image and ``maximum``'s, and the same for ``average`` as a yardstick: a value near 0
would mean the model is the maximum rule in disguise.

    python bench/difference_to_maximum.py --data ../shared/data/harvard \
        --models emfusion,emfusion-full,haf,haf-full,densefuse
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the Harvard folder (pairs.csv)")
    parser.add_argument("--models", default="emfusion,emfusion-full,haf,haf-full,densefuse",
                        help="comma-separated models (shipped weights)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    import numpy as np
    import torch

    from MedFusionLib.datasets.harvard import HARVARD_TASKS, load_harvard_pairs_array
    from MedFusionLib.models import create_model
    from MedFusionLib.training.validation import fuse_levels

    cpu = torch.device("cpu")
    names = [name.strip() for name in args.models.split(",") if name.strip()] + ["average"]
    print("| model | " + " | ".join(HARVARD_TASKS) + " |")
    print("|---|" + "---|" * len(HARVARD_TASKS))
    rows: dict[str, list[str]] = {name: [] for name in names}
    for task in HARVARD_TASKS:
        pairs, _ = load_harvard_pairs_array(args.data, [task], "val")
        maximum = fuse_levels(create_model("maximum"), pairs, cpu)
        for name in names:
            fused = fuse_levels(create_model(name), pairs, cpu)
            rows[name].append(f"{np.abs(fused - maximum).mean():.2f}")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
