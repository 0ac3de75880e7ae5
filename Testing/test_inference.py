"""The fast fusion path: cropped inference equals whole slices, folding, precision, streaming, benchmark."""

from __future__ import annotations

import json
import logging
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError
from MedFusionLib.core.precision import ACCURACY_BUDGET, autocast_dtype, cpu_has_native_bf16
from MedFusionLib.devtools.benchmark import (
    BenchmarkPair,
    FusionRow,
    benchmark_fusion,
    benchmark_registration,
    default_runtimes,
    markdown_report,
    naive_fuse,
)
from MedFusionLib.fusion import pipeline
from MedFusionLib.fusion.engine import SliceFuser
from MedFusionLib.fusion.pipeline import fuse_arrays
from MedFusionLib.imaging.normalization import normalize_intensity, slice_boxes
from MedFusionLib.models import FusionNet, create_model
from MedFusionLib.models.haf import HAFNet
from MedFusionLib.models.optimize import fold_batch_norms, prepare_for_inference
from MedFusionLib.runtimes import installed_runtimes

LEARNED = ["emfusion", "haf", "densefuse"]


@pytest.fixture(scope="module")
def normalized_pair(phantom_pair):
    """The phantom CT/MR as ``(Z, Y, X)`` float32 stacks in [0, 1]."""
    return (
        normalize_intensity(sitk.GetArrayFromImage(phantom_pair.ct)),
        normalize_intensity(sitk.GetArrayFromImage(phantom_pair.mr)),
    )


def _whole_slices(model: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None])[:, 0].clamp(0, 1).numpy()


@pytest.mark.parametrize("name", LEARNED)
def test_cropped_inference_equals_a_whole_slice_pass(name, normalized_pair):
    """Boxes anywhere (touching an edge, odd sizes and offsets: HAF's stride-4 grid) give what
    the unmodified network gives on whole slices, within fp32 rounding."""
    a, b = (stack[10:16] for stack in normalized_pair)
    height, width = a.shape[1:]
    boxes = [(0, 9, 0, width), (5, 30, 7, 22), (13, 14, 31, 32), None, (height - 11, height, width - 5, width),
             (3, height - 2, 1, width - 3)]
    fuser = SliceFuser(create_model(name), device="cpu")
    fused = fuser.fuse_stack(a, b, boxes, out=np.full(a.shape, -1.0, np.float32))
    expected = _whole_slices(create_model(name), a, b)
    for index, box in enumerate(boxes):
        if box is None:
            assert (fused[index] == -1.0).all()  # untouched
            continue
        top, bottom, left, right = box
        np.testing.assert_allclose(fused[index, top:bottom, left:right], expected[index, top:bottom, left:right],
                                   atol=1e-5, rtol=0)
        outside = np.ones((height, width), bool)
        outside[top:bottom, left:right] = False
        assert (fused[index][outside] == -1.0).all()


@pytest.mark.parametrize("name", LEARNED)
def test_declared_receptive_radius_bounds_what_an_input_pixel_changes(name):
    """Cropping is only exact if the radius is right: perturb one pixel, nothing farther changes."""
    model = create_model(name)
    a, b = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)), torch.rand(1, 1, 64, 64)
    reach = 0
    with torch.no_grad():
        base = model(a, b)
        for row, column in ((32, 32), (33, 30), (30, 33), (31, 31)):
            moved = a.clone()
            moved[0, 0, row, column] += 0.5
            rows, columns = torch.nonzero((model(moved, b) - base)[0, 0] != 0, as_tuple=True)
            reach = max(reach, int((rows - row).abs().max()), int((columns - column).abs().max()))
    assert 0 < reach <= model.receptive_radius


def test_batching_and_side_by_side_slices_give_the_same_volume(normalized_pair):
    a, b = normalized_pair
    boxes = slice_boxes((a > 0.05) | (b > 0.05), 2)
    single = SliceFuser(create_model("emfusion"), device="cpu", batch_size=1)
    assert single.parallel_slices == min(torch.get_num_threads(), 8)
    threads = torch.get_num_threads()
    one_at_a_time = single.fuse_stack(a, b, boxes)
    assert torch.get_num_threads() == threads  # restored after the side-by-side run
    batched = SliceFuser(create_model("emfusion"), device="cpu", batch_size=7).fuse_stack(a, b, boxes)
    np.testing.assert_allclose(one_at_a_time, batched, atol=1e-5, rtol=0)


def test_threads_apply_while_fusing_and_are_restored(normalized_pair):
    """The engine never leaves the process's torch thread count changed."""
    a, b = (stack[10:12] for stack in normalized_pair)
    before = torch.get_num_threads()
    seen = []

    class _Recording(FusionNet):
        receptive_radius = 0

        def forward(self, x, y):
            seen.append(torch.get_num_threads())
            return (x + y) / 2

    fuser = SliceFuser(_Recording(), device="cpu", batch_size=2, threads=before + 1)
    assert torch.get_num_threads() == before  # building the fuser changes nothing
    fuser.fuse_stack(a, b)
    assert seen == [before + 1] and torch.get_num_threads() == before


