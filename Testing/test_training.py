"""Tests for MedFusionLib.training.trainer and `medfusion train`: learning, exact resume, DDP, NaN guard,
export, configuration, and the shipped weights."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from MedFusionLib.cli import main as medfusion_main
from MedFusionLib.core.errors import InputError, UnknownModelError
from MedFusionLib.models import architecture_config, create_model
from MedFusionLib.models.pretrained import WEIGHTS_DIR, sha256_of
from MedFusionLib.training.checkpoints import CHECKPOINT_BEST, CHECKPOINT_LAST, TrainState, load_checkpoint
from MedFusionLib.training.config import CONFIG_DIR, TrainingConfig, default_config, load_config
from MedFusionLib.training.export import export_weights
from MedFusionLib.training.trainer import TrainingDivergedError, TrainingObjective, epoch_indices, lr_lambda, train

TINY_AUGMENTATION = {"crop": 24, "elastic_grid": 3}
TINY_MODELS = {
    "emfusion": ({"growth": 4, "dense_layers": 2}, "fusion", {"ssim": 1.0, "gradient": 1.0}),
    "haf": ({"widths": [4, 8, 8], "pyramid_channels": 4}, "fusion", {}),
    "densefuse": ({"growth": 8}, "reconstruction", {"ssim_weight": 1.0}),
}


def tiny_config(model: str = "emfusion", **changes) -> TrainingConfig:
    model_config, objective, loss = TINY_MODELS[model]
    values = dict(
        model=model, objective=objective, model_config=model_config, loss=loss, augmentation=TINY_AUGMENTATION,
        epochs=2, batch_size=4, samples_per_epoch=8, learning_rate=5e-3, warmup_steps=2,
        validation_pairs=2, tensorboard=False,
    )
    values.update(changes)
    return TrainingConfig.from_dict(values)


def synthetic_pairs(count: int = 8, size: int = 48, seed: int = 0) -> torch.Tensor:
    """``(count, 2, size, size)`` uint8: A a smooth "soft tissue" disc, B a bright "bone" ring."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    radius = ((x - size / 2) ** 2 + (y - size / 2) ** 2).sqrt()
    pairs = torch.zeros(count, 2, size, size)
    for index in range(count):
        texture = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, generator=generator), size=(size, size),
                                                  mode="bilinear")[0, 0]
        pairs[index, 0] = (radius < 0.38 * size) * (0.3 + 0.5 * texture)
        pairs[index, 1] = ((radius > 0.38 * size) & (radius < 0.45 * size)) * 0.95
    return (pairs * 255).round().to(torch.uint8)


def fixed_batch_loss(model: torch.nn.Module, config: TrainingConfig, pairs: torch.Tensor) -> float:
    """The training loss on whole pairs, in train mode (batch statistics, as it was optimised)."""
    objective = TrainingObjective(model, config.objective, config.loss).train()
    with torch.no_grad():
        return float(objective(pairs.float() / 255.0)[0])


@pytest.mark.parametrize("model", ["emfusion", "haf", "densefuse"])
def test_a_few_steps_reduce_the_loss(tmp_path, model):
    config = tiny_config(model, epochs=3, samples_per_epoch=16, learning_rate=2e-2)
    pairs = synthetic_pairs()
    torch.manual_seed(config.seed)  # train() initialises the same way
    initial = create_model(model, pretrained=False, **config.model_config)
    result = train(config, pairs, tmp_path / "run", progress=False)
    assert result.steps == 12 and result.epochs_completed == 3 and result.skipped_steps == 0
    assert fixed_batch_loss(result.model, config, pairs) < 0.9 * fixed_batch_loss(initial, config, pairs)


