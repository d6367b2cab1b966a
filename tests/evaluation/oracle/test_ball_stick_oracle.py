"""The ball-and-stick MCMC oracle: recovery at high SNR, determinism, prior check."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.evaluation import angular_error_deg, ball_stick_oracle
from varmap.protocol import Protocol
from varmap.signal_models import get_signal_model
from varmap.simulation import ball_stick_prior, hcp_protocol, msdki_paper_prior, simulate


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    """The default HCP-like protocol (288 measurements): the oracles' accuracy is checked on it."""
    return hcp_protocol()


def test_ball_stick_oracle_recovers_truth_at_high_snr(protocol):
    model = get_signal_model("ball_stick", protocol)
    data = simulate(model, ball_stick_prior(), n_voxels=40, snr=150, seed=0)
    kwargs = dict(sigma=data.sigma, S0=data.S0, n_burn=400, n_steps=300, n_init=32, seed=1)
    result = ball_stick_oracle(data.signals, protocol, data.prior, **kwargs)
    assert result.method == "mcmc"
    assert 0.1 < result.diagnostics["acceptance_scalars"] < 0.6
    fibre = data.params["f"] > 0.2
    assert np.all(np.abs(result.params["f"] - data.params["f"]) < 0.02)
    assert np.all(np.abs(result.params["d_iso"] - data.params["d_iso"]) < 0.1)
    assert np.all(np.abs(result.params["d_par"] - data.params["d_par"])[fibre] < 0.1)
    assert np.all(angular_error_deg(result.params["n"], data.params["n"])[fibre] < 3.0)
    np.testing.assert_allclose(np.linalg.norm(result.params["n"], axis=1), 1.0)
    np.testing.assert_allclose(result.cluster_probs.sum(1), 1.0)
    again = ball_stick_oracle(data.signals, protocol, data.prior, **kwargs)
    np.testing.assert_array_equal(again.params["f"], result.params["f"])


def test_ball_stick_oracle_validates_prior(protocol):
    with pytest.raises(ValueError, match="prior"):
        ball_stick_oracle(
            np.ones((2, protocol.n_measurements)), protocol, msdki_paper_prior(), sigma=0.1, S0=1.0
        )


def test_ball_stick_oracle_per_voxel_sigma_equal_everywhere_is_the_scalar_oracle(protocol):
    model = get_signal_model("ball_stick", protocol)
    data = simulate(model, ball_stick_prior(), n_voxels=6, snr=30, seed=2)
    kwargs = dict(S0=data.S0, n_burn=60, n_steps=40, n_init=8, seed=3)
    scalar = ball_stick_oracle(data.signals, protocol, data.prior, sigma=data.sigma, **kwargs)
    per_voxel = ball_stick_oracle(data.signals, protocol, data.prior, sigma=np.full(6, data.sigma), **kwargs)
    for name in ("f", "d_par", "d_iso", "n"):
        np.testing.assert_allclose(per_voxel.params[name], scalar.params[name], rtol=1e-12, atol=1e-12)
