"""Figures and numbers for functional (PET/SPECT) colour fusion and the source map (README sections).

Writes, under ``--out`` (default ``docs/``):

- ``functional-phantom.png``: the phantom head's MRI, its PET (own 4 mm grid, resampled by
  coordinates) through the ``harvard-pet`` map, the colour fusion, and the grey fusion of the same
  pair without ``--functional``; axial plane through the lesion, coronal and sagittal through a
  hot focus that the MRI does not show.
- ``functional-harvard.png``: one Harvard PET-MRI validation pair: MRI, the PET picture, its uptake
  recovered through the fitted map and coloured again, the literature's YCbCr fusion of the
  picture, and the same pair fused through ``--functional harvard-pet`` from the recovered uptake.
- ``source-map.png``: EMFusion's source map on the BraTS TCGA-DU-7294 T1/T2 pair and on the
  phantom CT/MR pair (blue = reference, red = moving, white = either).

and prints tables: the share of each source by region, the Harvard round trip's differences.

    python bench/functional_figures.py [--data ../shared/data] [--out docs] [--model emfusion]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from MedFusionLib.evaluation.figures import PANEL_SIZE, display_slice, save_figure
from MedFusionLib.fusion.functional import coloured_volume, functional_bounds, resample_by_coordinates
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.imaging.colour import colour_map_table, scalar_from_colour
from MedFusionLib.imaging.functional_phantom import HOT_SPOTS, make_functional_phantom
from MedFusionLib.imaging.phantom import make_head_phantom

LABEL = 22
PLANES = ("axial", "coronal", "sagittal")
LESION_MM = (26.0, -22.0, 24.0)  # the phantom's lesion (MedFusionLib/imaging/phantom.py): planes through it


def rgb_image(values: np.ndarray, like: sitk.Image, colours: str = "coolwarm") -> sitk.Image:
    """A [0, 1] array through a matplotlib colour map, as an RGB uint8 image with ``like``'s geometry."""
    rgb = (matplotlib.colormaps[colours](np.clip(values, 0.0, 1.0))[..., :3] * 255.0).round().astype(np.uint8)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.CopyInformation(like)
    return image


def grid(panels: dict[str, sitk.Image], rows: list[tuple[str, int | None]]) -> Image.Image:
    """Panels in columns, one row per ``(plane, index)``; ``index`` None = the middle slice."""
    figure = Image.new("RGB", (PANEL_SIZE * len(panels), (PANEL_SIZE + LABEL) * len(rows)), "black")
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    for row, (plane, index) in enumerate(rows):
        for column, (label, image) in enumerate(panels.items()):
            pixels = Image.fromarray(display_slice(image, plane, index)).convert("RGB")
            top = row * (PANEL_SIZE + LABEL)
            figure.paste(
                pixels,
                (
                    column * PANEL_SIZE + (PANEL_SIZE - pixels.width) // 2,
                    top + LABEL + (PANEL_SIZE - pixels.height) // 2,
                ),
            )
            draw.text(
                (column * PANEL_SIZE + 6, top + 5),
                f"{label} · {plane}" if image.GetDimension() == 3 else label,
                fill="white",
                font=font,
            )
    return figure


def with_colour_bar(figure: Image.Image, table: np.ndarray, left: str, right: str) -> Image.Image:
    """``figure`` with a horizontal colour bar of ``table`` (``(N, 3)`` 0-255) and end labels below."""
    bar_height, margin = 14, 8
    result = Image.new("RGB", (figure.width, figure.height + bar_height + 2 * margin + 12), "black")
    result.paste(figure, (0, 0))
    width = min(512, figure.width - 40)
    bar = np.repeat(table[np.linspace(0, len(table) - 1, width).round().astype(int)][None], bar_height, axis=0)
    x0 = (figure.width - width) // 2
    result.paste(Image.fromarray(bar.astype(np.uint8)), (x0, figure.height + margin))
    draw, font = ImageDraw.Draw(result), ImageFont.load_default()
    draw.text((x0, figure.height + margin + bar_height + 2), left, fill="white", font=font)
    draw.text((x0 + width - 6 * len(right), figure.height + margin + bar_height + 2), right, fill="white", font=font)
    return result


def planes_through(image: sitk.Image, point_mm) -> list[tuple[str, int]]:
    """Slice indices of ``image`` (as :func:`display_slice` orients it, LPS) through ``point_mm``."""
    index = sitk.DICOMOrient(image, "LPS").TransformPhysicalPointToIndex(point_mm)
    return [("axial", index[2]), ("coronal", index[1]), ("sagittal", index[0])]