def test_resume_continues_bit_for_bit(tmp_path):
    config = tiny_config(epochs=3)
    pairs, val = synthetic_pairs(), synthetic_pairs(4, seed=1)
    straight = train(config, pairs, tmp_path / "straight", val_pairs=val, progress=False)
    interrupted = train(config, pairs, tmp_path / "resumed", val_pairs=val, progress=False, stop_after_epochs=1)
    assert interrupted.epochs_completed == 1
    resumed = train(config, pairs, tmp_path / "resumed", val_pairs=val, progress=False, resume=True)
    assert resumed.epochs_completed == 3 and resumed.steps == straight.steps
    a = torch.load(tmp_path / "straight" / CHECKPOINT_LAST, weights_only=True)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT_LAST, weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    moments_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    moments_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b))
    assert a["best_score"] == b["best_score"] and a["best_epoch"] == b["best_epoch"]


def test_existing_runs_need_resume_and_resume_needs_a_run(tmp_path):
    config = tiny_config(epochs=1)
    pairs = synthetic_pairs()
    with pytest.raises(InputError, match="no checkpoint"):
        train(config, pairs, tmp_path / "run", resume=True, progress=False)
    train(config, pairs, tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="--resume"):
        train(config, pairs, tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="another configuration"):
        train(tiny_config(epochs=2, learning_rate=1e-3), pairs, tmp_path / "run", resume=True, progress=False)


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path):
    config = tiny_config(loss={"ssim": math.nan}, max_nonfinite_steps=3, samples_per_epoch=40)
    with pytest.raises(TrainingDivergedError, match="3 steps in a row"):
        train(config, synthetic_pairs(), tmp_path / "run", progress=False)


def test_fp16_overflow_steps_are_skipped_and_the_scale_lowered(tmp_path):
    """CUDA trains in fp16 with a GradScaler: an overflowing step must be skipped and the scale
    halved, and training go on (it once raised "unscale_() has already been called" on the next
    step). The scaler runs on the CPU here, started so high that the first step overflows."""
    from MedFusionLib.training.trainer import Trainer

    trainer = Trainer(tiny_config(epochs=1, samples_per_epoch=16), synthetic_pairs(), tmp_path / "run",
                      device="cpu", progress=False)
    trainer.parts.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    result = trainer.fit()
    assert result.steps == 4 and result.skipped_steps >= 1
    assert trainer.parts.scaler.get_scale() < 2.0**127


def test_init_weights_starts_a_run_from_given_weights(tmp_path):
    from safetensors.torch import save_file

    from MedFusionLib.training.trainer import Trainer

    source = create_model("emfusion", pretrained=False, **TINY_MODELS["emfusion"][0])
    for parameter in source.parameters():
        torch.nn.init.constant_(parameter, 0.01)
    save_file(source.state_dict(), str(tmp_path / "start.safetensors"))
    trainer = Trainer(tiny_config(init_weights=str(tmp_path / "start.safetensors")), synthetic_pairs(),
                      tmp_path / "run", device="cpu", progress=False)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    with pytest.raises(InputError, match="init_weights"):
        Trainer(tiny_config(init_weights=str(tmp_path / "missing.safetensors")), synthetic_pairs(), tmp_path / "r2",
                device="cpu", progress=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    config = tiny_config(epochs=2, samples_per_epoch=16)
    result = train(config, synthetic_pairs(), Path(out_dir) / "run", val_pairs=synthetic_pairs(4, seed=1),
                   device="cpu", progress=False)
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


def test_two_process_ddp_on_cpu_completes_with_identical_replicas(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT_LAST, weights_only=True)
    # 16 samples split over 2 ranks in batches of 4: 2 steps per epoch.
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 4
    replicas = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, tensor in replicas[0].items():
        assert torch.equal(tensor, replicas[1][name]), name
        assert torch.equal(tensor, checkpoint["model"][name]), name


def test_export_writes_weights_the_registry_can_rebuild(tmp_path):
    config = tiny_config(epochs=1)
    result = train(config, synthetic_pairs(), tmp_path / "run", val_pairs=synthetic_pairs(4, seed=1), progress=False,
                   metadata={"command": "test"})
    weights, card_path = export_weights(tmp_path / "run" / CHECKPOINT_BEST, tmp_path / "out")
    card = json.loads(card_path.read_text())
    assert card["sha256"] == sha256_of(weights)
    assert card["config"] == config.model_config and card["architecture"] == "EMFusionNet"
    assert "model_config" not in card["training"]["config"]  # the architecture is stated once, in "config"
    assert card["training"]["command"] == "test" and card["training"]["selected_epoch"] == 1
    rebuilt = create_model("emfusion", pretrained=False, **card["config"])
    rebuilt.load_state_dict(load_file(str(weights)), strict=True)
    a, b = torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(a, b), result.model(a, b))
    # The ONNX export for the CPU runtimes, recorded with its checksum and the engine's crop geometry
    graph = weights.with_suffix(".onnx")
    assert card["onnx"]["sha256"] == sha256_of(graph) and card["onnx"]["receptive_radius"] == rebuilt.receptive_radius
    ort = pytest.importorskip("onnxruntime")
    exported = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = result.model(a, b).numpy()
    assert np.abs(exported.run(None, {"a": a.numpy(), "b": b.numpy()})[0] - expected).max() <= 1e-5


