"""The CPU runtimes (OpenVINO, ONNX Runtime) against torch: the exported graphs reproduce the
networks, the shipped files are verified, the choice of runtime, and a CPU fusion without torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.core import model_files
from MedFusionLib.core.choices import AUTO_MODEL, MODEL_CHOICES
from MedFusionLib.core.errors import (
    DeviceUnavailableError,
    InputError,
    RuntimeUnavailableError,
    WeightsIntegrityError,
    WeightsNotAvailableError,
)
from MedFusionLib.datasets.harvard import load_harvard_pairs, load_pair_images
from MedFusionLib.fusion.engine import SliceFuser
from MedFusionLib.runtimes import choose_runtime, installed_runtimes, load_network

MODELS = [name for name in MODEL_CHOICES if name != AUTO_MODEL]
CPU_RUNTIMES = [runtime for runtime in ("openvino", "onnxruntime") if installed_runtimes()[runtime]]
# fp32 through another runtime's kernels: float rounding only (the bound).
PARITY = 1e-5


def _random_slices(seed: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    return generator.random(shape, dtype=np.float32), generator.random(shape, dtype=np.float32)


def _harvard_val_slices(shared_data: Path, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` CT-MRI val pairs (MRI, CT) as two ``(count, 256, 256)`` stacks in [0, 1]."""
    pairs = [load_pair_images(pair) for pair in load_harvard_pairs(shared_data / "harvard", ["CT-MRI"], "val")[:count]]
    mri, ct = (np.stack([getattr(images, source) for images in pairs]).astype(np.float32) / 255.0
               for source in ("source_a", "source_b"))
    return mri, ct


@pytest.fixture(scope="module")
def torch_networks():
    return {name: load_network(name, runtime="torch", device="cpu") for name in MODELS}


def _assert_same(network, reference_network, a: np.ndarray, b: np.ndarray) -> None:
    expected = reference_network.fuse(a, b)
    actual = network.fuse(a, b)
    assert actual.shape == expected.shape == a.shape and actual.dtype == np.float32
    difference = float(np.abs(actual - expected).max())
    assert difference <= PARITY, f"{network.describe()}: max |Δ| {difference:.2e} against torch"


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
@pytest.mark.parametrize("name", MODELS)
def test_exported_network_reproduces_torch_on_random_slices(name, runtime, torch_networks):
    """Every shipped network on each CPU runtime: random slices of sizes that are and are not a
    multiple of the network's grid (the runtime pads them as the torch network does), batches of
    more than one."""
    network = load_network(name, runtime=runtime)
    assert network.runtime == runtime and network.precision == "fp32"
    for seed, shape in enumerate([(1, 64, 72), (2, 100, 67), (1, 131, 96)]):
        _assert_same(network, torch_networks[name], *_random_slices(seed, shape))


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_exported_networks_reproduce_torch_on_real_slices(runtime, torch_networks, shared_data):
    a, b = _harvard_val_slices(shared_data)
    for name in MODELS:
        _assert_same(load_network(name, runtime=runtime), torch_networks[name], a, b)


@pytest.mark.parametrize("name", MODELS)
def test_reexporting_reproduces_the_shipped_graph(name, tmp_path):
    """The shipped .onnx is what exporting the shipped weights gives today (outputs, not bytes)."""
    ort = pytest.importorskip("onnxruntime")
    from MedFusionLib.models import create_model
    from MedFusionLib.models.onnx_export import export_onnx

    section = export_onnx(create_model(name), tmp_path / f"{name}.onnx")
    shipped_path, shipped = model_files.verified_onnx(name)
    assert {key: section[key] for key in ("receptive_radius", "size_multiple", "window_step", "min_size")} == {
        key: shipped[key] for key in ("receptive_radius", "size_multiple", "window_step", "min_size")}
    a, b = _random_slices(7, (2, 1, 96, 128))
    outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
               for path in (shipped_path, tmp_path / f"{name}.onnx")]
    assert float(np.abs(outputs[0] - outputs[1]).max()) <= 1e-6


def test_training_free_card_and_learned_cards_record_every_graph():
    for name in MODELS:
        path, section = model_files.verified_onnx(name)
        assert path.name == f"{name}.onnx" and len(section["sha256"]) == 64


