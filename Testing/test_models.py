"""The model registry, shipped-weights loading, and every model's contract."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from MedFusionLib.core import model_files
from MedFusionLib.core.errors import UnknownModelError, WeightsIntegrityError, WeightsNotAvailableError
from MedFusionLib.models import FusionNet, create_model, list_models, model_spec, parameter_count, pretrained
from MedFusionLib.models.blocks import (
    AttentionGate,
    ConvBlock,
    DepthwiseSeparableConv,
    FeaturePyramid,
    crop_to,
    pad_to_multiple,
)

LEARNED = ["emfusion", "haf", "densefuse"]
BASELINES = ["average", "maximum", "laplacian"]
SHAPES = [(1, 1, 64, 64), (3, 1, 37, 53), (2, 1, 7, 5), (1, 1, 1, 1)]


def test_registry_lists_every_model_learned_first():
    names = list_models()
    assert set(LEARNED + BASELINES) <= set(names)
    assert names.index("haf") < names.index("average")
    assert all(model_spec(name).description for name in names)


@pytest.mark.parametrize("name", LEARNED + BASELINES)
def test_every_model_declares_the_fusion_net_contract(name):
    model = create_model(name, pretrained=False)
    assert isinstance(model, FusionNet)
    assert model.receptive_radius is None or model.receptive_radius >= 0
    assert model.size_multiple >= 1 and model.window_step >= 1


def test_emfusion_radius_follows_its_configuration():
    """The radius is derived from the layers, so a configured network declares its own reach."""
    torch.manual_seed(0)
    model = create_model("emfusion", pretrained=False, dense_layers=2).eval()
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    moved = a.clone()
    moved[0, 0, 16, 16] += 0.5
    with torch.no_grad():
        rows, columns = torch.nonzero((model(moved, b) - model(a, b))[0, 0] != 0, as_tuple=True)
    assert model.receptive_radius == 5 == int(max((rows - 16).abs().max(), (columns - 16).abs().max()))


def test_only_fusion_nets_can_be_registered():
    from MedFusionLib.models.registry import register_model

    with pytest.raises(TypeError, match="not a FusionNet"):
        register_model("plain", description="a plain module", learned=False)(torch.nn.Identity)


def test_unknown_model_error_lists_valid_names():
    with pytest.raises(UnknownModelError) as error:
        create_model("emfuson")
    assert "emfuson" in str(error.value) and "emfusion" in str(error.value)


@pytest.mark.parametrize("name", LEARNED)
def test_pretrained_without_shipped_weights_is_an_error_not_random_weights(name, tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "WEIGHTS_DIR", tmp_path)  # an empty weights folder
    with pytest.raises(WeightsNotAvailableError, match="pretrained=False"):
        create_model(name, pretrained=True)


@pytest.mark.parametrize("name", LEARNED + BASELINES)
@pytest.mark.parametrize("shape", SHAPES)
def test_model_keeps_shape_and_range(name, shape):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False)
    a, b = torch.rand(shape), torch.rand(shape)
    with torch.no_grad():
        fused = model(a, b)
    assert fused.shape == shape
    assert fused.dtype == torch.float32
    assert torch.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0


@pytest.mark.parametrize("name", LEARNED + BASELINES)
def test_model_is_deterministic_on_cpu(name):
    torch.manual_seed(0)
    first = create_model(name, pretrained=False)
    torch.manual_seed(0)
    second = create_model(name, pretrained=False)
    a, b = torch.rand(2, 1, 40, 48), torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        assert torch.equal(first(a, b), first(a, b))
        assert torch.equal(first(a, b), second(a, b))


@pytest.mark.parametrize("name", LEARNED)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False).train()
    a, b = torch.rand(2, 1, 32, 36), torch.rand(2, 1, 32, 36)
    output = model.reconstruct(a) if name == "densefuse" else model(a, b)
    ((output - 0.5 * (a + b)) ** 2).mean().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_learned_models_are_small_but_not_empty():
    counts = {name: parameter_count(create_model(name, pretrained=False)) for name in LEARNED}
    assert all(10_000 < count < 2_000_000 for count in counts.values()), counts


def test_pretrained_weights_load_only_when_hash_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(3)
    trained = create_model("emfusion", pretrained=False, growth=8)
    weights = tmp_path / "emfusion.safetensors"
    save_file(trained.state_dict(), str(weights))
    card = {"sha256": pretrained.sha256_of(weights), "config": {"growth": 8}}
    (tmp_path / "emfusion.json").write_text(json.dumps(card))

    loaded = create_model("emfusion", pretrained=True)
    a, b = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(a, b), trained(a, b))
    assert pretrained.weights_status("emfusion") == "ok"

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the bits of one weight byte
    weights.write_bytes(bytes(data))
    assert pretrained.weights_status("emfusion") == "corrupt"
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        create_model("emfusion", pretrained=True)


def test_average_and_maximum_are_what_they_say():
    a, b = torch.rand(2, 1, 9, 11), torch.rand(2, 1, 9, 11)
    assert torch.allclose(create_model("average")(a, b), (a + b) / 2)
    assert torch.equal(create_model("maximum")(a, b), torch.maximum(a, b))


def test_laplacian_pyramid_is_exactly_invertible_and_keeps_strongest_detail():
    model = create_model("laplacian")
    image = torch.rand(1, 1, 64, 80)
    assert torch.allclose(model(image, image), image, atol=1e-5)
    # A sharp square in one source and a flat field in the other: the square's edges survive.
    square = torch.zeros(1, 1, 64, 64)
    square[..., 24:40, 24:40] = 1.0
    flat = torch.full_like(square, 0.5)
    fused = model(square, flat)
    edge_contrast = fused[..., 32, 26] - fused[..., 32, 21]
    assert edge_contrast > 0.4


def test_building_blocks_shapes():
    x = torch.rand(2, 8, 20, 24)
    assert ConvBlock(8, 16)(x).shape == (2, 16, 20, 24)
    assert DepthwiseSeparableConv(8, 16, stride=2)(x).shape == (2, 16, 10, 12)
    gated = AttentionGate(8, 8, 4)(torch.rand(2, 8, 20, 24), x)
    assert gated.shape == x.shape and (gated.abs() <= x.abs() + 1e-6).all()  # gates only attenuate
    pyramid = FeaturePyramid([8, 16], 12)([x, torch.rand(2, 16, 10, 12)])
    assert pyramid.shape == (2, 12, 20, 24)
    padded, size = pad_to_multiple(torch.rand(1, 1, 13, 6), 4)
    assert padded.shape[-2:] == (16, 8) and crop_to(padded, size).shape[-2:] == (13, 6)


# ----------------------------------------------------------------------------- DenseFuse fusion rules


def test_densefuse_ships_the_compensated_rule_and_keeps_the_others():
    assert create_model("densefuse").fusion_rule == "l1_residual"
    assert pretrained.load_model_card_verified("densefuse")["config"]["fusion_rule"] == "l1_residual"
    for rule in ("l1", "addition"):
        assert create_model("densefuse", fusion_rule=rule).fusion_rule == rule
    with pytest.raises(ValueError, match="l1_residual"):
        create_model("densefuse", pretrained=False, fusion_rule="max")


def test_densefuse_rule_weights_on_synthetic_feature_maps():
    """Activity 2:1 gives the l1 rule 2/3 and the squared-activity rule 4/5; weights are symmetric
    and equal activities share evenly; flat maps (no activity) give no NaN."""
    features_a = torch.zeros(1, 4, 9, 9)
    features_a[:, :2] = 1.0  # L1 activity 2 everywhere
    features_b = torch.zeros(1, 4, 9, 9)
    features_b[:, 3] = -1.0  # L1 activity 1, carried by a negative value
    l1 = create_model("densefuse", pretrained=False, fusion_rule="l1")
    squared = create_model("densefuse", pretrained=False, fusion_rule="l1_residual")
    torch.testing.assert_close(l1.weights(features_a, features_b), torch.full((1, 1, 9, 9), 2 / 3))
    torch.testing.assert_close(squared.weights(features_a, features_b), torch.full((1, 1, 9, 9), 4 / 5))
    torch.testing.assert_close(squared.weights(features_b, features_a), torch.full((1, 1, 9, 9), 1 / 5))
    torch.testing.assert_close(squared.weights(features_a, features_a), torch.full((1, 1, 9, 9), 0.5))
    merged = squared.merge(features_a, features_b)
    torch.testing.assert_close(merged, 0.8 * features_a + 0.2 * features_b)
    assert torch.isfinite(squared.weights(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 5))).all()


def test_densefuse_compensated_rule_returns_an_image_fused_with_itself():
    """The decoder is not an exact inverse: l1 fusion of an image with itself is its (lossy)
    reconstruction, while l1_residual adds the reconstruction error back and returns the image."""
    image = torch.rand(1, 1, 48, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        compensated = create_model("densefuse")(image, image)
        plain = create_model("densefuse", fusion_rule="l1")(image, image)
    torch.testing.assert_close(compensated, image, atol=1e-5, rtol=0)
    assert (plain - image).abs().mean() > 1e-3


@pytest.mark.parametrize("rule", ["l1_residual", "l1", "addition"])
def test_densefuse_receptive_radius_holds_for_every_rule(rule):
    model = create_model("densefuse", fusion_rule=rule)
    a = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    b = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    reach = 0
    with torch.no_grad():
        base = model(a, b)
        for source in (0, 1):
            moved = [a.clone(), b.clone()]
            moved[source][0, 0, 24, 23] += 0.5
            rows, columns = torch.nonzero((model(*moved) - base)[0, 0].abs() > 0, as_tuple=True)
            reach = max(reach, int((rows - 24).abs().max()), int((columns - 23).abs().max()))
    assert 0 < reach <= model.receptive_radius
