"""Fit the Harvard PET and SPECT pseudo-colour maps from the pictures, and measure how well they fit.

The Harvard Whole Brain Atlas pictures hold no scalar uptake, only colours; every colour of one
modality lies near one curve through RGB space that starts at black. The fit finds that curve
as a principal curve: colours are ordered by their distance from black along a nearest-neighbour
graph of the observed colours (the curve's own path, not a straight line through RGB), averaged
in bins of that order to a first polyline, then refined by projecting every pixel on the
polyline and re-averaging (a k-segment principal curve). The scalar of the map is arc length,
normalised to [0, 1]. The control points it prints are the ones in
``MedFusionLib/imaging/colour.py``; the table shows, for those shipped maps, how far the
pictures' pixels lie from the map (RGB distance, 0-255 units), over the train and val pairs.

    python bench/fit_colour_maps.py [--data ../shared/data/harvard] [--points 12]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from MedFusionLib.imaging.colour import COLOUR_MAPS

TASKS = {"harvard-pet": ("PET-MRI", "PET"), "harvard-spect": ("SPECT-MRI", "SPECT")}
# Pixels darker than this (sum of R, G, B) are background: counted once as the curve's start.
DARK = 24


def pixels(data: Path, task: str, modality: str, split: str) -> np.ndarray:
    """All pixels ``(N, 3)`` float of one task's functional pictures in ``split``."""
    with open(data / "pairs.csv", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle) if row["task"] == task and row["split"] == split]
    # Every other row and column: neighbouring pixels of these smooth pictures repeat each other.
    return np.concatenate(
        [
            np.asarray(Image.open(data / task / modality / f"{name}.png").convert("RGB"))[::2, ::2].reshape(-1, 3)
            for name in ids
        ]
    ).astype(np.float64)


def project(points: np.ndarray, polyline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest point of ``polyline`` (``(K, 3)``) to each of ``points``: its arc-length parameter
    in [0, 1] and the distance."""
    starts, ends = polyline[:-1], polyline[1:]
    segment = ends - starts
    lengths = np.linalg.norm(segment, axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    best_distance = np.full(len(points), np.inf)
    best_parameter = np.zeros(len(points))
    for k in range(len(segment)):
        t = np.clip(((points - starts[k]) @ segment[k]) / max(lengths[k] ** 2, 1e-9), 0.0, 1.0)
        distance = np.linalg.norm(points - (starts[k] + t[:, None] * segment[k]), axis=1)
        better = distance < best_distance
        best_distance[better] = distance[better]
        best_parameter[better] = (cumulative[k] + t[better] * lengths[k]) / cumulative[-1]
    return best_parameter, best_distance


def fit_curve(values: np.ndarray, points: int, iterations: int = 8) -> np.ndarray:
    """A principal curve through ``values`` (``(N, 3)`` RGB) from black: ``(points, 3)``."""
    colours = values[values.sum(axis=1) > DARK]
    quantised, counts = np.unique(np.round(colours / 8.0).astype(int), axis=0, return_counts=True)
    keep = counts >= max(3, counts.sum() * 1e-5)  # rare colours: edges blended with black, noise
    nodes = np.vstack([[0, 0, 0], quantised[keep]]) * 8.0
    tree = cKDTree(nodes)
    distances, neighbours = tree.query(nodes, k=8)
    rows = np.repeat(np.arange(len(nodes)), 8)
    from scipy.sparse import csr_matrix

    graph = csr_matrix((distances.ravel() + 1e-6, (rows, neighbours.ravel())), shape=(len(nodes), len(nodes)))
    along = dijkstra(graph, directed=False, indices=0)
    reachable = np.isfinite(along)
    order = along[reachable] / along[reachable].max()
    bins = np.minimum((order * (points - 1)).astype(int), points - 2)
    polyline = np.vstack(
        [[0.0, 0.0, 0.0]] + [nodes[reachable][bins == k].mean(axis=0) for k in range(points - 1) if (bins == k).any()]
    )
    for _ in range(iterations):
        parameter, _distance = project(colours, polyline)
        edges = np.linspace(0.0, 1.0, points)
        refined = [np.zeros(3)]
        for k in range(1, points):
            near = np.abs(parameter - edges[k]) <= 0.5 / (points - 1)
            refined.append(colours[near].mean(axis=0) if near.any() else polyline[min(k, len(polyline) - 1)])
        polyline = np.asarray(refined)
    return np.clip(polyline, 0.0, 255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard"
    )
    parser.add_argument("--points", type=int, default=12, help="control points of each fitted map")
    args = parser.parse_args()
    print("| map | split | pixels (non-black, 1 in 4) | mean distance | 95th pct | 99th pct | fitted now: mean |")
    print("|---|---|---|---|---|---|---|")
    for name, (task, modality) in TASKS.items():
        train = pixels(args.data, task, modality, "train")
        fitted = fit_curve(train, args.points)
        shipped = np.asarray(COLOUR_MAPS[name], dtype=np.float64)[:, 1:]  # linear between control points
        for split, values in (("train", train), ("val", pixels(args.data, task, modality, "val"))):
            colours = values[values.sum(axis=1) > DARK]
            _, distance = project(colours, shipped)
            _, distance_fitted = project(colours, fitted)
            p95, p99 = np.percentile(distance, [95, 99])
            print(
                f"| {name} | {split} | {len(colours)} | {distance.mean():.1f} | {p95:.1f} | {p99:.1f} | "
                f"{distance_fitted.mean():.1f} |"
            )
        print(f"\n{name} fitted control points (position, R, G, B):")
        for position, rgb in zip(np.linspace(0.0, 1.0, len(fitted)), fitted):
            print(f"    ({position:.3f}, {rgb[0]:.0f}, {rgb[1]:.0f}, {rgb[2]:.0f}),")
        print(f"  shipped: {COLOUR_MAPS[name]}\n")


if __name__ == "__main__":
    main()
