"""CT in Hounsfield units by default: recognition, padding, the body mask, the window, the boxes.

The phantom CT (:func:`~MedFusionLib.imaging.phantom.make_clinical_pair`: HU, -2048 outside the
reconstruction circle, a table) always runs; the real abdominal CT of ``../shared/data/ct`` (a DICOM
series with the table and the arms as separate components) skips without the shared data.

"Not washed out", the criterion used here, in the fused image: (1) the air around the patient
stays dark (median at most 0.1), as it is in every training picture and in the MR; (2) soft tissue
(CT between -100 and 100 HU inside the body, most of a body) sits in the middle of the range
(median between 0.15 and 0.8); (3) bone (above 500 HU) stands at least 0.15 above soft tissue.
Percentiles of raw HU with -2048 padding put the padding at 0 and the air around the patient in
the middle of the range (about a third), and push all tissue up, which (1) catches.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedFusionLib.core.choices import DEFAULT_CT_WINDOW
from MedFusionLib.fusion.pipeline import display_window, fuse_volumes
from MedFusionLib.imaging.ct import (
    AIR_HU,
    TRAINING_CT_QUANTILES,
    body_mask,
    looks_like_ct,
    window_distances,
    without_padding,
)
from MedFusionLib.imaging.normalization import normalize_intensity, slice_boxes
from MedFusionLib.imaging.phantom import CT_PADDING_HU, TABLE_HU, make_clinical_pair
from MedFusionLib.io import read_image
from MedFusionLib.io.dicom import write_dicom_series
from MedFusionLib.io.gate import prepare_input
from MedFusionLib.registration import apply_transform

SIZE, SPACING = (96, 96, 48), (2.5, 2.5, 3.5)


@pytest.fixture(scope="module")
def clinical():
    """Phantom CT (int16 HU, padding, table) and its MR, already aligned and on the CT grid."""
    pair = make_clinical_pair(size=SIZE, spacing=SPACING, misalignment=None, moving_spacing=(2.5, 2.5, 3.5), seed=2)
    mr_on_ct = apply_transform(pair.mr, pair.ct, sitk.Euler3DTransform())
    return pair.ct, mr_on_ct


def table_voxels(ct: np.ndarray) -> np.ndarray:
    """The phantom's table: voxels near the table's HU behind the head (the head ends 92 mm
    behind its centre, the table starts at 106 mm), numpy ``[z, y, x]``, on the :data:`SIZE` grid."""
    y_mm = (np.arange(SIZE[1]) - (SIZE[1] - 1) / 2.0) * SPACING[1]
    return (np.abs(ct - TABLE_HU) < 100) & (y_mm[None, :, None] > 94.0)


def test_ct_is_recognised_from_its_values_and_pictures_or_mr_are_not(clinical, phantom_pair):
    ct, mr = clinical
    assert looks_like_ct(ct)
    assert looks_like_ct(phantom_pair.ct)  # float32 HU, no padding
    assert not looks_like_ct(mr)
    assert not looks_like_ct(phantom_pair.mr)
    picture = sitk.Cast(sitk.RescaleIntensity(phantom_pair.ct, 0, 255), sitk.sitkUInt8)
    assert not looks_like_ct(picture)  # 8-bit display values are not HU
    labelled = sitk.Image(mr)
    labelled.SetMetaData("0008|0060", "CT")
    assert looks_like_ct(labelled)  # the DICOM Modality decides where the image carries it


def test_a_dicom_series_carries_its_modality_to_the_ct_check(phantom_pair, tmp_path):
    """A DICOM series read from a folder keeps its Modality on the volume, so a CT series is a CT
    by its header, and an MR series whose values happen to reach -1000 is not taken for one."""
    mr = sitk.Cast(phantom_pair.mr * 1000.0 - 1000.0, sitk.sitkFloat32)  # MR with HU-like values
    write_dicom_series(mr, tmp_path / "mr", modality="MR")
    write_dicom_series(phantom_pair.ct, tmp_path / "ct", modality="CT")
    read_mr, read_ct = read_image(tmp_path / "mr"), read_image(tmp_path / "ct")
    assert read_mr.GetMetaData("0008|0060") == "MR" and not looks_like_ct(read_mr)
    assert read_ct.GetMetaData("0008|0060") == "CT" and looks_like_ct(read_ct)


def test_padding_becomes_air(clinical):
    ct, _ = clinical
    assert sitk.GetArrayViewFromImage(ct).min() == CT_PADDING_HU
    assert sitk.GetArrayViewFromImage(without_padding(ct)).min() == AIR_HU


def test_body_mask_keeps_the_head_and_drops_table_and_circle(clinical):
    ct, _ = clinical
    values = sitk.GetArrayFromImage(ct)
    mask = sitk.GetArrayFromImage(body_mask(ct)) > 0
    head = (values > -500) & ~table_voxels(values)
    assert mask[head].mean() > 0.99
    assert mask[table_voxels(values)].mean() < 0.01
    assert not mask[values == CT_PADDING_HU].any()


def test_auto_window_is_reported_and_boxes_exclude_the_table(clinical):
    ct, mr = clinical
    window, body, description = display_window("auto", prepare_input(ct, "reference"))
    assert window == DEFAULT_CT_WINDOW and description.startswith(f"CT {DEFAULT_CT_WINDOW} (50, 400) HU")
    values = sitk.GetArrayFromImage(ct)
    rows_with_table = np.flatnonzero(table_voxels(values).any(axis=(0, 2)))
    boxes = [box for box in slice_boxes(body > 0, margin=2) if box is not None]
    assert boxes and all(box[1] <= rows_with_table.min() for box in boxes), "a box reaches the table"
    # The MR and 'none' keep the percentile rule.
    assert display_window("auto", prepare_input(mr, "moving"))[0] is None
    assert display_window(None, prepare_input(ct, "reference"))[0] is None


def washed_out(ct: np.ndarray, fused: np.ndarray, mask: np.ndarray) -> str:
    """Why ``fused`` counts as washed out by the module's criterion, or ``""`` if it does not.
    ``ct``: HU, ``mask``: the body, all numpy ``[z, y, x]`` of one shape."""
    air = np.median(fused[~mask & (ct > -1100) & (ct < -900)])
    soft = np.median(fused[mask & (ct > -100) & (ct < 100)])
    bone = np.median(fused[mask & (ct > 500)])
    figures = f"air {air:.2f}, soft tissue {soft:.2f}, bone {bone:.2f}"
    if air > 0.1 or not 0.15 <= soft <= 0.8 or bone - soft < 0.15:
        return figures
    return ""


def test_fused_phantom_is_not_washed_out_and_was_before(clinical):
    ct, mr = clinical
    values = sitk.GetArrayFromImage(ct)
    mask = sitk.GetArrayFromImage(body_mask(ct)) > 0
    result = fuse_volumes(ct, mr, registration="none")
    assert "CT" in result.windows["reference"] and result.windows["moving"] == "percentiles"
    assert not washed_out(values, sitk.GetArrayFromImage(result.fused), mask)
    # Percentiles of raw HU, padding included (how the CT was shown before windows and before the
    # input gate raised its padding to air), which the fused picture inherited.
    raw_percentiles = normalize_intensity(values.astype(np.float32))
    assert washed_out(values, raw_percentiles, mask), "the criterion does not see the old wash-out"


def test_default_window_shows_the_ct_closer_to_the_training_pictures_than_percentiles(clinical):
    """The distance of :func:`window_distances` (mean absolute difference of the body's grey-level
    quantiles from the Harvard CT pictures'), for the default window and for percentiles of raw HU."""
    ct, _ = clinical
    distances = window_distances(ct)
    values = sitk.GetArrayFromImage(ct)
    body = values[sitk.GetArrayFromImage(body_mask(ct)) > 0]
    shown = normalize_intensity(values)[sitk.GetArrayFromImage(body_mask(ct)) > 0]
    levels = np.linspace(0.05, 0.95, len(TRAINING_CT_QUANTILES))
    percentile_distance = float(np.mean(np.abs(np.quantile(shown, levels) - TRAINING_CT_QUANTILES)))
    assert body.size and distances[DEFAULT_CT_WINDOW] < percentile_distance - 0.05
    assert distances[DEFAULT_CT_WINDOW] <= min(distances.values()) + 0.02


# --- the real CT (../shared/data/ct), skipped without the shared data -----------------------------


@pytest.fixture(scope="module")
def real_ct(shared_data):
    return read_image(shared_data / "ct" / "abdomen_ct_dicom")


def tissue_parts(values: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """Connected parts of tissue above -500 HU with at least 10 000 voxels, each with whether it is
    flat (at most a fifth as tall as wide, in the axial plane): the table's top and its base."""
    labels, count = ndimage.label(values > -500)
    parts = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[found] == index
        if part.sum() < 10_000:
            continue
        height, width = found[1].stop - found[1].start, found[2].stop - found[2].start
        whole = np.zeros(values.shape, dtype=bool)
        whole[found] = part
        parts.append((whole, height <= 0.2 * width))
    return parts


def test_real_ct_body_mask_keeps_the_arms_and_drops_the_table(real_ct):
    assert looks_like_ct(real_ct)
    values = sitk.GetArrayFromImage(real_ct)
    mask = sitk.GetArrayFromImage(body_mask(real_ct)) > 0
    parts = tissue_parts(values)
    body = [part for part, flat in parts if not flat]
    table = [part for part, flat in parts if flat]
    assert len(body) >= 2 and table, "expected the trunk, an arm apart from it, and the table"
    for part in body:
        assert mask[part].mean() > 0.99
    for part in table:
        assert mask[part].mean() < 0.01


def test_real_ct_fused_with_its_window_and_body_boxes(real_ct):
    values = sitk.GetArrayFromImage(real_ct)
    # An MR-like partner on the CT's grid: water and soft tissue bright, fat mid, bone and air dark.
    mr_like = np.where(values > 300, 40.0, np.where(values > -200, 600.0 + values, np.where(values > -600, 250.0, 0.0)))
    moving = sitk.GetImageFromArray(mr_like.astype(np.float32))
    moving.CopyInformation(real_ct)
    # The window is what this checks, so the network is pinned: the networks fine-tuned to weight
    # both sources alike (emfusion, emfusion-full, haf-full) take this partner's soft tissue, the
    # brightest thing in it, nearly as bright as the CT's bone whatever the CT's window (bone minus
    # soft tissue 0.03-0.12 on this pair; README "Choosing a model"); haf keeps 0.24.
    result = fuse_volumes(real_ct, moving, registration="none", model="haf")
    assert result.windows["reference"].startswith("CT ") and "HU" in result.windows["reference"]
    mask = sitk.GetArrayFromImage(body_mask(real_ct)) > 0
    assert not washed_out(values, sitk.GetArrayFromImage(result.fused), mask)
    window, body, _ = display_window("auto", prepare_input(real_ct, "reference"))
    boxes = slice_boxes(body > 0, margin=2)
    table = np.zeros(values.shape, dtype=bool)
    for part, flat in tissue_parts(values):
        if flat:
            table |= part
    for index, box in enumerate(boxes):
        assert box is not None
        row_start, row_stop, column_start, column_stop = box
        body_rows = np.flatnonzero(((values[index] > -500) & mask[index]).any(axis=1))
        body_columns = np.flatnonzero(((values[index] > -500) & mask[index]).any(axis=0))  # the arms are outermost
        assert column_start <= body_columns.min() and column_stop > body_columns.max(), (
            f"slice {index}: an arm is cut off"
        )
        # The box ends at the patient's back (plus the mask's 3 mm rim and the box margin), not below
        # the table; a rectangle still holds the table's rim where it curves up beside the back.
        assert row_stop <= body_rows.max() + 8, f"slice {index}: the box reaches below the body"
        inside = table[index, row_start:row_stop, column_start:column_stop].sum()
        assert inside <= 0.3 * table[index].sum(), f"slice {index}: the box holds most of the table"
