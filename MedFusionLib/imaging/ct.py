"""CT in Hounsfield units: recognising it, its padding, and the body inside the field of view.

A CT stores radiodensity in HU: air -1000, fat about -100, water 0, soft tissue 20 to 80, bone
several hundred and more. Scanners also store values that are not anatomy: -2048 or -3024
outside the reconstruction circle (padding), and the patient table and head holder inside it.
Percentile normalisation of raw HU treats all of that as image content: padding becomes black,
air mid-grey, every tissue near white, and the per-slice fusion boxes cover the whole slice.
So a CT is shown through a display window (:data:`~MedFusionLib.core.choices.DEFAULT_CT_WINDOW`
unless the user picks one; :func:`window_distances` is how it was chosen), padding counts as air,
and the boxes come from :func:`body_mask`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Air in HU, and where padding starts: values below it are not measured tissue.
AIR_HU = -1024.0
# A voxel at or below this is air (or padding); above TISSUE_HU it is part of the patient or table.
AIR_THRESHOLD_HU = -990.0
TISSUE_HU = -500.0
# Share of voxels at air or below, and of voxels between -200 and 300 HU (fat, water, soft tissue),
# that an image must have to be taken as a CT from its values. An MRI's background is near 0, never
# near -1000; a CT always holds air around the patient.
MIN_AIR_SHARE = 0.05
MIN_TISSUE_SHARE = 0.02
# DICOM Modality tag, where the reader kept it as image metadata.
MODALITY_TAG = "0008|0060"
# The body mask's working resolution (mm) and the opening radius (mm) that cuts the table and head
# holder (shells a few mm thick) away from the body while keeping arms (several cm thick).
MASK_SPACING_MM = 2.0
TABLE_OPENING_MM = 6.0
# Components at least this share of the largest one are body parts (arms, legs), smaller ones are
# table remnants, cables and noise.
MIN_PART_SHARE = 0.03
# The mask is grown by this much (mm) so the skin's partial-volume rim is inside it.
MASK_MARGIN_MM = 3.0


def looks_like_ct(image: sitk.Image) -> bool:
    """Whether ``image`` is a CT in HU: DICOM Modality ``CT`` where the image carries it, else
    from its values (at least :data:`MIN_AIR_SHARE` of voxels at air or below, and at least
    :data:`MIN_TISSUE_SHARE` between -200 and 300 HU). 8-bit pictures and colour images are never
    taken as CT: their values are display grey levels, not HU."""
    if image.HasMetaDataKey(MODALITY_TAG):
        return image.GetMetaData(MODALITY_TAG).strip().upper() == "CT"
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8):
        return False
    values = sitk.GetArrayViewFromImage(image).ravel()
    sample = values[:: max(1, values.size // 2_000_000)]  # two million voxels decide it as well as all
    air = float(np.mean(sample <= AIR_THRESHOLD_HU))
    tissue = float(np.mean((sample >= -200) & (sample <= 300)))
    return air >= MIN_AIR_SHARE and tissue >= MIN_TISSUE_SHARE


def without_padding(image: sitk.Image) -> sitk.Image:
    """``image`` with every value below :data:`AIR_HU` raised to it (padding becomes air); float32.
    One pass and one new image (cast and clamp in one filter)."""
    return sitk.Clamp(image, sitk.sitkFloat32, AIR_HU, float(np.finfo(np.float32).max))


def body_mask(image: sitk.Image, on_image_grid: bool = True) -> sitk.Image:
    """The patient's body in a CT, as a uint8 mask (1 = body) on ``image``'s grid (or, with
    ``on_image_grid=False``, on the coarse grid it was worked out on: enough for a centre of mass).

    Tissue above :data:`TISSUE_HU`, opened by :data:`TABLE_OPENING_MM` (cuts the table and head
    holder away, keeps arms), the connected parts of at least :data:`MIN_PART_SHARE` of the
    largest (trunk and arms; table remnants are smaller), grown by :data:`MASK_MARGIN_MM`.
    Worked out at about :data:`MASK_SPACING_MM`, so it costs one pass over the full image.
    An image without any tissue gives an empty mask.
    """
    factors = [max(1, int(MASK_SPACING_MM // spacing)) for spacing in image.GetSpacing()]
    coarse = sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image
    tissue = sitk.Cast(coarse, sitk.sitkFloat32) > TISSUE_HU
    radius = [max(1, round(TABLE_OPENING_MM / spacing)) for spacing in coarse.GetSpacing()]
    opened = sitk.BinaryMorphologicalOpening(tissue, radius, sitk.sitkBall)
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(opened), sortByObjectSize=True)
    sizes = np.bincount(sitk.GetArrayViewFromImage(parts).ravel())[1:]
    if sizes.size == 0:
        mask = sitk.Image(coarse.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(coarse)
    else:
        kept = int(np.sum(sizes >= MIN_PART_SHARE * sizes[0]))  # labels are sorted by size: 1..kept
        mask = sitk.Cast((parts > 0) & (parts <= kept), sitk.sitkUInt8)
        margin = [max(1, round(MASK_MARGIN_MM / spacing)) for spacing in coarse.GetSpacing()]
        mask = sitk.BinaryDilate(mask, margin, sitk.sitkBall)
    if mask.GetSize() == image.GetSize() or not on_image_grid:
        return mask
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# How the fusion networks' training data shows a CT: the 5 %, 10 %, ..., 95 % quantiles of the
# grey levels (0 to 1) inside the head of the 112 Harvard CT-MRI CT pictures (head masks: the
# largest region above 10/255, holes filled). bench/bench_ct_window.py recomputes them.
TRAINING_CT_QUANTILES = (
    0.169,
    0.278,
    0.322,
    0.365,
    0.392,
    0.408,
    0.435,
    0.447,
    0.478,
    0.506,
    0.533,
    0.588,
    0.675,
    0.984,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
)
_QUANTILE_LEVELS = np.linspace(0.05, 0.95, len(TRAINING_CT_QUANTILES))
# The windows the default was chosen from: the display windows of the whole body (lung shows the
# lung, not the body, so it never matches a head picture).
AUTO_WINDOW_CANDIDATES = ("brain", "subdural", "stroke", "soft-tissue", "bone")


def window_distances(image: sitk.Image, mask: sitk.Image | None = None) -> dict[str, float]:
    """Per candidate window, how far the body's windowed grey levels lie from the training
    pictures': the mean absolute difference of the 19 quantiles (5 % to 95 %), in grey levels
    0..1 (a discrete Wasserstein-1 distance). ``mask``: the body (:func:`body_mask` when None)."""
    from MedFusionLib.imaging.normalization import apply_ct_window

    mask = body_mask(image) if mask is None else mask
    inside = sitk.GetArrayViewFromImage(mask).ravel() > 0
    values = sitk.GetArrayViewFromImage(image).ravel()[inside]
    if values.size == 0:
        values = sitk.GetArrayViewFromImage(image).ravel()
    values = values[:: max(1, values.size // 1_000_000)]
    target = np.asarray(TRAINING_CT_QUANTILES)
    return {
        name: float(np.mean(np.abs(np.quantile(apply_ct_window(values, name), _QUANTILE_LEVELS) - target)))
        for name in AUTO_WINDOW_CANDIDATES
    }
