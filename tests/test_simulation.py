"""Tests of varmap.simulation: protocols, cluster priors, noise and simulate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from varmap.protocol import Protocol
from varmap.signal_models import get_signal_model
from varmap.simulation import (
    PRIORS,
    ClusterPrior,
    add_noise,
    ball_stick_prior,
    get_prior,
    hcp_protocol,
    msdki_paper_prior,
    msdki_physical_prior,
    rician_log_pdf,
    simulate,
)


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    return hcp_protocol()


# ------------------------------------------------------------------------------------------ protocol
def test_hcp_protocol_layout(protocol):
    assert protocol.n_measurements == 288
    assert protocol.n_b0 == 18
    np.testing.assert_allclose(protocol.dw_shell_bvals, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(protocol.shell_counts, [18, 90, 90, 90])
    dw = ~protocol.b0_mask
    np.testing.assert_allclose(np.linalg.norm(protocol.bvecs[dw], axis=1), 1.0, atol=1e-12)


def test_hcp_protocol_directions_are_well_spread_and_differ_between_shells(protocol):
    shells = [protocol.bvecs[protocol.shell_index == s] for s in (1, 2, 3)]
    for directions in shells:
        cosine = np.abs(directions @ directions.T)
        np.fill_diagonal(cosine, 0.0)
        assert np.degrees(np.arccos(cosine.max())) > 10.0  # lines, so n and -n count as one
    assert not np.allclose(shells[0], shells[1])


def test_hcp_protocol_is_deterministic_and_seeded():
    assert hcp_protocol(seed=3) == hcp_protocol(seed=3)
    assert hcp_protocol(seed=3) != hcp_protocol(seed=4)
    small = hcp_protocol(n_b0=2, n_directions=10, shells=[500, 1500])
    assert small.n_measurements == 22 and small.dw_shell_bvals.tolist() == [0.5, 1.5]


@pytest.mark.parametrize("kwargs", [{"n_b0": 0}, {"n_directions": 0}, {"shells": ()}, {"shells": (-5.0,)}])
def test_hcp_protocol_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        hcp_protocol(**kwargs)


# ------------------------------------------------------------------------------------------ priors
def test_paper_prior_is_as_published():
    prior = msdki_paper_prior()
    assert prior.names == ("D", "K") and not prior.has_direction
    np.testing.assert_allclose(prior.weights, [0.5, 0.4, 0.1])
    np.testing.assert_allclose(prior.means, [[1.0, 1.25], [1.5, 1.0], [3.0, 0.0]])
    np.testing.assert_allclose(prior.variances, [[0.015, 0.015], [0.015, 0.015], [0.003, 0.003]])
    np.testing.assert_allclose(prior.log_mass, 0.0)


def test_paper_prior_sample_moments():
    prior = msdki_paper_prior()
    params, labels = prior.sample(200_000, np.random.default_rng(0))
    values = np.stack([params["D"], params["K"]], axis=1)
    np.testing.assert_allclose(np.bincount(labels) / labels.size, prior.weights, atol=0.005)
    for k in range(prior.n_clusters):
        cluster = values[labels == k]
        tolerance = 5 * prior.stds[k].max() / math.sqrt(len(cluster))
        np.testing.assert_allclose(cluster.mean(0), prior.means[k], atol=tolerance)
        np.testing.assert_allclose(cluster.var(0), prior.variances[k], rtol=0.05)


def test_physical_prior_respects_its_support():
    b_max = 3.0
    prior = msdki_physical_prior(b_max)
    params, labels = prior.sample(50_000, np.random.default_rng(1))
    D, K = params["D"], params["K"]
    assert np.all(D > 0) and np.all(K >= 0) and np.all(D * K * b_max < 3)
    # Truncated clusters keep their weights (draws are redone within the cluster).
    np.testing.assert_allclose(np.bincount(labels) / labels.size, prior.weights, atol=0.01)


def test_physical_prior_mass_matches_monte_carlo():
    prior = msdki_physical_prior(2.5)
    rng = np.random.default_rng(2)
    for k in range(prior.n_clusters):
        draws = prior.means[k] + prior.stds[k] * rng.standard_normal((400_000, 2))
        kept = prior.in_support(draws).mean()
        assert math.exp(prior.log_mass[k]) == pytest.approx(kept, abs=4e-3)


@pytest.mark.parametrize("make", [msdki_paper_prior, msdki_physical_prior])
def test_log_density_integrates_to_one(make):
    prior = make()
    D = np.linspace(-0.5, 4.5, 1201)
    K = np.linspace(-1.5, 2.5, 1201)
    grid = np.stack(np.meshgrid(D, K, indexing="ij"), axis=-1)
    density = np.exp(prior.log_density(grid))
    integral = density.sum() * (D[1] - D[0]) * (K[1] - K[0])
    assert integral == pytest.approx(1.0, abs=5e-3)


def test_log_density_matches_samples_of_truncated_prior():
    prior = msdki_physical_prior()
    params, _ = prior.sample(200_000, np.random.default_rng(3))
    observed = np.mean(params["K"] < 0.9)
    D = np.linspace(0.0, 4.0, 801)
    K = np.linspace(0.0, 0.9, 901)
    grid = np.stack(np.meshgrid(D, K, indexing="ij"), axis=-1)
    expected = np.exp(prior.log_density(grid)).sum() * (D[1] - D[0]) * (K[1] - K[0])
    assert expected == pytest.approx(observed, abs=0.01)


def test_responsibilities_and_cluster_densities():
    prior = msdki_paper_prior()
    values = np.array([[1.0, 1.25], [3.0, 0.0]])
    resp = prior.responsibilities(values)
    np.testing.assert_allclose(resp.sum(-1), 1.0)
    assert resp[0].argmax() == 0 and resp[1].argmax() == 2
    full = prior.cluster_log_density(values)
    np.testing.assert_allclose(prior.cluster_log_density(values, np.array([2, 1])), full[[0, 1], [2, 1]])


def test_ball_stick_prior():
    prior = ball_stick_prior()
    params, labels = prior.sample(20_000, np.random.default_rng(4))
    assert prior.names == ("f", "d_par", "d_iso") and prior.has_direction
    assert np.all((params["f"] >= 0) & (params["f"] <= 1))
    for name in ("d_par", "d_iso"):
        assert np.all((params[name] > 0) & (params[name] <= 4))
    np.testing.assert_allclose(np.linalg.norm(params["n"], axis=1), 1.0)
    # Uniform directions: E[n n^T] = I/3.
    np.testing.assert_allclose(params["n"].T @ params["n"] / len(labels), np.eye(3) / 3, atol=0.02)


def test_cluster_prior_validation():
    with pytest.raises(ValueError, match="means"):
        ClusterPrior(names=("D", "K"), weights=[1.0], means=[[1.0]], variances=[[1.0, 1.0]])
    with pytest.raises(ValueError, match="variances"):
        ClusterPrior(names=("D",), weights=[1.0], means=[[1.0]], variances=[[-1.0]])
    with pytest.raises(ValueError, match=">= 0"):
        ClusterPrior(names=("D", "K"), weights=[1.0], means=[[1.0, 1.0]], variances=[[1.0, 1.0]],
                     max_product=("D", "K", 1.0))
    with pytest.raises(ValueError, match="lower bound"):
        ClusterPrior(names=("D",), weights=[1.0], means=[[1.0]], variances=[[1.0]], lower=[2.0], upper=[1.0])


def test_get_prior_registry():
    assert set(PRIORS) == {"msdki", "ball_stick"}
    assert get_prior("msdki", "physical", b_max=2.0).max_product == ("D", "K", 1.5)
    with pytest.raises(ValueError, match="paper"):
        get_prior("msdki", "nonsense")
    with pytest.raises(ValueError, match="ball_stick"):
        get_prior("ivim", "paper")


# ------------------------------------------------------------------------------------------ noise
def test_rician_noise_floor():
    sigma = 0.3
    noisy = add_noise(np.zeros(400_000), sigma=sigma, rng=0)
    floor = sigma * math.sqrt(math.pi / 2)
    assert noisy.mean() == pytest.approx(floor, abs=4 * noisy.std() / math.sqrt(noisy.size))
    assert np.all(noisy >= 0)


def test_gaussian_noise_and_high_snr_rician():
    clean = np.full(200_000, 2.0)
    gaussian = add_noise(clean, sigma=0.1, kind="gaussian", rng=1)
    assert gaussian.mean() == pytest.approx(2.0, abs=2e-3) and gaussian.std() == pytest.approx(0.1, rel=0.01)
    rician = add_noise(clean, sigma=0.01, kind="rician", rng=1)
    assert rician.mean() == pytest.approx(2.0 + 0.01**2 / 4.0, abs=1e-4)  # E[m] ≈ ν + σ²/2ν


def test_add_noise_is_seeded_and_validates():
    clean = np.linspace(0, 1, 50)
    np.testing.assert_array_equal(add_noise(clean, sigma=0.1, rng=5), add_noise(clean, sigma=0.1, rng=5))
    assert not np.array_equal(add_noise(clean, sigma=0.1, rng=5), add_noise(clean, sigma=0.1, rng=6))
    with pytest.raises(ValueError, match="rician"):
        add_noise(clean, sigma=0.1, kind="laplace", rng=0)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(clean, sigma=-1.0, rng=0)


@pytest.mark.parametrize("nu", [0.0, 0.4, 3.0])
def test_rician_log_pdf_is_the_rice_density(nu):
    sigma = 0.5
    m = np.linspace(1e-6, 8.0, 20_001)
    log_pdf = rician_log_pdf(torch.tensor(m), torch.tensor(nu, dtype=torch.float64), sigma).numpy()
    np.testing.assert_allclose(log_pdf, stats.rice.logpdf(m, nu / sigma, scale=sigma), rtol=1e-9, atol=1e-9)
    assert np.exp(log_pdf).sum() * (m[1] - m[0]) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ simulate
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
