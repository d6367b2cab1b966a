"""Tests of varmap.simulation.datasets: simulate() and SimulatedData."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.protocol import Protocol
from varmap.signal_models import get_signal_model
from varmap.simulation import ball_stick_prior, hcp_protocol, msdki_paper_prior, simulate


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    """The default HCP-like protocol (288 measurements)."""
    return hcp_protocol()


def test_simulate_shapes_and_noise_level(protocol):
    model = get_signal_model("msdki", protocol)
    data = simulate(model, msdki_paper_prior(), n_voxels=300, snr=20, S0=500.0, seed=1)
    assert data.signals.shape == (300, 288) and data.n_voxels == 300
    assert data.sigma == pytest.approx(25.0) and data.snr == 20 and data.model == "msdki"
    np.testing.assert_allclose(data.S0, 500.0)
    assert data.labels.shape == (300,) and set(data.params) == {"D", "K"}
    residual = data.signals - model.predict(data.params, S0=data.S0)
    assert residual[:, protocol.b0_mask].std() == pytest.approx(25.0, rel=0.1)


def test_simulate_ball_stick_with_per_voxel_S0(protocol):
    model = get_signal_model("ball_stick", protocol)
    S0 = np.linspace(800.0, 1200.0, 40)
    data = simulate(model, ball_stick_prior(), n_voxels=40, snr=50, S0=S0, seed=2)
    assert data.params["n"].shape == (40, 3)
    assert data.sigma == pytest.approx(S0.mean() / 50)
    np.testing.assert_array_equal(data.S0, S0)


def test_simulate_is_deterministic(protocol):
    model = get_signal_model("msdki", protocol)
    first = simulate(model, msdki_paper_prior(), n_voxels=20, snr=10, seed=7)
    again = simulate(model, msdki_paper_prior(), n_voxels=20, snr=10, seed=7)
    other = simulate(model, msdki_paper_prior(), n_voxels=20, snr=10, seed=8)
    np.testing.assert_array_equal(first.signals, again.signals)
    np.testing.assert_array_equal(first.params["D"], again.params["D"])
    assert not np.array_equal(first.signals, other.signals)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"snr": 0.0}, "snr"),
        ({"snr": float("nan")}, "snr"),
        ({"n_voxels": 0}, "n_voxels"),
        ({"n_voxels": 2.5}, "n_voxels"),
        ({"noise": "laplace"}, "noise"),
        ({"S0": -1.0}, "S0"),
    ],
)
def test_simulate_validates_arguments(protocol, kwargs, match):
    arguments = {"n_voxels": 5, "snr": 10.0} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate(get_signal_model("msdki", protocol), msdki_paper_prior(), **arguments)


def test_simulate_rejects_a_prior_of_another_model(protocol):
    with pytest.raises(ValueError, match="get_prior"):
        simulate(get_signal_model("msdki", protocol), ball_stick_prior(), n_voxels=5, snr=10)


def test_noise_variation_scales_each_voxels_noise(protocol):
    """Per-voxel noise levels: the same parameters and standard normal draws as with one noise level,
    each voxel's noise scaled by a factor in [1, r]."""
    model = get_signal_model("msdki", protocol)
    kwargs = dict(n_voxels=400, snr=10, S0=1000.0, noise="gaussian", seed=3)
    uniform = simulate(model, msdki_paper_prior(), **kwargs)
    varying = simulate(model, msdki_paper_prior(), noise_variation=4.0, **kwargs)
    assert isinstance(uniform.sigma, float) and uniform.noise_variation == 1.0
    assert varying.sigma.shape == (400,) and varying.noise_variation == 4.0 and varying.snr == 10
    factor = varying.sigma / uniform.sigma
    assert factor.min() >= 1.0 and factor.max() <= 4.0
    # log-uniform on [1, 4]: log factors spread evenly over [0, log 4]
    assert np.mean(np.log(factor)) == pytest.approx(np.log(4.0) / 2, abs=0.1)
    assert factor.max() > 3.5 and factor.min() < 1.2
    np.testing.assert_array_equal(varying.params["D"], uniform.params["D"])
    clean = model.predict(uniform.params, S0=uniform.S0)
    expected = factor[:, None] * (uniform.signals - clean)
    np.testing.assert_allclose(varying.signals - clean, expected, rtol=1e-9, atol=1e-9)


def test_S0_range_draws_S0_per_voxel(protocol):
    model = get_signal_model("msdki", protocol)
    data = simulate(model, msdki_paper_prior(), n_voxels=500, snr=20, S0_range=(600.0, 1400.0), seed=4)
    assert data.S0_range == (600.0, 1400.0)
    assert data.S0.min() >= 600.0 and data.S0.max() <= 1400.0 and data.S0.std() > 150.0
    assert data.sigma == pytest.approx(1000.0 / 20)  # the SNR of the distribution's mean S0
    known = simulate(model, msdki_paper_prior(), n_voxels=500, snr=20, S0=1000.0, seed=4)
    np.testing.assert_array_equal(data.params["K"], known.params["K"])
    again = simulate(model, msdki_paper_prior(), n_voxels=500, snr=20, S0_range=(600.0, 1400.0), seed=4)
    np.testing.assert_array_equal(again.signals, data.signals)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_variation": 0.5}, "noise_variation"),
        ({"noise_variation": float("inf")}, "noise_variation"),
        ({"S0_range": (0.0, 10.0)}, "S0_range"),
        ({"S0_range": (10.0, 5.0)}, "S0_range"),
        ({"S0_range": (1.0,)}, "S0_range"),
        ({"S0_range": (1.0, 2.0), "S0": 1.0}, "not both"),
    ],
)
def test_simulate_validates_variants(protocol, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(get_signal_model("msdki", protocol), msdki_paper_prior(), n_voxels=5, snr=10.0, **kwargs)
