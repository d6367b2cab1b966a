"""Per-voxel results back into image space."""

from __future__ import annotations

import numpy as np
import pytest

import varmap
from varmap.io import open_dwi
from varmap.pipeline import maps


@pytest.fixture(scope="module")
def nlls_fit(ellipsoid_scan):
    (dwi, bval, bvec), _, _ = ellipsoid_scan
    return varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", progress=False, figure=False)


def test_chunked_goodness_of_fit_equals_fit_result(ellipsoid_scan, nlls_fit, monkeypatch):
    signals = open_dwi(ellipsoid_scan[0][0]).extract(nlls_fit.mask)
    monkeypatch.setattr(maps, "_GOF_CHUNK", 37)
    chunked = maps.goodness_of_fit(nlls_fit.fit, signals)
    np.testing.assert_allclose(chunked, nlls_fit.fit.goodness_of_fit(signals), rtol=1e-5)
    np.testing.assert_allclose(nlls_fit.maps["rmse"][nlls_fit.mask], chunked, rtol=1e-5)


def test_image_maps_units_and_zero_outside(ellipsoid_scan, nlls_fit):
    signals = open_dwi(ellipsoid_scan[0][0]).extract(nlls_fit.mask)
    images, units = maps.image_maps(nlls_fit.fit, signals, nlls_fit.mask)
    assert set(images) == set(units) == {"D", "K", "S0", "rmse", "sigma", "mask"}
    assert units["D"] == "µm²/ms"
    for name, array in images.items():
        assert array.dtype == np.float32 and array.shape == nlls_fit.mask.shape, name
        assert np.all(array[~nlls_fit.mask] == 0), name
    np.testing.assert_array_equal(images["mask"] > 0, nlls_fit.mask)
    np.testing.assert_allclose(images["sigma"][nlls_fit.mask], nlls_fit.fit.sigma, rtol=1e-6)
