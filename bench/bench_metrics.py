"""How long the fusion metrics take on one 256 x 256 pair (the Harvard image size).

Each row times one metric of :mod:`MedFusionLib.evaluation.metrics` on a fused image and its two sources
and divides by scikit-image's ``structural_similarity`` of one image pair, measured in the same
process (the ratio is what carries over between machines). Best of ``--repeats`` runs.

    python bench/bench_metrics.py [--repeats 5] [--size 256]
"""

from __future__ import annotations

import argparse

import numpy as np

from MedFusionLib.devtools.timing import best_seconds
from MedFusionLib.evaluation import metrics


def synthetic_pair(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth MR-like image, a ringed CT-like image and their rounded mean, as 8-bit levels."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    radius = np.hypot(x, y)
    mr = np.where(radius < 0.8, 100 + 80 * np.sin(6 * x) * np.cos(5 * y), 0) + rng.normal(0, 3, (size, size))
    ct = np.where(radius < 0.8, np.where(radius > 0.7, 240, 40), 0)
    a, b = np.clip(np.round(mr), 0, 255), ct.astype(np.float64)
    return np.round((a + b) / 2), a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    fused, a, b = synthetic_pair(args.size)

    from skimage.metrics import structural_similarity

    baseline = best_seconds(lambda: structural_similarity(fused, a, data_range=255), args.repeats, warmups=1)
    print(f"{args.size} x {args.size}, best of {args.repeats}; baseline skimage SSIM(F, A): {1000 * baseline:.2f} ms\n")
    print(f"{'metric':<8} {'ms':>8} {'x baseline':>11}")
    total = 0.0
    for name, metric in metrics.METRICS.items():
        inputs = (fused, a, b) if metric.uses_sources else (fused,)
        seconds = best_seconds(lambda: metric.function(*inputs), args.repeats, warmups=1)
        total += seconds
        print(f"{name:<8} {1000 * seconds:8.2f} {seconds / baseline:11.2f}")
    whole = best_seconds(lambda: metrics.score(fused, a, b), args.repeats, warmups=1)
    print(f"{'sum':<8} {1000 * total:8.2f} {total / baseline:11.2f}")
    print(f"{'score()':<8} {1000 * whole:8.2f} {whole / baseline:11.2f}")


if __name__ == "__main__":
    main()
