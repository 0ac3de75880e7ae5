"""OpenVINO in lower precision against fp32: bf16 and int8 (NNCF post-training quantisation).

For each model, in one process:

- **accuracy** on the Harvard val slices (every task, 256×256; MRI as ``a``, CT or the Y channel
  of PET/SPECT as ``b``, on [0, 1]): the largest |Δ| and its 99.9th percentile over all pixels,
  against the same network on OpenVINO in fp32;
- **speed** on the product path (:func:`~MedFusionLib.fusion.pipeline.fuse_arrays` with
  :class:`~MedFusionLib.fusion.engine.SliceFuser`) on the shared BraTS T1/T2 pair, the precisions
  timed in rounds (fp32, bf16, int8, fp32, ...), each the fastest of ``--repeats``; speed-up =
  fp32's seconds / its seconds, with max |Δ| against fp32 on that volume too.

A precision is worth keeping only where it is faster **and** its max |Δ| on val is at most one
8-bit grey level (1/255); the last column says so. int8: the exported ONNX graph quantised by
``nncf.quantize`` (default preset, calibrated on ``--calibration`` Harvard train pairs at
256×256; ``--preset mixed``, ``--accurate-bias`` to try NNCF's other settings) and saved as
OpenVINO IR under ``--cache``; it runs with fp32 for what stays
unquantised. NNCF is not a dependency: install it anywhere, e.g. ``pip install --target
/tmp/nncf-site nncf`` and pass ``--site /tmp/nncf-site``; without it the int8 rows are skipped.
Usage::

    python bench/bench_precision.py --models emfusion,haf --repeats 3 --site /tmp/nncf-site
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MedFusionLib.core.precision import ACCURACY_BUDGET  # noqa: E402
from MedFusionLib.devtools.shared_data import shared_data_dir  # noqa: E402

CASE = "TCGA-DU-7294"


def harvard_slices(split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``: ``(n, 256, 256)`` float32 in [0, 1] of the Harvard pairs in ``split`` (every task):
    the MRI, and the CT or the full-range BT.601 Y of the colour PET/SPECT."""
    from PIL import Image

    folder = shared_data_dir() / "harvard"
    with (folder / "pairs.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    if limit is not None:
        rows = rows[:: max(1, len(rows) // limit)][:limit]  # spread over the tasks and cases
    a, b = [], []
    for row in rows:
        task = folder / row["task"]
        mri = np.asarray(Image.open(task / "MRI" / f"{row['id']}.png").convert("L"), dtype=np.float32)
        other = np.asarray(Image.open(task / row["other_modality"] / f"{row['id']}.png").convert("RGB"),
                           dtype=np.float32)
        luminance = np.clip(np.round(other @ np.float32([0.299, 0.587, 0.114])), 0, 255)
        a.append(mri / 255.0)
        b.append(luminance / 255.0)
    return np.stack(a).astype(np.float32), np.stack(b).astype(np.float32)


def openvino_network(model: str, precision: str, threads: int | None, cache: Path, calibration: int,
                     preset: str = "default", accurate_bias: bool = False):
    """The shipped ``model`` on OpenVINO in ``precision`` (``fp32``, ``bf16`` or ``int8``); int8 with
    NNCF's ``preset`` (``default`` or ``mixed``) and, with ``accurate_bias``, its slower bias correction."""
    from MedFusionLib.core.model_files import verified_onnx
    from MedFusionLib.runtimes import MAX_STREAMS, load_network
    from MedFusionLib.runtimes.openvino_network import OpenVINONetwork, openvino_core

    if precision != "int8":
        return load_network(model, "openvino", "cpu", precision, threads)
    path, geometry = verified_onnx(model)
    quantised = cache / f"{model}-int8-{calibration}-{preset}{'-bias' if accurate_bias else ''}.xml"
    if not quantised.exists():
        import nncf
        import openvino as ov

        a, b = harvard_slices("train", calibration)
        items = [{"a": a[i : i + 1, None], "b": b[i : i + 1, None]} for i in range(len(a))]
        started = time.perf_counter()
        options = {"preset": nncf.QuantizationPreset.MIXED} if preset == "mixed" else {}
        if accurate_bias:
            options["fast_bias_correction"] = False
        result = nncf.quantize(openvino_core().read_model(str(path)), nncf.Dataset(items),
                               subset_size=len(items), **options)
        cache.mkdir(parents=True, exist_ok=True)
        ov.save_model(result, str(quantised))
        print(f"{model}: quantised to int8 with nncf {nncf.__version__} on {len(items)} Harvard train pairs "
              f"in {time.perf_counter() - started:.0f} s -> {quantised}", flush=True)
    network = OpenVINONetwork(model, quantised, geometry, "fp32", threads, min(threads or os.cpu_count() or 1,
                                                                               MAX_STREAMS))
    network.precision = "int8"
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="emfusion,haf")
    parser.add_argument("--precisions", default="bf16,int8", help="compared with fp32 (default bf16,int8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calibration", type=int, default=300, help="Harvard train pairs for int8 calibration")
    parser.add_argument("--preset", default="default", choices=("default", "mixed"), help="int8: NNCF's preset")
    parser.add_argument("--accurate-bias", action="store_true", help="int8: NNCF's slower bias correction")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-int8")
    parser.add_argument("--site", default=None, help="a folder holding nncf (appended to sys.path)")
    args = parser.parse_args()
    if args.site:
        sys.path.append(args.site)
    precisions = ["fp32"] + [p for p in args.precisions.split(",") if p != "fp32"]
    if "int8" in precisions:
        try:
            import nncf  # noqa: F401
        except ImportError:
            print("nncf is not importable: the int8 rows are skipped (see --site)")
            precisions.remove("int8")

    import SimpleITK as sitk

    from MedFusionLib.devtools.benchmark import _product_fuse
    from MedFusionLib.fusion.engine import SliceFuser

    val_a, val_b = harvard_slices("val")
    brats = shared_data_dir() / "brats" / CASE
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(brats / "t1.nii.gz")))
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(brats / "t2.nii.gz")))
    middle = slice(len(t1) // 2, len(t1) // 2 + 1)
    rows = []
    for model in args.models.split(","):
        networks = {p: openvino_network(model, p, args.threads, args.cache, args.calibration, args.preset,
                                        args.accurate_bias) for p in precisions}
        val = {p: np.concatenate([network.fuse(val_a[i : i + 8], val_b[i : i + 8])
                                  for i in range(0, len(val_a), 8)]) for p, network in networks.items()}
        fusers = {p: SliceFuser(network) for p, network in networks.items()}
        for fuser in fusers.values():
            _product_fuse(fuser, t1[middle], t2[middle])  # warm-up
        best = dict.fromkeys(precisions, float("inf"))
        volume_difference = dict.fromkeys(precisions, 0.0)
        for _ in range(args.repeats):
            reference = None
            for precision, fuser in fusers.items():
                started = time.perf_counter()
                fused, _ = _product_fuse(fuser, t1, t2)
                best[precision] = min(best[precision], time.perf_counter() - started)
                reference = fused if reference is None else reference
                volume_difference[precision] = max(volume_difference[precision],
                                                   float(np.abs(fused - reference).max()))
        for precision in precisions:
            difference = np.abs(val[precision] - val["fp32"])
            faster, within = best[precision] < best["fp32"], float(difference.max()) <= ACCURACY_BUDGET
            verdict = "(baseline)" if precision == "fp32" else (
                "keep" if faster and within else "no: " + " and ".join(
                    [reason for reason, bad in (("slower", not faster), ("over 1/255", not within)) if bad]))
            rows.append(f"| {model} | {precision} | {best[precision]:.2f} | {best['fp32'] / best[precision]:.2f}× "
                        f"| {volume_difference[precision]:.1e} | {difference.max():.1e} "
                        f"| {np.percentile(difference, 99.9):.1e} | {verdict} |")
            print(rows[-1], flush=True)
    from MedFusionLib.runtimes.openvino_network import ov

    print(f"\nOpenVINO {ov.get_version()}; BraTS {CASE} T1/T2 product path, fastest of {args.repeats} round(s); "
          f"Harvard val: {len(val_a)} pairs 256×256 (every task); |Δ| against OpenVINO fp32\n")
    print("| model | precision | s / BraTS volume | speed-up vs fp32 | max abs diff, BraTS | max abs diff, val "
          "| 99.9th pct abs diff, val | kept? (faster and max ≤ 1/255) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