def phantom_functional(out: Path, model: str) -> None:
    phantom = make_head_phantom(seed=3)  # CT and MR on one 1.25 × 1.25 × 1.5 mm grid
    pet = make_functional_phantom("pet", seed=3)
    started = time.perf_counter()
    colour = fuse_volumes(
        phantom.mr, pet, model=model, registration="resample", functional="harvard-pet", device="cpu", source_map=True
    )
    seconds = time.perf_counter() - started
    grey = fuse_volumes(
        phantom.mr, resample_by_coordinates(phantom.mr, pet), model=model, registration="none", device="cpu"
    )
    bounds = functional_bounds(sitk.GetArrayViewFromImage(pet))
    pet_colour = coloured_volume(resample_by_coordinates(phantom.mr, pet), bounds, "harvard-pet")
    panels = {
        "MRI (reference)": phantom.mr,
        "PET, harvard-pet": pet_colour,
        f"{model} --functional": colour.fused,
        f"{model}, grey": grey.fused,
    }
    # Axial through the lesion (bright on the MR too), coronal and sagittal through a hot focus the
    # MR does not show: grey fusion makes it look like anatomy, colour fusion does not.
    rows = planes_through(phantom.mr, LESION_MM)[:1] + planes_through(phantom.mr, HOT_SPOTS[0][0])[1:]
    figure = with_colour_bar(
        grid(panels, rows), colour_map_table("harvard-pet"), "0", f"{bounds[1]:.1f} (SUV, 99.9th pct)"
    )
    save_figure(figure, out / "functional-phantom.png", overwrite=True)
    print(
        f"\nphantom MR {phantom.mr.GetSize()} + PET {pet.GetSize()} at {pet.GetSpacing()} mm, {model}: "
        f"{seconds:.1f} s ({colour.fused_slices} slices, with the source map); moving scaled as: "
        f"{colour.windows['moving']}"
    )
    uptake = sitk.GetArrayFromImage(resample_by_coordinates(phantom.mr, pet))
    mr = sitk.GetArrayFromImage(phantom.mr)
    brain = (uptake > 0.25 * bounds[1]) & (mr > 250)
    share_table(
        f"phantom MR (reference) / PET luminance through harvard-pet (moving), {model}",
        sitk.GetArrayFromImage(colour.source_map),
        {
            "hot (uptake above the range's top)": uptake >= bounds[1],
            "cortex (uptake 60-95 % of the top)": (uptake > 0.6 * bounds[1]) & (uptake < 0.95 * bounds[1]),
            "white matter (uptake 25-45 %)": brain & (uptake < 0.45 * bounds[1]),
            "ventricles (MR > 800, uptake < 25 %)": (mr > 800) & (uptake < 0.25 * bounds[1]) & (uptake > 0),
        },
    )


def harvard_round_trip(data: Path, out: Path, model: str, case: str) -> None:
    root = data / "harvard" / "PET-MRI"
    mri = sitk.ReadImage(str(root / "MRI" / f"{case}.png"))
    picture = sitk.ReadImage(str(root / "PET" / f"{case}.png"))
    rgb = sitk.GetArrayFromImage(picture)[..., :3]
    uptake, distance = scalar_from_colour(rgb, "harvard-pet")
    uptake_image = sitk.GetImageFromArray(uptake)
    uptake_image.CopyInformation(mri)
    standard = fuse_volumes(mri, picture, model=model, device="cpu")  # the literature's Y fusion of the picture
    through_map = fuse_volumes(
        mri, uptake_image, model=model, device="cpu", functional="harvard-pet", functional_range="0,1"
    )
    recoloured = coloured_volume(uptake_image, (0.0, 1.0), "harvard-pet")
    difference = np.abs(
        sitk.GetArrayFromImage(standard.fused).astype(int) - sitk.GetArrayFromImage(through_map.fused).astype(int)
    )
    lit = rgb.sum(axis=-1) > 24
    print(
        f"\nHarvard PET-MRI {case} ({model}): picture to map, RGB distance over non-black pixels: "
        f"mean {distance[lit].mean():.1f}, "
        f"95th pct {np.percentile(distance[lit], 95):.1f}; fused picture vs fused through the map, |RGB difference|: "
        f"mean {difference.mean():.2f}, 99th pct {np.percentile(difference, 99):.0f}, max {difference.max()}"
    )
    panels = {
        "MRI": mri,
        "PET picture": picture,
        "uptake via harvard-pet, recoloured": recoloured,
        f"{model}, picture (YCbCr)": standard.fused,
        f"{model} --functional": through_map.fused,
    }
    save_figure(grid(panels, [("axial", None)]), out / "functional-harvard.png", overwrite=True)