def test_cards_store_every_architecture_argument(tmp_path):
    """A card built from a partial model_config still names every constructor argument, so the
    weights load even if the class's defaults change later."""
    config = tiny_config("haf", epochs=1)
    train(config, synthetic_pairs(), tmp_path / "run", progress=False)
    _, card_path = export_weights(tmp_path / "run" / CHECKPOINT_BEST, tmp_path / "out")
    card = json.loads(card_path.read_text())
    assert card["config"] == {"widths": [4, 8, 8], "pyramid_channels": 4, "decoder_channels": 16}
    assert card["config"] == architecture_config("haf", **config.model_config)


def test_a_checkpoint_holds_the_train_state_and_replaces_the_previous_one(tmp_path):
    config = tiny_config(epochs=2)
    train(config, synthetic_pairs(), tmp_path / "run", progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / CHECKPOINT_LAST)
    state = TrainState.from_checkpoint(checkpoint)
    assert (state.epoch, state.step, state.best_epoch, state.skipped_steps) == (2, 4, 2, 0)
    assert TrainState.from_checkpoint({**checkpoint, **state.to_checkpoint()}) == state
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no staging left


def test_schedule_warms_up_then_decays_to_the_floor():
    multiplier = lr_lambda(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0) and multiplier(60) == pytest.approx(0.55)
    assert multiplier(110) == pytest.approx(0.1)


def test_epoch_indices_cover_every_pair_before_repeating():
    indices = epoch_indices(25, 10, torch.Generator().manual_seed(0))
    assert len(indices) == 25 and sorted(indices[:10]) == list(range(10)) and sorted(indices[10:20]) == list(range(10))


def test_default_configs_load_and_overrides_merge(tmp_path):
    for model in ("emfusion", "haf", "densefuse"):
        assert default_config(model).model == model
    override = tmp_path / "bone.json"
    override.write_text(json.dumps({"loss": {"source_bias": -0.5}, "epochs": 3}))
    config = load_config("emfusion", override)
    assert config.loss["source_bias"] == -0.5 and config.epochs == 3
    assert config.loss["ssim"] == default_config("emfusion").loss["ssim"]  # merged, not replaced
    override.write_text(json.dumps({"learning_rte": 1e-3}))
    with pytest.raises(InputError, match="learning_rte"):
        load_config("emfusion", override)
    with pytest.raises(InputError, match="nothing to train"):
        tiny_config().from_dict({"model": "average"})
    with pytest.raises(UnknownModelError):
        load_config("unet")