@pytest.fixture
def copied_weights(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    shutil.copytree(model_files.WEIGHTS_DIR, folder)
    monkeypatch.setattr(model_files, "WEIGHTS_DIR", folder)
    return folder


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_a_changed_graph_is_refused_before_it_runs(runtime, copied_weights):
    graph = copied_weights / "emfusion.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last initialiser
    graph.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="does not match its model card.*reinstall"):
        load_network("emfusion", runtime=runtime)
    assert model_files.onnx_status("emfusion") == "corrupt"
    (copied_weights / "haf.onnx").unlink()
    with pytest.raises(WeightsNotAvailableError, match="haf.onnx is missing"):
        load_network("haf", runtime=runtime)
    # torch reads the safetensors, which are intact
    assert load_network("emfusion", runtime="torch", device="cpu").runtime == "torch"


def test_auto_picks_the_fastest_installed_cpu_runtime(monkeypatch):
    import MedFusionLib.runtimes as runtimes

    def only(*names):
        monkeypatch.setattr(runtimes, "installed_runtimes",
                            lambda: {name: ("1.0" if name in names else None) for name in runtimes.INSTALL_HINTS})

    only("torch", "openvino", "onnxruntime")
    assert choose_runtime("auto", "cpu") == "openvino"
    assert choose_runtime("auto", "cuda:0") == "torch"
    only("torch", "onnxruntime")
    assert choose_runtime("auto", "cpu") == "onnxruntime"
    only("torch")
    assert choose_runtime("auto", "cpu") == "torch"
    only()
    with pytest.raises(RuntimeUnavailableError, match="pip install openvino"):
        choose_runtime("auto", "cpu")
    with pytest.raises(RuntimeUnavailableError, match=r"medfusion\[torch\]"):
        choose_runtime("torch", "cpu")
    only("openvino")
    with pytest.raises(RuntimeUnavailableError, match=r"medfusion\[onnxruntime\]"):
        choose_runtime("onnxruntime", "cpu")
    with pytest.raises(DeviceUnavailableError, match="CPU only.*--runtime torch"):
        choose_runtime("openvino", "cuda:0")
    with pytest.raises(InputError, match="unknown runtime"):
        choose_runtime("tensorrt", "cpu")


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_cpu_runtimes_refuse_what_they_cannot_do(runtime):
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        load_network("haf", runtime=runtime, precision="fp16")
    with pytest.raises(InputError, match="random .*weights exist only in torch"):
        load_network("haf", runtime=runtime, pretrained=False)
    laplacian = load_network("laplacian", runtime=runtime)
    with pytest.raises(InputError, match="at least 64 pixels.*--runtime torch"):
        laplacian.fuse(*_random_slices(0, (1, 40, 80)))


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_the_engine_gives_the_same_volume_on_every_runtime(runtime, normalized_stack):
    """Boxes, windows and slices side by side through a CPU runtime equal the torch engine's result."""
    a, b, boxes = normalized_stack
    for name in ("emfusion", "haf", "densefuse"):
        expected = SliceFuser(load_network(name, runtime="torch", device="cpu")).fuse_stack(a, b, boxes)
        fuser = SliceFuser(load_network(name, runtime=runtime), threads=2)
        assert fuser.runtime == runtime
        actual = fuser.fuse_stack(a, b, boxes)
        assert float(np.abs(actual - expected).max()) <= PARITY, name


@pytest.fixture(scope="module")
def normalized_stack():
    """A small head-like stack in [0, 1] with per-slice boxes of different sizes (odd ones too)."""
    generator = np.random.default_rng(5)
    z, y, x = np.mgrid[:6, :90, :77]
    head = (((y - 45) / 38.0) ** 2 + ((x - 38) / 30.0) ** 2 + ((z - 3) / 5.0) ** 2) < 1
    a = (head * (0.4 + 0.5 * generator.random(head.shape))).astype(np.float32)
    b = (head * (0.2 + 0.7 * (y > 45))).astype(np.float32)
    boxes = [None, (10, 81, 7, 70), (20, 51, 13, 39), (5, 85, 3, 75), (33, 34, 33, 35), (0, 90, 0, 77)]
    return a, b, boxes


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    z, y, x = np.mgrid[:12, :48, :40]
    body = (((y - 24) / 20.0) ** 2 + ((x - 20) / 16.0) ** 2) < 1
    reference = sitk.GetImageFromArray((body * (100 + 3 * x)).astype(np.float32))
    moving = sitk.GetImageFromArray((body * (300 - 4 * y)).astype(np.float32))
    for image in (reference, moving):
        image.SetSpacing((0.9, 0.9, 2.5))
    sitk.WriteImage(reference, str(folder / "reference.nii.gz"))
    sitk.WriteImage(moving, str(folder / "moving.nii.gz"))
    return folder


