"""The refined-grid posterior against a conjugate Gaussian case with closed-form answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from varmap.evaluation.oracle.grid_posterior import combine_clusters, grid_posterior
from varmap.simulation import ClusterPrior


def test_gaussian_prior_and_likelihood_give_the_conjugate_posterior():
    prior = ClusterPrior(names=("a", "b"), weights=[1.0], means=[[0.0, 0.0]], variances=[[1.0, 4.0]])
    data = torch.tensor([[0.5, -1.0], [2.0, 3.0], [-1.5, 0.2]], dtype=torch.float64)
    noise_var = torch.tensor([0.01, 0.09], dtype=torch.float64)  # likelihood far narrower than the prior

    def log_likelihood(theta, voxels):
        return (-0.5 * (theta - data[voxels, None, :]) ** 2 / noise_var).sum(-1)

    mean, cov, log_z, levels = grid_posterior(log_likelihood, prior, n_voxels=3, n_grid=41, max_refinements=50)
    assert mean.shape == (3, 1, 2) and cov.shape == (3, 1, 2, 2) and log_z.shape == (3, 1) and levels >= 1
    prior_var = torch.tensor([1.0, 4.0], dtype=torch.float64)
    post_var = 1.0 / (1.0 / prior_var + 1.0 / noise_var)
    np.testing.assert_allclose(mean[:, 0].numpy(), (post_var * data / noise_var).numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(cov[:, 0].diagonal(dim1=-2, dim2=-1).numpy(), post_var.expand(3, 2).numpy(), rtol=1e-6)
    assert float(cov[:, 0, 0, 1].abs().max()) < 1e-9
    # evidence: the likelihood is unnormalised, so log Z = log N(y; 0, prior + noise) + log(2π noise)/2 per axis
    total = prior_var + noise_var
    expected = (-0.5 * data**2 / total - 0.5 * torch.log(total / noise_var)).sum(-1)
    np.testing.assert_allclose(log_z[:, 0].numpy(), expected.numpy(), rtol=1e-8, atol=1e-8)


def test_grid_posterior_reports_unconverged_grids():
    prior = ClusterPrior(names=("a", "b"), weights=[1.0], means=[[0.0, 0.0]], variances=[[1.0, 1.0]])

    def sharp(theta, voxels):  # a posterior far narrower than any first-level grid cell
        return -0.5 * (theta**2).sum(-1) / 1e-12

    with pytest.raises(RuntimeError, match="max_refinements"):
        grid_posterior(sharp, prior, n_voxels=1, n_grid=5, max_refinements=1)


def test_combine_clusters_uses_the_laws_of_total_expectation_and_variance():
    means = torch.tensor([[[0.0], [2.0]]], dtype=torch.float64)
    covs = torch.tensor([[[[1.0]], [[4.0]]]], dtype=torch.float64)
    weights = np.array([0.25, 0.75])
    mean, variance, probs = combine_clusters(means, covs, torch.zeros(1, 2, dtype=torch.float64), weights)
    np.testing.assert_allclose(probs.numpy(), [[0.25, 0.75]])
    assert float(mean) == pytest.approx(1.5)
    assert float(variance) == pytest.approx(0.25 * (1 + 0) + 0.75 * (4 + 4) - 1.5**2)
    # a cluster with zero probability does not leak its (possibly non-finite) moments
    means[0, 0, 0] = math.inf
    log_evidence = torch.tensor([[-math.inf, 0.0]], dtype=torch.float64)
    mean, variance, probs = combine_clusters(means, covs, log_evidence, weights)
    assert float(mean) == pytest.approx(2.0) and float(variance) == pytest.approx(4.0)
    np.testing.assert_allclose(probs.numpy(), [[0.0, 1.0]])