def test_cli_trains_on_volume_cases_and_exports_a_loadable_model(tmp_path, phantom_pair, capsys):
    data = tmp_path / "volumes"
    for case in ("case1", "case2"):
        (data / case).mkdir(parents=True)
        sitk.WriteImage(phantom_pair.ct, str(data / case / "ct.nii.gz"))
        sitk.WriteImage(phantom_pair.mr, str(data / case / "t2.nii.gz"))
    config = tmp_path / "tiny.json"
    model_config, _, loss = TINY_MODELS["emfusion"]
    config.write_text(json.dumps({"model_config": model_config, "loss": loss, "augmentation": TINY_AUGMENTATION,
                                  "batch_size": 4, "samples_per_epoch": 8, "tensorboard": False}))
    out = tmp_path / "run"
    code = medfusion_main(["train", "--model", "emfusion", "--data", str(data), "--modalities", "t2,ct",
                           "--out", str(out), "--config", str(config), "--epochs", "1", "--quiet"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    card = json.loads((out / "emfusion.json").read_text())
    assert card["sha256"] == sha256_of(out / "emfusion.safetensors")
    assert card["training"]["train_cases"] == ["case1"] and card["training"]["val_cases"] == ["case2"]
    assert "--modalities t2,ct" in card["training"]["command"]
    # An existing run is refused without --resume (exit status 2, one-line error).
    assert medfusion_main(["train", "--model", "emfusion", "--data", str(data), "--modalities", "t2,ct",
                           "--out", str(out), "--config", str(config), "--epochs", "1", "--quiet"]) == 2


SHIPPED = sorted(path.stem for path in WEIGHTS_DIR.glob("*.safetensors"))


def finetune_config_path(name: str, stage: int) -> Path:
    """The configuration of the ``stage``-th fine-tuning stage (1, 2, …) of the shipped ``name``."""
    return CONFIG_DIR / "finetune" / (f"{name}.json" if stage == 1 else f"{name}.{stage}.json")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_architecture_is_stated_once_and_training_reproduces_from_the_defaults(name):
    """The card's ``config`` is the architecture (the class's defaults); the default training
    configuration holds none and equals the configuration of the run that started from scratch.
    Weights fine-tuned from earlier weights (``init_weights``) record that run as
    ``training.initialised_from``, which may itself have been fine-tuned: stage 1 is the default
    configuration, fine-tuning stage k the default updated by ``configs/finetune/<name>.json``
    (k = 1) or ``configs/finetune/<name>.<k>.json``, each starting from the weights of the stage
    before it, and no fine-tuning configuration is left over."""
    card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    defaults = default_config(name)
    assert card["config"] == architecture_config(name)
    assert defaults.model_config == {} and "model_config" not in card["training"]["config"]

    def run_config(values: dict) -> dict:  # init_weights "" is the default (cards older than it lack it)
        return {k: v for k, v in values.items() if k != "model_config" and not (k == "init_weights" and v == "")}

    stages = [card["training"]]  # newest first
    while "initialised_from" in stages[-1]:
        stages.append(stages[-1]["initialised_from"])
    stages.reverse()
    assert run_config(defaults.to_dict()) == run_config(stages[0]["config"])
    for stage, record in enumerate(stages[1:], start=1):
        finetune = load_config(name, finetune_config_path(name, stage))
        assert run_config(finetune.to_dict()) == run_config(record["config"]), f"fine-tuning stage {stage}"
        assert finetune.init_weights.endswith(f"{name}.safetensors") and stages[stage - 1]["sha256"]
    assert not finetune_config_path(name, len(stages)).exists(), "a fine-tuning configuration no card records"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_match_their_card_and_fuse_deterministically(name, phantom_pair):
    card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    assert card["sha256"] == sha256_of(WEIGHTS_DIR / f"{name}.safetensors")
    model = create_model(name, pretrained=True)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    mr = sitk.GetArrayFromImage(phantom_pair.mr)[20]
    ct = sitk.GetArrayFromImage(phantom_pair.ct)[20]
    a = torch.from_numpy(((mr - mr.min()) / (mr.max() - mr.min())).astype(np.float32))[None, None]
    b = torch.from_numpy(((ct - ct.min()) / (ct.max() - ct.min())).astype(np.float32))[None, None]
    with torch.inference_mode():
        first, second = model(a, b), create_model(name, pretrained=True)(a, b)
    assert first.shape == a.shape and torch.equal(first, second)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
