"""Tests of the noise level estimated from voxel signals alone."""

import numpy as np
import pytest

from varmap.estimators.noise_level import estimate_sigma_from_b0, estimate_sigma_from_residuals
from varmap.signal_models import get_signal_model
from varmap.simulation import add_noise, hcp_protocol


def test_sigma_from_b0_repeats():
    rng = np.random.default_rng(1)
    b0 = 100.0 + 5.0 * rng.standard_normal((20000, 6))
    assert estimate_sigma_from_b0(b0) == pytest.approx(5.0, rel=0.02)
    assert estimate_sigma_from_b0(b0[:, :1]) is None
    assert estimate_sigma_from_b0(b0[:0]) is None


@pytest.mark.parametrize("sigma", [2.0, 10.0])
def test_sigma_from_residuals_of_anisotropic_signals(sigma):
    """Stick-and-ball signals are anisotropic; the kurtosis fit absorbs that, the residuals are the noise."""
    protocol = hcp_protocol(n_b0=1, n_directions=30, shells=(1000.0, 2000.0), seed=0)
    model = get_signal_model("ball_stick", protocol)
    rng = np.random.default_rng(0)
    n = rng.normal(size=(4000, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    params = {"f": rng.uniform(0.2, 0.7, 4000), "d_par": np.full(4000, 1.7), "d_iso": rng.uniform(0.6, 1.2, 4000), "n": n}
    signals = add_noise(model.predict(params, S0=200.0), sigma=sigma, rng=rng)
    assert estimate_sigma_from_residuals(signals, protocol) == pytest.approx(sigma, rel=0.1)
