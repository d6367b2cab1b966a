"""The noise level a fit starts from: the image-based estimate, and when the pipeline supplies it."""

from __future__ import annotations

import numpy as np
import pytest
from ellipsoid_scans import SIGMA

from varmap.io import InputError, load_protocol, open_dwi
from varmap.pipeline.noise import (
    SIGMA_FROM_B0_VOLUMES,
    SIGMA_FROM_IMAGE,
    SIGMA_GIVEN,
    estimate_sigma_from_image,
    noise_level,
)


def opened(scan):
    (dwi, bval, bvec), inside, _ = scan
    image = open_dwi(dwi)
    return image, load_protocol(bval, bvec, n_volumes=image.n_volumes), inside


def test_image_estimate_recovers_the_simulated_noise(one_b0_scan):
    image, protocol, inside = opened(one_b0_scan)
    assert protocol.n_b0 == 1
    assert estimate_sigma_from_image(image, protocol, inside) == pytest.approx(SIGMA, rel=0.25)


def test_image_estimate_refuses_a_flat_image(one_b0_scan, monkeypatch):
    image, protocol, inside = opened(one_b0_scan)
    monkeypatch.setattr(type(image), "volumes", lambda self, start, stop: np.ones((*self.spatial_shape, stop - start),
                                                                                   np.float32))
    with pytest.raises(InputError, match="cannot estimate the noise level.*--sigma"):
        estimate_sigma_from_image(image, protocol, inside)


def test_noise_level_decides_who_estimates(ellipsoid_scan, one_b0_scan):
    image, protocol, inside = opened(ellipsoid_scan)
    assert noise_level(image, protocol, inside, 12.5) == (12.5, SIGMA_GIVEN)
    assert noise_level(image, protocol, inside, None) == (None, SIGMA_FROM_B0_VOLUMES)
    image, protocol, inside = opened(one_b0_scan)
    assert noise_level(image, protocol, inside, 12.5) == (12.5, SIGMA_GIVEN)
    sigma, source = noise_level(image, protocol, inside, None)
    assert source == SIGMA_FROM_IMAGE and sigma == estimate_sigma_from_image(image, protocol, inside)
