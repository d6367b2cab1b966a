"""Geometry: resampled MNI152 templates, crops, fractions and labels."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.phantom import load_tissue_templates
from varmap.phantom.geometry import resolve_crop, tissue_geometry


def test_templates_load_offline_and_resample() -> None:
    wm, gm, brain, affine = load_tissue_templates(2.0)
    assert wm.shape == gm.shape == brain.shape
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 2.0)
    assert np.linalg.det(affine[:3, :3]) < 0  # stored radiologically, like FSL's MNI152
    # near-pure tissue survives the smoothing, WM and GM share a voxel without exceeding it, and
    # the tissue maps lie on the brain mask (the three templates stay aligned)
    assert wm.max() > 0.9 and gm.max() > 0.9
    in_brain = brain >= 0.5
    assert (wm + gm)[in_brain].max() <= 1.0 + 1e-3
    assert wm[~in_brain].sum() < 0.01 * wm.sum() and gm[~in_brain].sum() < 0.05 * gm.sum()
    # brain volume survives resampling: about 1.9 litres in the 1 mm mask
    volume_litres = (brain >= 0.5).sum() * 8.0 / 1e6
    assert 1.6 < volume_litres < 2.2


def test_resolve_crop_centres_boxes_and_keeps_slices() -> None:
    brain = np.zeros((20, 20, 10))
    brain[4:11, 6:13, 2:7] = 1.0
    assert resolve_crop(None, brain.shape, brain) is None
    box = resolve_crop((4, 4, 2), brain.shape, brain)
    assert box == (slice(5, 9), slice(7, 11), slice(3, 5))  # around the centre of mass (7, 9, 4)
    assert resolve_crop((50, 4, 2), brain.shape, brain)[0] == slice(0, 20)  # clipped to the grid
    assert resolve_crop((slice(2, 5), slice(None), slice(-3, None)), brain.shape, brain) == (
        slice(2, 5), slice(0, 20), slice(7, 10)
    )
    for bad in [(4, 4), (0, 4, 4), (4, 4.0, 4), (slice(5, 5), slice(None), slice(None))]:
        with pytest.raises(ValueError, match="crop"):
            resolve_crop(bad, brain.shape, brain)


def test_tissue_geometry_fractions_labels_and_affine() -> None:
    templates = load_tissue_templates(2.0)
    region = (slice(40, 50), slice(50, 60), slice(40, 45))
    geometry = tissue_geometry(templates, region)
    assert geometry.mask.shape == geometry.labels.shape == (10, 10, 5)
    inside = geometry.fractions[geometry.mask]
    np.testing.assert_allclose(inside.sum(-1), 1.0, atol=1e-5)
    assert np.all(geometry.fractions[~geometry.mask] == 0) and np.all(geometry.labels[~geometry.mask] == -1)
    np.testing.assert_array_equal(geometry.labels[geometry.mask], inside.argmax(-1))
    # the region's first voxel sits where the template grid puts voxel (40, 50, 40)
    np.testing.assert_allclose(geometry.affine[:3, 3], (templates[3] @ [40, 50, 40, 1])[:3])
    whole = tissue_geometry(templates, None)
    np.testing.assert_array_equal(whole.fractions[region], geometry.fractions)
