"""Tests for MedFusionLib.datasets: paired augmentation, volume slices, Harvard pairs (shared data)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedFusionLib.core.errors import InputError
from MedFusionLib.datasets.augmentation import AugmentationConfig, PairAugmentation
from MedFusionLib.datasets.harvard import load_harvard_pairs_array, resolve_tasks
from MedFusionLib.datasets.pairs import PairDataset
from MedFusionLib.datasets.volume_slices import find_volume_cases, load_volume_slices


def _blobs(count: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``(count, 2, size, size)`` float pairs in [0, 1]: a disc of anatomy, A and B different."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((x - size / 2) ** 2 + (y - size / 2) ** 2) < (0.4 * size) ** 2).float()
    noise = torch.rand(count, 2, size, size, generator=generator)
    return (disc * (0.3 + 0.7 * noise)).clamp(0, 1)


def _augmentation(**changes) -> PairAugmentation:
    return PairAugmentation(AugmentationConfig.from_dict({"crop": 32, **changes}))


def test_augmentation_gives_crops_in_range_reproducibly_from_the_generator():
    batch = _blobs()
    augment = _augmentation()
    first = augment(batch, torch.Generator().manual_seed(3))
    again = augment(batch, torch.Generator().manual_seed(3))
    other = augment(batch, torch.Generator().manual_seed(4))
    assert first.shape == (4, 2, 32, 32) and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_geometric_augmentation_is_identical_for_both_sources():
    batch = _blobs()
    batch[:, 1] = batch[:, 0]  # B is a copy of A: any geometric difference would show
    augment = _augmentation(gamma=[1.0, 1.0], occlusion_probability=0.0, elastic_alpha=6.0)
    crops = augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(crops[:, 0], crops[:, 1])
    # ...and it did move the pixels: the crops are not plain sub-windows of the input.
    assert float(crops.std()) > 0


def test_gamma_is_drawn_per_source():
    batch = _blobs()
    batch[:, 1] = batch[:, 0]
    augment = _augmentation(gamma=[0.5, 2.0], occlusion_probability=0.0)
    crops = augment(batch, torch.Generator().manual_seed(0))
    assert not torch.equal(crops[:, 0], crops[:, 1])


def test_occlusion_zeroes_one_square_in_one_source():
    batch = torch.ones(3, 2, 64, 64)
    augment = _augmentation(
        rotation_deg=0.0, elastic_alpha=0.0, gamma=[1.0, 1.0], occlusion_probability=1.0, occlusion_size=0.25
    )
    crops = augment(batch, torch.Generator().manual_seed(1))
    side = 8  # 0.25 of the 32-pixel crop
    for sample in crops:
        zeros = (sample == 0).sum(dim=(1, 2)).tolist()
        assert sorted(zeros) == [0, side * side]


def test_foreground_crops_land_on_anatomy():
    batch = torch.zeros(8, 2, 128, 128)
    batch[:, :, 90:120, 90:120] = 1.0  # anatomy only in one corner
    augment = _augmentation(rotation_deg=0.0, elastic_alpha=0.0, gamma=[1.0, 1.0], occlusion_probability=0.0)
    crops = augment(batch, torch.Generator().manual_seed(2))
    assert all(float(crop.mean()) > 0.1 for crop in crops)


def test_augmentation_config_rejects_bad_settings():
    with pytest.raises(InputError, match="unknown augmentation"):
        AugmentationConfig.from_dict({"crop": 32, "hue": 0.1})
    with pytest.raises(InputError, match="crop"):
        AugmentationConfig.from_dict({"crop": 8})
    with pytest.raises(InputError, match="gamma"):
        AugmentationConfig.from_dict({"gamma": [1.3, 0.7]})


def test_pair_dataset_scales_uint8_to_unit_range_and_checks_its_input():
    pairs = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    dataset = PairDataset(pairs)
    assert len(dataset) == 1
    assert dataset[0].flatten().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])
    with pytest.raises(InputError, match="uint8"):
        PairDataset(pairs.float())


def test_volume_slices_keep_foreground_slices_normalised(phantom_pair):
    slices = load_volume_slices(phantom_pair.ct, phantom_pair.mr)
    size_x, size_y, size_z = phantom_pair.ct.GetSize()
    assert slices.dtype == torch.uint8 and slices.shape[1:] == (2, size_y, size_x)
    assert 0 < slices.shape[0] < size_z  # the empty slices above and below the head are dropped
    assert int(slices.max()) == 255


def test_volume_slices_refuse_volumes_on_different_grids(phantom_pair):
    smaller = sitk.RegionOfInterest(phantom_pair.mr, [40, 40, 30], [0, 0, 0])
    with pytest.raises(InputError, match="not on one grid"):
        load_volume_slices(phantom_pair.ct, smaller)


def test_find_volume_cases_lists_complete_case_folders(tmp_path, phantom_pair):
    for case in ("case1", "case2"):
        (tmp_path / case).mkdir()
        sitk.WriteImage(phantom_pair.mr, str(tmp_path / case / "t1.nii.gz"))
    sitk.WriteImage(phantom_pair.mr, str(tmp_path / "case1" / "t2.nii.gz"))
    cases = find_volume_cases(tmp_path, ["t1", "t2"])
    assert [(a.parent.name, b.name) for a, b in cases] == [("case1", "t2.nii.gz")]
    with pytest.raises(InputError, match="no case folder"):
        find_volume_cases(tmp_path, ["t1", "flair"])


def test_resolve_tasks():
    assert resolve_tasks("all") == ["CT-MRI", "PET-MRI", "SPECT-MRI"]
    assert resolve_tasks("PET-MRI") == ["PET-MRI"]
    with pytest.raises(InputError, match="unknown task"):
        resolve_tasks("MRI-MRI")


def test_harvard_pairs_load_as_uint8_and_the_split_is_by_case(shared_data):
    harvard = shared_data / "harvard"
    pairs, tasks = load_harvard_pairs_array(harvard, ["CT-MRI"], "val")
    with open(harvard / "pairs.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["task"] == "CT-MRI"]
    assert pairs.dtype == torch.uint8 and pairs.shape == (sum(r["split"] == "val" for r in rows), 2, 256, 256)
    assert set(tasks) == {"CT-MRI"}
    train_cases = {r["case"] for r in rows if r["split"] == "train"}
    val_cases = {r["case"] for r in rows if r["split"] == "val"}
    assert train_cases.isdisjoint(val_cases)
    # Both sources carry anatomy (B is the CT, not a blank channel).
    assert np.all(pairs.float().mean(dim=(2, 3)).numpy() > 5)
