"""Tests of varmap.simulation.cluster_prior: the truncated Gaussian-mixture ClusterPrior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varmap.simulation import ClusterPrior, msdki_paper_prior, msdki_physical_prior


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
