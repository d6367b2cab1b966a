"""Tests of the noise level estimated from voxel signals alone."""

import numpy as np
import pytest

from varmap.estimators.noise_level import estimate_sigma_from_b0, estimate_sigma_per_voxel
from varmap.signal_models import get_signal_model
from varmap.simulation import add_noise, get_prior, hcp_protocol, simulate


def test_sigma_from_b0_repeats():
    rng = np.random.default_rng(1)
    b0 = 100.0 + 5.0 * rng.standard_normal((20000, 6))
    assert estimate_sigma_from_b0(b0) == pytest.approx(5.0, rel=0.02)
    assert estimate_sigma_from_b0(b0[:, :1]) is None
    assert estimate_sigma_from_b0(b0[:0]) is None


@pytest.mark.parametrize("sigma", [2.0, 10.0])
def test_per_voxel_sigma_of_anisotropic_signals(sigma):
    """Stick-and-ball signals are anisotropic; the kurtosis fit absorbs that, the residuals are the noise.
    One noise level everywhere: every voxel's estimate is close to it (shrunk towards the median)."""
    protocol = hcp_protocol(n_b0=1, n_directions=30, shells=(1000.0, 2000.0), seed=0)
    model = get_signal_model("ball_stick", protocol)
    rng = np.random.default_rng(0)
    n = rng.normal(size=(4000, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    params = {"f": rng.uniform(0.2, 0.7, 4000), "d_par": np.full(4000, 1.7), "d_iso": rng.uniform(0.6, 1.2, 4000), "n": n}
    signals = add_noise(model.predict(params, S0=200.0), sigma=sigma, rng=rng)
    estimate = estimate_sigma_per_voxel(signals, protocol)
    assert estimate.typical == pytest.approx(sigma, rel=0.1)
    assert np.quantile(np.abs(np.log(estimate.sigma / sigma)), 0.9) < 0.15
    assert estimate.shrinkage < 0.5


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_per_voxel_sigma_follows_a_varying_noise_level(snr):
    """Noise levels 1-4x between voxels, S0 varying, Rician noise down to b0 SNR 1.25: each voxel's estimate
    follows its own level without bias (the Rician correction) in every tissue cluster, free water included."""
    protocol = hcp_protocol(n_b0=6, n_directions=30, seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=4000, snr=snr, noise_variation=4.0,
                     S0_range=(600.0, 1400.0), seed=3)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    log_ratio = np.log(estimate.sigma / truth.sigma)
    for cluster in np.unique(truth.labels):
        assert abs(np.mean(log_ratio[truth.labels == cluster])) < 0.08
    assert np.std(log_ratio) < 0.3  # the true levels spread by 0.40 in log sigma
    assert np.corrcoef(np.log(estimate.sigma), np.log(truth.sigma))[0, 1] > 0.75
    assert estimate.shrinkage > 0.8


def test_too_short_a_protocol_is_refused():
    protocol = hcp_protocol(n_b0=1, n_directions=6, shells=(1000.0, 2000.0), seed=0)
    with pytest.raises(ValueError, match="Pass sigma="):
        estimate_sigma_per_voxel(np.full((5, protocol.n_measurements), 100.0), protocol)
