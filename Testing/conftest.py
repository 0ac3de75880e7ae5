"""Shared fixtures: small synthetic phantoms (always available) and the shared data (optional)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from MedFusionLib.devtools.shared_data import shared_data_dir
from MedFusionLib.imaging.phantom import HeadPhantom, make_head_phantom

# A coarse grid (3.5 × 3.5 × 4.5 mm) that still holds the whole phantom head: fast to render and fuse.
SMALL_SIZE = (48, 56, 40)
SMALL_SPACING = (3.5, 3.5, 4.5)


@pytest.fixture(scope="session")
def phantom_pair() -> HeadPhantom:
    """An aligned CT/MR phantom pair on one small grid (CT in HU, MR T2-like)."""
    return make_head_phantom(size=SMALL_SIZE, spacing=SMALL_SPACING, seed=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (:func:`~MedFusionLib.devtools.shared_data.shared_data_dir`); tests that use
    it are skipped on a machine without it."""
    folder = shared_data_dir()
    if folder is None:
        pytest.skip("shared data (../shared/data beside the checkout) not found")
    return folder


def oblique(image: sitk.Image, angles_deg=(10.0, -20.0, 30.0)) -> sitk.Image:
    """A copy of ``image`` with an oblique direction matrix (same voxels, rotated grid)."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*[a * 3.141592653589793 / 180.0 for a in angles_deg])
    copy = sitk.Image(image)
    copy.SetDirection(rotation.GetMatrix())
    return copy