def test_the_engine_is_handed_a_fusion_net_not_a_name():
    with pytest.raises(TypeError, match="FusionNet"):
        SliceFuser("emfusion", device="cpu")
    with pytest.raises(TypeError, match="FusionNet"):
        SliceFuser(torch.nn.Identity(), device="cpu")


def test_folding_batch_norms_keeps_the_function_and_the_callers_module():
    torch.manual_seed(0)
    model = HAFNet(widths=(8, 16, 32), pyramid_channels=8, decoder_channels=8).eval()
    with torch.no_grad():  # non-trivial statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    a, b = torch.rand(2, 1, 40, 44), torch.rand(2, 1, 40, 44)
    with torch.no_grad():
        expected = model(a, b)
        prepared = prepare_for_inference(model, torch.device("cpu"), channels_last=True)
        folded = prepared(a.contiguous(memory_format=torch.channels_last),
                          b.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert prepared.gate_pairs is not None and model.gate_pairs is None  # HAF's gates merged in the copy
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is intact
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=0)
    assert fold_batch_norms(HAFNet(widths=(8, 16, 32)).eval()) == 28  # every conv+BN pair of the net


def test_precision_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None  # bf16 misses the accuracy budget: fp32 on CPUs
    assert autocast_dtype("auto", cuda) is torch.float16
    assert autocast_dtype("fp32", cuda) is None
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(InputError, match="unknown precision"):
        autocast_dtype("int8", cpu)
    assert ACCURACY_BUDGET == pytest.approx(1 / 255)


def test_bf16_on_a_cpu_without_native_support_warns(caplog):
    if cpu_has_native_bf16():
        pytest.skip("this CPU computes bf16 natively")
    with caplog.at_level(logging.WARNING, logger="MedFusionLib"):
        assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert "emulated" in caplog.text


def test_fp16_on_the_cpu_is_refused_by_the_command(phantom_pair, tmp_path, capsys):
    ct, mr = tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"
    sitk.WriteImage(phantom_pair.ct, str(ct))
    sitk.WriteImage(phantom_pair.mr, str(mr))
    code = main(["fuse", str(ct), str(mr), "-o", str(tmp_path / "f.nii.gz"), "--device", "cpu", "--precision", "fp16"])
    assert code == 2 and "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "f.nii.gz").exists()


