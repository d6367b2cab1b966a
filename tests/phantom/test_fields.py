"""Smooth random fields of the phantom: unit variance, smoothness, crops and draw order; the noise-level field."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.phantom import TISSUES, load_tissue_templates, smooth_random_field
from varmap.phantom.fields import (
    NOISE_FIELD_RANGE,
    S0_FIELD_STD,
    fibre_field,
    noise_field,
    parameter_fields,
    s0_field,
)


def test_smooth_random_field() -> None:
    rng = np.random.default_rng(0)
    field = smooth_random_field((30, 30, 30), fwhm_voxels=4.0, rng=rng)
    assert field.dtype == np.float32
    assert abs(field.mean()) < 1e-4 and field.std() == pytest.approx(1.0, rel=1e-4)
    # smooth: neighbours strongly correlated
    assert np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1] > 0.8
    white = smooth_random_field((30, 30, 30), fwhm_voxels=0.0, rng=rng)
    assert abs(np.corrcoef(white[:-1].ravel(), white[1:].ravel())[0, 1]) < 0.05


def test_fields_are_crops_of_the_whole_grid_in_draw_order() -> None:
    grid = {"grid_shape": (16, 14, 12), "fwhm_voxels": 3.0}
    region = (slice(2, 9), slice(3, 10), slice(1, 6))
    whole = parameter_fields(("a", "b"), region=(slice(None),) * 3, rng=np.random.default_rng(5), **grid)
    cropped = parameter_fields(("a", "b"), region=region, rng=np.random.default_rng(5), **grid)
    assert list(cropped) == [(tissue, name) for tissue in TISSUES for name in ("a", "b")]
    for key, field in cropped.items():
        np.testing.assert_array_equal(field, whole[key][region])
    # the fields come first in the stream, then the S0 field: drawing them in that order is what
    # makes a seed reproducible
    rng = np.random.default_rng(5)
    parameter_fields(("a", "b"), region=region, rng=rng, **grid)
    bias = s0_field(region=region, rng=rng, **grid)
    assert abs(float(bias.mean()) - 1.0) < 3 * S0_FIELD_STD and float(bias.std()) < 2 * S0_FIELD_STD


def test_fibre_field_is_unit() -> None:
    direction = fibre_field(grid_shape=(12, 12, 12), region=(slice(None),) * 3, voxel_size=4.0,
                            rng=np.random.default_rng(1))
    assert direction.shape == (12, 12, 12, 3) and direction.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, atol=1e-5)


def test_noise_field_spans_one_to_three_over_the_brain_smoothly() -> None:
    _, _, brain, _ = load_tissue_templates(4.0)
    whole = (slice(None),) * 3
    field = noise_field(brain=brain, region=whole, voxel_size=4.0, rng=np.random.default_rng(0))
    inside = brain >= 0.5
    assert field.shape == brain.shape and field.dtype == np.float32 and np.all(field > 0)
    assert field[inside].min() == pytest.approx(NOISE_FIELD_RANGE[0], rel=1e-5)
    assert field[inside].max() == pytest.approx(NOISE_FIELD_RANGE[1], rel=1e-5)
    # smooth like a coil profile: neighbouring brain voxels differ by a few per cent at most
    step = np.abs(np.diff(np.log(field), axis=0))[inside[1:] & inside[:-1]]
    assert step.max() < 0.1
    # highest deep inside the head, lowest near its surface (the coils)
    centre = tuple(np.round(np.argwhere(inside).mean(axis=0)).astype(int))
    assert field[centre] > np.median(field[inside])
    region = (slice(5, 20), slice(10, 30), slice(8, 16))
    crop = noise_field(brain=brain, region=region, voxel_size=4.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(crop, field[region], rtol=1e-6)
    other = noise_field(brain=brain, region=whole, voxel_size=4.0, rng=np.random.default_rng(1))
    assert not np.allclose(other, field)
