"""The ``medfusion`` command: every subcommand, its outputs and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from test_pipeline import assert_same_geometry

from MedFusionLib.cli import COMMANDS, main
from MedFusionLib.io import read_image, write_image
from MedFusionLib.models import create_model, parameter_count


@pytest.fixture()
def phantom_files(phantom_pair, tmp_path):
    ct, mr = tmp_path / "ct.nii.gz", tmp_path / "mr.nrrd"
    write_image(phantom_pair.ct, ct)
    write_image(phantom_pair.mr, mr)
    return ct, mr


def test_console_script_is_installed():
    completed = subprocess.run([sys.executable, "-m", "MedFusionLib", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout.startswith("medfusion ")


def test_fuse_volumes_writes_reference_geometry(phantom_files, tmp_path, capsys):
    ct, mr = phantom_files
    output = tmp_path / "out" / "fused.mha"
    assert main(["fuse", str(ct), str(mr), "-o", str(output), "--model", "laplacian", "--progress", "none"]) == 0
    assert_same_geometry(read_image(output), read_image(ct))
    assert "wrote" in capsys.readouterr().out


def test_fuse_json_progress_is_machine_readable(phantom_files, tmp_path, capsys):
    ct, mr = phantom_files
    assert (
        main(["fuse", str(ct), str(mr), "-o", str(tmp_path / "f.nrrd"), "--progress", "json", "--batch-size", "8"]) == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    fuse_events = [event for event in events if event["stage"] == "fuse"]
    assert fuse_events[0]["done"] == 0 and fuse_events[-1]["done"] == fuse_events[-1]["total"] > 8
    assert len(fuse_events) >= 3


def test_fuse_refuses_to_overwrite_and_leaves_the_file_alone(phantom_files, tmp_path, capsys):
    ct, mr = phantom_files
    output = tmp_path / "fused.nii.gz"
    output.write_bytes(b"precious")
    assert main(["fuse", str(ct), str(mr), "-o", str(output), "--progress", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"precious"
    assert main(["fuse", str(ct), str(mr), "-o", str(output), "--progress", "none", "--overwrite"]) == 0
    assert read_image(output).GetSize() == read_image(ct).GetSize()


def test_fuse_errors_exit_2_with_a_message_and_no_output(phantom_pair, phantom_files, tmp_path, capsys):
    ct, mr = phantom_files
    output = tmp_path / "fused.nii.gz"
    assert main(["fuse", str(ct), str(mr), "-o", str(output), "--model", "unknown-net"]) == 2
    assert "unknown model 'unknown-net'" in capsys.readouterr().err
    shifted = sitk.Image(phantom_pair.mr)
    shifted.SetSpacing([s * 1.1 for s in shifted.GetSpacing()])
    write_image(shifted, tmp_path / "shifted.nii.gz")
    assert main(["fuse", str(ct), str(tmp_path / "shifted.nii.gz"), "-o", str(output), "--registration", "none"]) == 2
    assert "different voxel grids" in capsys.readouterr().err
    assert (
        main(
            [
                "fuse",
                str(ct),
                str(mr),
                "-o",
                str(output),
                "--registration",
                "none",
                "--save-transform",
                str(tmp_path / "t.tfm"),
            ]
        )
        == 2
    )
    assert "needs a registration" in capsys.readouterr().err
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "ct.nii.gz",
        "mr.nrrd",
        "shifted.nii.gz",
    ]


def test_fuse_png_pair_gray_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    gray = (rng.random((48, 40)) * 255).astype(np.uint8)
    colour = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "mri.png")
    Image.fromarray(colour).save(tmp_path / "pet.png")
    assert (
        main(
            [
                "fuse",
                str(tmp_path / "mri.png"),
                str(tmp_path / "pet.png"),
                "-o",
                str(tmp_path / "f.png"),
                "--model",
                "maximum",
            ]
        )
        == 0
    )
    fused = Image.open(tmp_path / "f.png")
    assert fused.mode == "RGB" and fused.size == (40, 48)
    assert (
        main(
            [
                "fuse",
                str(tmp_path / "mri.png"),
                str(tmp_path / "mri.png"),
                "-o",
                str(tmp_path / "g.png"),
                "--model",
                "maximum",
            ]
        )
        == 0
    )
    same = np.asarray(Image.open(tmp_path / "g.png"))
    assert same.ndim == 2 and np.array_equal(same, gray)  # max(x, x) = x, on the 8-bit scale


def test_models_lists_the_registry(capsys):
    from MedFusionLib.core.choices import DEFAULT_MODEL_BY_DEVICE
    from MedFusionLib.models import list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines[0]
    assert "CPU ms/slice" in header and "val (Harvard)" in header
    timing = slice(header.index("weights"), header.index("CPU ms/slice") + len("CPU ms/slice"))
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(list_models())]}
    assert set(rows) == set(list_models())  # every registered model, "auto" not among them
    for line in rows.values():
        assert float(line[timing].split()[-1]) >= 0, line  # a live CPU time, also without weights
    haf_parameters = parameter_count(create_model("haf", pretrained=True))  # the shipped network
    assert f"{haf_parameters:,}" in rows["haf"]
    # The model card's validation block, summarised: wins over average per task, Qabf per task.
    assert re.search(r"beats average on \d/\d/\d of 8 \(CT/PET/SPECT\), Qabf \.\d\d/\.\d\d/\.\d\d", rows["emfusion"])
    assert f"{DEFAULT_MODEL_BY_DEVICE['cpu']} on the CPU" in out and "model auto (the default) picks" in out
    assert re.search(r"slice pair on openvino, median of 3 passes after a warm-up", out)


def test_models_without_timing_is_a_quick_listing(capsys):
    from MedFusionLib.models import list_models

    assert main(["models", "--no-timing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = lines[1 : 1 + len(list_models())]
    column = lines[0].index("CPU ms/slice") + len("CPU ms/slice") - 1
    assert all(row[column] == "-" for row in rows)


def test_doctor_reports_versions_and_devices(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "SimpleITK" in out and "CUDA" in out and "weights:" in out
    # bf16 advice is a measurement made now, never a claim from CPU flags alone.
    assert re.search(r"bf16 \(torch\) .*measured now on a conv stack: \d+\.\d\d× fp32 time \((faster|slower)\)", out)
    # Which runtimes are installed, their versions, and which one auto picks here.
    assert re.search(r"openvino +\d+\.\d+", out) and re.search(r"auto +openvino \(device auto: cpu\)", out)
    assert re.search(r"haf +ok +ok", out)


def test_demo_registers_fuses_and_writes_volume_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "fused.nii.gz") in printed and str(out / "fusion.png") in printed
    reference = read_image(out / "reference_ct.nii.gz")
    assert_same_geometry(read_image(out / "fused.nii.gz"), reference)
    assert_same_geometry(read_image(out / "registered_mr.nii.gz"), reference)
    figure = Image.open(out / "fusion.png")
    assert figure.mode == "RGB" and figure.width > 3 * 200 and np.asarray(figure).std() > 10


def _shared_fuse(shared_data, tmp_path, task, other, stem, model):
    harvard = shared_data / "harvard" / task
    output = tmp_path / f"{stem}.png"
    code = main(
        [
            "fuse",
            str(harvard / "MRI" / f"{stem}.png"),
            str(harvard / other / f"{stem}.png"),
            "-o",
            str(output),
            "--model",
            model,
        ]
    )
    return code, output


def test_fuse_harvard_ct_mri_and_pet_mri(shared_data, tmp_path):
    code, output = _shared_fuse(shared_data, tmp_path, "CT-MRI", "CT", "28005", "maximum")
    assert code == 0 and Image.open(output).mode == "L"
    code, output = _shared_fuse(shared_data, tmp_path, "PET-MRI", "PET", "25015", "maximum")
    assert code == 0 and Image.open(output).mode == "RGB"


def test_fuse_brats_volume_keeps_reference_geometry(shared_data, tmp_path):
    case = shared_data / "brats" / "TCGA-DU-7294"
    output = tmp_path / "f.nii.gz"
    assert (
        main(
            [
                "fuse",
                str(case / "t1.nii.gz"),
                str(case / "t2.nii.gz"),
                "-o",
                str(output),
                "--model",
                "laplacian",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    assert_same_geometry(read_image(output), read_image(case / "t1.nii.gz"))


def test_help_and_register_load_no_torch():
    """`medfusion --help` lists every command from the summaries alone; `register` needs no torch either."""
    code = (
        "import sys; from MedFusionLib.cli import main\n"
        "for argv in (['--help'], ['register', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().endswith("NO-TORCH")
    for name, summary in COMMANDS.items():
        assert name in run.stdout and summary.split()[0] in run.stdout