def _traced_peak(function) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fusion_streams_slabs_so_memory_beyond_the_output_is_bounded(monkeypatch):
    """numpy allocations while fusing (traced): the output plus a few slabs, not whole-volume
    temporaries; and the slab size does not change the result."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, size=(48, 64, 64)).astype(np.int16)
    b = rng.integers(0, 1000, size=(48, 64, 64)).astype(np.int16)

    def scale(slab):
        return np.asarray(slab, np.float32) / np.float32(1000.0)

    fuser = SliceFuser(create_model("average"), device="cpu")
    whole, whole_peak = _traced_peak(lambda: fuse_arrays(a, b, scale, scale, 0, fuser))
    slab_voxels = 2 * 64 * 64
    monkeypatch.setattr(pipeline, "SLAB_VOXELS", slab_voxels)
    slabs, slab_peak = _traced_peak(lambda: fuse_arrays(a, b, scale, scale, 0, fuser))
    np.testing.assert_array_equal(whole[0], slabs[0])
    output_bytes = whole[0].nbytes
    assert slab_peak <= output_bytes + 12 * 4 * slab_voxels
    assert whole_peak > 3 * output_bytes  # in one slab: normalised copies of both whole volumes


def _small_pair(phantom_pair) -> BenchmarkPair:
    """The phantom with six empty slices above and below the head (52 slices)."""
    ct = sitk.ConstantPad(phantom_pair.ct, (0, 0, 6), (0, 0, 6), -1000.0)
    mr = sitk.ConstantPad(phantom_pair.mr, (0, 0, 6), (0, 0, 6), 0.0)
    return BenchmarkPair(ct, mr, "phantom 48×56×52")


def test_benchmark_rows_compare_the_product_with_the_naive_loop(phantom_pair):
    lines = []
    # (the exported laplacian needs slices of 64 px or more: its CPU-runtime rows would be left out here)
    rows = benchmark_fusion(_small_pair(phantom_pair), ["emfusion", "average"], device="cpu", repeats=2,
                            report=lines.append)
    runtimes = default_runtimes(torch.device("cpu"))  # every installed one: torch, and openvino/onnxruntime here
    assert runtimes[0] == "torch"
    assert [(row.model, row.path, row.runtime) for row in rows] == [
        (model, path, runtime) for model in ("emfusion", "average")
        for path, runtime in [("naive", "torch")] + [("product", runtime) for runtime in runtimes]]
    per_model = 1 + len(runtimes)
    for naive, *products in (rows[:per_model], rows[per_model:]):
        assert naive.speedup == 1.0 and naive.within_budget is None
        for product in products:
            assert product.within_budget is True and product.max_abs_diff <= 1e-5 and product.precision == "fp32"
            assert product.fused_slices <= 40 < naive.fused_slices == 52  # empty slices are skipped
            assert product.seconds > 0 and product.voxels_per_second > 0
            assert product.speedup == pytest.approx(naive.seconds / product.seconds)
    assert len(lines) == len(rows) and lines[1].startswith("| emfusion | product | torch | fp32 |")


def test_naive_reference_is_the_same_fused_volume_as_the_pipeline(phantom_pair):
    # The naive loop normalises by percentiles; the pipeline would window a CT ("auto"), so say "none".
    fused = sitk.GetArrayFromImage(pipeline.fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="emfusion",
                                                         reference_window="none").fused)
    naive = naive_fuse(create_model("emfusion"), sitk.GetArrayViewFromImage(phantom_pair.ct),
                       sitk.GetArrayViewFromImage(phantom_pair.mr), torch.device("cpu"))
    np.testing.assert_allclose(fused, naive, atol=1e-5, rtol=0)


def test_registration_rows_and_markdown(phantom_pair):
    rows, load_seconds = benchmark_registration(_small_pair(phantom_pair), ["rigid"], ["simpleitk"],
                                                report=lambda _: None)
    assert load_seconds is None and len(rows) == 1
    assert rows[0].error == "" and rows[0].metric_after < rows[0].metric_before and rows[0].seconds > 0
    report = {
        "machine": {"cpu": "test CPU", "cpu_features": ["avx2"], "cores_available": 2, "torch_threads": 2,
                    "torch": torch.__version__, "device": "cpu"},
        "input": "phantom",
        "fusion": [vars(FusionRow("emfusion", "product", "fp32", 1, 1.0, 10.0, 1e6, 4.0, 100.0, 1e-6, 30, True))],
        "registration": [vars(rows[0])],
        "elastix_load_seconds": None,
    }
    text = markdown_report(json.loads(json.dumps(report)))
    assert "| emfusion | product | torch | fp32 | 1 | 1.00 | 10.0 | 1.00 | 4.00× | 100 | 1.0e-06 ✓ | 30 |" in text
    assert "| rigid | simpleitk |" in text and "test CPU" in text


def test_benchmark_command_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--models", "average", "--size", "40x40x24", "--registration", "none",
                 "--device", "cpu", "--json", str(out), "--data", str(_phantom_case(tmp_path))])
    assert code == 0
    report = json.loads(out.read_text())
    runtimes = [name for name in ("torch", "openvino", "onnxruntime") if installed_runtimes()[name]]
    assert [(row["path"], row["runtime"]) for row in report["fusion"]] == [("naive", "torch")] + [
        ("product", runtime) for runtime in runtimes]
    assert all(row["within_budget"] is True for row in report["fusion"][1:])
    printed = capsys.readouterr().out
    for runtime in runtimes:
        assert f"| average | product | {runtime} | fp32 |" in printed


def test_benchmark_command_times_the_runtimes_and_precisions_asked_for(tmp_path, capsys):
    if not installed_runtimes()["openvino"]:
        pytest.skip("OpenVINO is not installed")
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--models", "average", "--size", "40x40x24", "--registration", "none",
                 "--device", "cpu", "--runtimes", "torch,openvino", "--precisions", "fp32,bf16,fp16",
                 "--json", str(out), "--data", str(_phantom_case(tmp_path))])
    assert code == 0
    rows = json.loads(out.read_text())["fusion"]
    # fp32 is auto's precision on the CPU (timed once); fp16 is CUDA's only
    assert [(row["path"], row["runtime"], row["precision"]) for row in rows] == [
        ("naive", "torch", "fp32"), ("product", "torch", "fp32"), ("product", "torch", "bf16"),
        ("product", "openvino", "fp32"), ("product", "openvino", "bf16")]
    assert "openvino 20" in capsys.readouterr().out  # the machine line names the runtimes' versions


def _phantom_case(tmp_path):
    from MedFusionLib.imaging.phantom import make_head_phantom

    phantom = make_head_phantom(size=(40, 40, 24), spacing=(5.0, 5.0, 6.0), seed=2)
    case = tmp_path / "case"
    case.mkdir()
    sitk.WriteImage(phantom.ct, str(case / "t1.nii.gz"))
    sitk.WriteImage(phantom.mr, str(case / "t2.nii.gz"))
    return case


def test_benchmark_command_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--models", "nope"])
    assert "unknown model nope" in capsys.readouterr().err


def test_best_seconds_runs_warmups_untimed_and_before_each_timed_run():
    from MedFusionLib.devtools.timing import best_seconds

    calls = []
    seconds = best_seconds(lambda: calls.append("run"), 3, warmups=2, before=lambda: calls.append("before"))
    assert calls == ["run", "run"] + ["before", "run"] * 3 and 0 <= seconds < 1
    with pytest.raises(ValueError, match="repeats"):
        best_seconds(lambda: None, 0)