def share_table(name: str, share: np.ndarray, regions: dict[str, np.ndarray]) -> None:
    print(f"\n| {name}: region | voxels | mean share of moving | share < 0.3 | share > 0.7 |")
    print("|---|---|---|---|---|")
    for region, mask in regions.items():
        values = share[mask]
        below, above = np.mean(values < 0.3), np.mean(values > 0.7)
        print(f"| {region} | {values.size} | {values.mean():.2f} | {below:.0%} | {above:.0%} |")


def source_maps(data: Path, out: Path, model: str) -> None:
    rows = []
    case = data / "brats" / "TCGA-DU-7294"
    t1, t2 = sitk.ReadImage(str(case / "t1.nii.gz")), sitk.ReadImage(str(case / "t2.nii.gz"))
    started = time.perf_counter()
    result = fuse_volumes(t1, t2, model=model, device="cpu", source_map=True)
    print(f"\nBraTS TCGA-DU-7294 T1 + T2, {model} with source map: {time.perf_counter() - started:.1f} s")
    share = sitk.GetArrayFromImage(result.source_map)
    a, b = sitk.GetArrayFromImage(t1).astype(np.float32), sitk.GetArrayFromImage(t2).astype(np.float32)
    brain = (a > 0) | (b > 0)
    t1_high, t2_high = np.percentile(a[brain], 75), np.percentile(b[brain], 75)
    share_table(
        "BraTS T1 (reference) / T2 (moving)",
        share,
        {
            "brain": brain,
            "T2 bright, T1 not (CSF, oedema)": brain & (b > t2_high) & (a < np.percentile(a[brain], 50)),
            "T1 bright, T2 not (white matter)": brain & (a > t1_high) & (b < np.percentile(b[brain], 50)),
            "background": ~brain,
        },
    )
    rows.append(
        (
            {
                "T1 (reference)": t1,
                "T2 (moving)": t2,
                f"{model} fused": result.fused,
                "source map": rgb_image(share, t1),
            },
            ("axial", None),
        )
    )

    phantom = make_head_phantom(seed=3)
    result = fuse_volumes(phantom.ct, phantom.mr, model=model, device="cpu", source_map=True)
    share = sitk.GetArrayFromImage(result.source_map)
    ct, mr = sitk.GetArrayFromImage(phantom.ct), sitk.GetArrayFromImage(phantom.mr)
    share_table(
        f"phantom CT (reference) / MR (moving), CT scaled as {result.windows['reference']}",
        share,
        {
            "skull (CT > 600 HU)": ct > 600,
            "ventricles and CSF (MR > 800, CT < 20 HU)": (mr > 800) & (ct < 20) & (ct > -100),
            "white matter (CT 20-32 HU, MR 300-460)": (ct > 20) & (ct < 32) & (mr > 300) & (mr < 460),
            "air": ct < -900,
        },
    )
    rows.append(
        (
            {
                "CT (reference)": phantom.ct,
                "MR (moving)": phantom.mr,
                f"{model} fused": result.fused,
                "source map": rgb_image(share, phantom.ct),
            },
            ("axial", planes_through(phantom.ct, LESION_MM)[0][1]),
        )
    )
    figures = [grid(panels, [row]) for panels, row in rows]
    stacked = Image.new("RGB", (max(f.width for f in figures), sum(f.height for f in figures)), "black")
    top = 0
    for figure in figures:
        stacked.paste(figure, (0, top))
        top += figure.height
    table = (matplotlib.colormaps["coolwarm"](np.linspace(0, 1, 256))[:, :3] * 255).round()
    save_figure(with_colour_bar(stacked, table, "0: reference", "1: moving"), out / "source-map.png", overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--model", default="emfusion")
    parser.add_argument("--case", default="30027", help="Harvard PET-MRI pair (a val id)")
    parser.add_argument("--only", choices=("phantom", "harvard", "source-map"), default=None)
    args = parser.parse_args()
    with open(args.data / "harvard" / "pairs.csv", newline="") as handle:
        assert any(row["id"] == args.case for row in csv.DictReader(handle)), f"no Harvard pair {args.case}"
    if args.only in (None, "phantom"):
        phantom_functional(args.out, args.model)
    if args.only in (None, "harvard"):
        harvard_round_trip(args.data, args.out, args.model, args.case)
    if args.only in (None, "source-map"):
        source_maps(args.data, args.out, args.model)


if __name__ == "__main__":
    main()
