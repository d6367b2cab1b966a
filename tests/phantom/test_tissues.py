"""Tissue parameter maps: clipped to physical limits, MS-DKI kept before its turning point, zero outside."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.phantom import TISSUE_PARAMETERS, TISSUES
from varmap.phantom.tissues import MSDKI_TURNING_MARGIN, PARAMETER_LIMITS, tissue_parameter_maps


def _fields(names, value):
    return {(tissue, name): value.copy() for tissue in TISSUES for name in names}


def test_maps_are_mean_plus_std_times_field_inside_the_limits() -> None:
    z = np.array([[[-100.0, 0.0, 1.0, 100.0]]], dtype=np.float32)
    mask = np.array([[[True, True, True, False]]])
    maps = tissue_parameter_maps("ball_stick", _fields(("f", "d_par", "d_iso"), z), b_max=3.0, mask=mask)
    for tissue in TISSUES:
        for name, (mean, std) in TISSUE_PARAMETERS["ball_stick"][tissue].items():
            values = maps[tissue][name][0, 0]
            assert values.dtype == np.float32
            low, high = PARAMETER_LIMITS[name]
            assert values[0] == np.float32(low)  # clipped from far below
            assert values[1] == np.float32(mean) and values[2] == pytest.approx(mean + std, rel=1e-6)
            assert values[3] == 0.0  # outside the mask


def test_msdki_kurtosis_stays_before_the_turning_point() -> None:
    z = np.linspace(-3.0, 3.0, 50, dtype=np.float32).reshape(50, 1, 1)
    b_max = 3.0
    maps = tissue_parameter_maps("msdki", _fields(("D", "K"), z), b_max=b_max, mask=np.ones(z.shape, dtype=bool))
    for tissue in TISSUES:
        D, K = maps[tissue]["D"], maps[tissue]["K"]
        assert np.all(D * K * b_max <= MSDKI_TURNING_MARGIN * 3.0 * (1 + 1e-6))
    # the cap binds in white matter at high D and K: the map is no longer mean + std * z there
    mean, std = TISSUE_PARAMETERS["msdki"]["WM"]["K"]
    assert np.any(maps["WM"]["K"] < np.float32(mean) + np.float32(std) * z - 1e-3)
