"""The source map: per voxel, the moving image's share of the fused value (MedFusionLib.fusion.source_map).

Known answers on the phantom's real anatomy: the average rule is 0.5 everywhere, the maximum rule
follows the brighter source, a network fed one constant source passes the other through, and
swapping the sources mirrors the map; then the pipeline's output image and its geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from MedFusionLib.fusion.engine import SliceFuser
from MedFusionLib.fusion.pipeline import fuse_volumes
from MedFusionLib.fusion.source_map import SOURCE_MAP_EPSILON, source_map_array, source_share
from MedFusionLib.imaging.normalization import apply_ct_window, normalize_intensity
from MedFusionLib.models import create_model


@pytest.fixture(scope="module")
def normalised(phantom_pair) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's CT (window 40, 400 HU: bone 1, brain about 0.5) and MR, each in [0, 1], ``[z, y, x]``."""
    ct = apply_ct_window(sitk.GetArrayFromImage(phantom_pair.ct), (40.0, 400.0))
    mr = normalize_intensity(sitk.GetArrayFromImage(phantom_pair.mr))
    return ct, mr


def test_average_is_one_half_everywhere(normalised):
    ct, mr = normalised
    share = source_share(ct, mr, (ct + mr) / 2)
    assert share.dtype == np.float32 and share.shape == ct.shape
    np.testing.assert_allclose(share, 0.5, atol=1e-5)


def test_maximum_follows_the_brighter_source(normalised):
    ct, mr = normalised
    share = source_share(ct, mr, np.maximum(ct, mr), sigma=0.0)
    mr_brighter, ct_brighter = mr > ct + 0.2, ct > mr + 0.2
    assert mr_brighter.sum() > 500 and ct_brighter.sum() > 500  # CSF and lesion vs skull: both occur
    assert share[mr_brighter].min() > 0.95
    assert share[ct_brighter].max() < 0.05
    # Smoothed (the default), the regions' cores keep their answer; only their rims mix.
    smoothed = source_share(ct, mr, np.maximum(ct, mr))
    assert np.median(smoothed[mr_brighter]) > 0.9 and np.median(smoothed[ct_brighter]) < 0.1


def test_sources_that_agree_give_one_half(normalised):
    _, mr = normalised
    np.testing.assert_allclose(source_share(mr, mr, mr), 0.5, atol=1e-6)
    # A fused value equal to the reference where the sources differ by well over epsilon: 0.
    shifted = np.clip(mr + 0.5, 0.0, 1.0)
    differ = shifted - mr > 5 * SOURCE_MAP_EPSILON
    assert differ.sum() > 1000 and source_share(mr, shifted, mr, sigma=0.0)[differ].max() < 0.02


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (2, 9, 11), elements=st.floats(0, 1, width=32)),
    arrays(np.float32, (2, 9, 11), elements=st.floats(0, 1, width=32)),
    arrays(np.float32, (2, 9, 11), elements=st.floats(0, 1, width=32)),
)
def test_swapping_the_sources_mirrors_the_map(a, b, fused):
    share, mirrored = source_share(a, b, fused), source_share(b, a, fused)
    assert share.min() >= 0.0 and share.max() <= 1.0
    # Exactly 1 - s before clipping; clipping at 0 and 1 is symmetric too.
    np.testing.assert_allclose(share + mirrored, 1.0, atol=1e-4)


def test_emfusion_fed_one_constant_source_passes_the_other_through(normalised):
    """The shipped EMFusion given (MR, black): its output is the MR, so the map says reference (0)."""
    _, mr = normalised
    fuser = SliceFuser(create_model("emfusion", pretrained=True), device="cpu")
    black = np.zeros_like(mr)
    share = source_share(mr, black, fuser.fuse_stack(mr, black))
    anatomy = mr > 0.2
    assert np.median(share[anatomy]) < 0.1
    assert np.mean(share[anatomy] < 0.3) > 0.9


def test_pipeline_source_map_has_reference_geometry_and_known_answers(phantom_pair):
    average = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="average", device="cpu", source_map=True)
    share = average.source_map
    assert share is not None and share.GetPixelID() == sitk.sitkFloat32
    assert (share.GetSize(), share.GetSpacing(), share.GetOrigin(), share.GetDirection()) == (
        phantom_pair.ct.GetSize(),
        phantom_pair.ct.GetSpacing(),
        phantom_pair.ct.GetOrigin(),
        phantom_pair.ct.GetDirection(),
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(share), 0.5, atol=1e-5)
    assert fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="average", device="cpu").source_map is None

    maximum = fuse_volumes(phantom_pair.ct, phantom_pair.mr, model="maximum", device="cpu", source_map=True)
    values = sitk.GetArrayFromImage(maximum.source_map)
    ct, mr = sitk.GetArrayFromImage(phantom_pair.ct), sitk.GetArrayFromImage(phantom_pair.mr)
    skull, ventricles = ct > 600, (mr > 800) & (ct < 20) & (ct > -100)
    assert skull.sum() > 100 and ventricles.sum() > 20
    assert np.median(values[skull]) < 0.1  # bone: brighter on the CT, the reference
    assert np.median(values[ventricles]) > 0.9  # CSF: brighter on the T2-like MR, the moving image


def test_source_map_array_slices_along_the_fused_axis(normalised):
    """Smoothing stays in the fused plane: the map of a stack sliced along another axis equals the
    per-slice map computed on that axis."""
    ct, mr = normalised
    fused = np.maximum(ct, mr)
    by_rows = source_map_array(ct, mr, lambda x: x, lambda x: x, fused, slice_axis=1, slab_voxels=ct[:, 0].size * 3)
    expected = np.moveaxis(source_share(np.moveaxis(ct, 1, 0), np.moveaxis(mr, 1, 0), np.moveaxis(fused, 1, 0)), 0, 1)
    np.testing.assert_allclose(by_rows, expected, atol=1e-6)