@pytest.mark.skipif(not installed_runtimes()["openvino"], reason="openvino is not installed")
def test_fusing_on_openvino_imports_no_torch(tiny_pair, tmp_path):
    """The whole `medfusion fuse --runtime openvino` in a fresh process: no torch module is ever imported."""
    output = tmp_path / "fused.nii.gz"
    script = (
        "import sys\n"
        "from MedFusionLib.cli import main\n"
        f"code = main(['fuse', {str(tiny_pair / 'reference.nii.gz')!r}, {str(tiny_pair / 'moving.nii.gz')!r},"
        f" '-o', {str(output)!r}, '--runtime', 'openvino', '--registration', 'none', '--model', 'emfusion',"
        " '--progress', 'none'])\n"
        "assert code == 0, code\n"
        "print('torch modules:', sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
        "import openvino.tools.ovc.telemetry_utils as telemetry\n"
        "print('telemetry:', telemetry.tm.__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "torch modules: []" in run.stdout, run.stdout
    assert "on openvino" in run.stdout
    # OpenVINO's import-time usage event goes to its silent stub, not to Google Analytics
    assert "telemetry: openvino.tools.ovc.telemetry_stub" in run.stdout
    fused = sitk.ReadImage(str(output))
    assert fused.GetSize() == (40, 48, 12) and sitk.GetArrayFromImage(fused).max() > 0.1


def _run_without_torch(arguments: list[str]) -> subprocess.CompletedProcess:
    """``medfusion ARGUMENTS`` in a fresh process where torch cannot be imported (as on an
    installation without the [torch] extra)."""
    script = (
        "import sys\n"
        "for name in ('torch', 'safetensors'):\n"
        "    sys.modules[name] = None  # import torch -> ModuleNotFoundError, find_spec -> None\n"
        "from MedFusionLib.cli import main\n"
        f"sys.exit(main({arguments!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not installed_runtimes()["openvino"], reason="openvino is not installed")
def test_an_installation_without_torch_fuses_and_says_what_needs_torch(tiny_pair, tmp_path):
    output = tmp_path / "fused.nii.gz"
    fused = _run_without_torch(["fuse", str(tiny_pair / "reference.nii.gz"), str(tiny_pair / "moving.nii.gz"),
                                "-o", str(output), "--progress", "none", "--registration", "none"])
    assert fused.returncode == 0, fused.stderr
    assert "on openvino" in fused.stdout and output.is_file()

    doctor = _run_without_torch(["doctor"])
    assert doctor.returncode == 0, doctor.stderr
    assert "torch        not installed" in doctor.stdout and "auto         openvino" in doctor.stdout

    asked_for_torch = _run_without_torch(["fuse", str(tiny_pair / "reference.nii.gz"),
                                          str(tiny_pair / "moving.nii.gz"), "-o", str(tmp_path / "t.nii.gz"),
                                          "--runtime", "torch"])
    assert asked_for_torch.returncode == 2
    assert "the torch runtime is not installed: pip install 'medfusion[torch]'" in asked_for_torch.stderr
    assert not (tmp_path / "t.nii.gz").exists()

    demo = _run_without_torch(["demo", "-o", str(tmp_path / "demo")])  # the README's first command
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "fused.nii.gz").is_file() and (tmp_path / "demo" / "fusion.png").is_file()

    training = _run_without_torch(["train", "--help"])
    assert training.returncode == 2 and "pip install 'medfusion[torch]'" in training.stderr


@pytest.mark.skipif(not installed_runtimes()["openvino"], reason="openvino is not installed")
def test_openvino_fusions_in_fresh_processes_do_not_hang(tiny_pair):
    """The first OpenVINO passes of two slice threads at once deadlocked in about one fresh process in
    fifteen here (`medfusion fuse` hung: pybind11's one-time numpy set-up against a C++ static
    initialisation); the network now makes its first pass before any thread starts. Twelve fresh
    processes, each compiling the network and fusing a small volume, under a watchdog."""
    script = (
        "import faulthandler\n"
        "faulthandler.dump_traceback_later(60, exit=True)\n"
        "from MedFusionLib.fusion.pipeline import fuse_volumes\n"
        f"result = fuse_volumes({str(tiny_pair / 'reference.nii.gz')!r}, {str(tiny_pair / 'moving.nii.gz')!r},"
        " model='emfusion', registration='none', runtime='openvino')\n"
        "print('fused on', result.runtime)\n"
    )
    for attempt in range(12):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "fused on openvino" in run.stdout, (attempt, run.stderr[-3000:])
