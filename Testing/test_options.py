"""FusionOptions: one validated description of a run, the same from every entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from MedFusionLib.core import choices
from MedFusionLib.fusion.options import FusionOptions, OptionsError


def test_defaults_are_the_documented_ones():
    options = FusionOptions()
    assert options.model == choices.DEFAULT_MODEL == "auto"  # a network chosen by the device
    assert (options.registration, options.backend, options.init) == ("auto", "auto", "auto")
    assert (options.device, options.precision, options.axis) == ("auto", "auto", "axial")
    assert options.batch_size is None and options.threads is None and options.compile is False


def test_argv_dict_and_json_round_trip_every_field():
    options = FusionOptions(
        model="haf",
        registration="affine",
        backend="simpleitk",
        init="moments",
        device="cpu",
        precision="fp32",
        axis="coronal",
        batch_size=4,
        threads=2,
        compile=True,
        reference_window=(40, 80),
        moving_window="bone",
    )
    assert FusionOptions.from_argv(options.to_argv()) == options
    assert FusionOptions.from_dict(json.loads(options.to_json())) == options
    assert FusionOptions.from_argv([]) == FusionOptions() and FusionOptions().to_argv() == []
    # Canonical forms: a (level, width) pair is stored as text, and read back as numbers.
    assert options.reference_window == "40,80" and options.reference_window_value == (40.0, 80.0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "--batch-size takes a whole number of at least 1"),
        ("batch_size", 2.5, "--batch-size takes a whole number"),
        ("threads", -2, "--threads takes a whole number of at least 1"),
        ("model", "densfuse", "unknown model 'densfuse'; choose one of auto, emfusion"),
        ("registration", "elastic", "unknown registration 'elastic'"),
        ("device", "gpu", "unknown device 'gpu'"),
        ("precision", "int8", "unknown precision 'int8'"),
        ("axis", "transverse", "unknown axis 'transverse'"),
        ("reference_window", "brian", "unknown CT window 'brian'"),
        ("moving_window", "40,-5", "width must be positive"),
        ("compile", "yes", "--compile is on or off"),
    ],
)
def test_every_bad_value_is_one_kind_of_error_naming_the_choices(field, value, message):
    with pytest.raises(OptionsError, match=message):
        FusionOptions(**{field: value})


def test_cuda_with_an_index_is_a_device():
    assert FusionOptions(device="cuda:1").device == "cuda:1"


def test_an_initial_transform_without_registration_is_refused():
    with pytest.raises(OptionsError, match="--initial-transform"):
        FusionOptions(registration="none", initial_transform="start.tfm")


def test_unknown_names_are_refused_in_records_and_argument_lists():
    with pytest.raises(OptionsError, match="unknown fusion option"):
        FusionOptions.from_dict({"model": "haf", "colour": "red"})
    with pytest.raises(OptionsError, match="--colour"):
        FusionOptions.from_argv(["--colour", "red"])


def test_frozen_and_replaced_not_mutated():
    options = FusionOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.model = "haf"
    assert dataclasses.replace(options, model="haf").model == "haf" and options.model == "auto"
    with pytest.raises(OptionsError):
        dataclasses.replace(options, threads=0)


def test_parser_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    FusionOptions.add_arguments(parser)
    flags = {action.dest for action in parser._actions}
    assert {spec.name for spec in dataclasses.fields(FusionOptions)} <= flags
    namespace = parser.parse_args(["--model", "laplacian", "--batch-size", "3", "--compile"])
    assert FusionOptions.from_namespace(namespace) == FusionOptions(model="laplacian", batch_size=3, compile=True)


def test_choices_module_lists_exactly_the_registered_models():
    from MedFusionLib.models import list_models

    assert choices.MODEL_CHOICES[0] == "auto"  # first in every list, the default
    assert set(choices.MODEL_CHOICES) - {"auto"} == set(list_models())
    assert "auto" not in list_models()  # no network of that name: resolved before a model is built
    assert set(choices.DEFAULT_MODEL_BY_DEVICE.values()) <= set(list_models())


def test_auto_model_resolves_by_device_and_explicit_names_are_kept():
    import torch

    table = choices.DEFAULT_MODEL_BY_DEVICE
    assert choices.resolve_model_name("auto", "cpu") == table["cpu"]
    assert choices.resolve_model_name("auto", torch.device("cpu")) == table["cpu"]
    # A CUDA device object or its text: no GPU is needed to resolve the name.
    assert choices.resolve_model_name("auto", torch.device("cuda")) == table["cuda"]
    assert choices.resolve_model_name("auto", torch.device("cuda", 1)) == table["cuda"]
    assert choices.resolve_model_name("auto", "cuda:0") == table["cuda"]
    for name in ("emfusion", "emfusion-full", "haf", "laplacian"):
        for device in ("cpu", "cuda", torch.device("cuda")):
            assert choices.resolve_model_name(name, device) == name
    # A device's network whose weights are not installed: the CPU's (light) one instead.
    assert choices.resolve_model_name("auto", "cuda", usable=lambda name: name == table["cpu"]) == table["cpu"]
    assert choices.resolve_model_name("auto", "cuda", usable=lambda name: True) == table["cuda"]
    with pytest.raises(ValueError, match="resolved first"):
        choices.resolve_model_name("auto", "auto")


def test_pipeline_resolves_auto_with_the_weights_installed_here(monkeypatch):
    from MedFusionLib.fusion import pipeline

    table = choices.DEFAULT_MODEL_BY_DEVICE
    assert pipeline.resolve_model("auto", "cpu") == table["cpu"]
    assert pipeline.resolve_model("haf", "cpu") == "haf"
    monkeypatch.setattr(pipeline, "resolve_device_name", lambda device: "cuda:0")
    monkeypatch.setattr(pipeline, "model_usable", lambda name, runtime: name != table["cuda"])
    assert pipeline.resolve_model("auto", "auto") == table["cpu"]  # the GPU's network has no weights yet
    monkeypatch.setattr(pipeline, "model_usable", lambda name, runtime: True)
    assert pipeline.resolve_model("auto", "auto") == table["cuda"]


def test_options_import_neither_torch_nor_simpleitk():
    """The Slicer module reads the options before its dependencies are installed."""
    code = (
        "import sys; import MedFusionLib.fusion.options; "
        "print(sorted({'torch', 'SimpleITK', 'numpy'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_cli_reports_a_bad_option_as_one_line_and_exit_2(tmp_path, capsys):
    from MedFusionLib.cli import main

    output = tmp_path / "fused.nii.gz"
    assert main(["fuse", "a.nii.gz", "b.nii.gz", "-o", str(output), "--batch-size", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("medfusion: error:") and "--batch-size" in error and not output.exists()
