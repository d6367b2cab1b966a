"""Tests of varmap.estimators.prior_uncertainty: the Kass-Steffey correction for learned component means,
against the closed forms of the linear-Gaussian hierarchical model and by the coverage it restores."""

import numpy as np
import torch

from varmap.estimators.prior_uncertainty import (
    added_covariance,
    jacobian,
    latent_fisher_information,
    mean_covariance,
    mean_information,
)

FLAT = 1e12 * torch.eye(1, dtype=torch.float64)  # a hyperprior that says nothing


def test_jacobian_and_fisher_information_of_a_linear_gaussian_model():
    rng = np.random.default_rng(0)
    design = torch.as_tensor(rng.normal(size=(5, 3)))
    variance = torch.as_tensor(rng.uniform(0.5, 2.0, size=(4, 5)))
    z = torch.as_tensor(rng.normal(size=(4, 3)))
    moments = lambda codes: (codes @ design.T, variance.expand(*codes.shape[:-1], 5))
    np.testing.assert_allclose(jacobian(lambda codes: moments(codes)[0], z), design.expand(4, 5, 3), atol=1e-8)
    expected = torch.einsum("mi,bm,mj->bij", design, 1.0 / variance, design)
    np.testing.assert_allclose(latent_fisher_information(moments, z), expected, rtol=1e-7)


def test_information_about_a_mean_is_that_of_the_voxels_marginals():
    tau2, s2, n = 0.3, 2.0, 7  # prior variance, one voxel's noise variance, voxels
    fisher = torch.full((n, 1, 1), 1.0 / s2, dtype=torch.float64)
    covariances = torch.full((1, 1, 1), tau2, dtype=torch.float64)
    information = mean_information(fisher, torch.ones(n, 1, dtype=torch.float64), covariances)
    np.testing.assert_allclose(information[0, 0, 0], n / (tau2 + s2), rtol=1e-12)
    # a voxel whose data say nothing (F = 0) adds nothing; one that decides (F -> inf) adds the prior's precision
    silent = mean_information(torch.zeros(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), covariances)
    exact = mean_information(torch.full((1, 1, 1), 1e12, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), covariances)
    np.testing.assert_allclose([silent[0, 0, 0], exact[0, 0, 0]], [0.0, 1.0 / tau2], atol=1e-9)
    # responsibilities weigh each voxel's share, component by component
    two = mean_information(fisher[:2], torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64),
                           covariances.expand(2, 1, 1))
    np.testing.assert_allclose(two[:, 0, 0], np.array([1.25, 0.75]) / (tau2 + s2), rtol=1e-12)


def test_added_variance_is_the_closed_form_of_the_hierarchical_model():
    tau2, s2, n = 0.3, 2.0, 7
    fisher = torch.full((n, 1, 1), 1.0 / s2, dtype=torch.float64)
    covariances = torch.full((1, 1, 1), tau2, dtype=torch.float64)
    responsibilities = torch.ones(n, 1, dtype=torch.float64)
    means_covariance = mean_covariance(mean_information(fisher, responsibilities, covariances), FLAT)
    np.testing.assert_allclose(means_covariance[0, 0, 0], (tau2 + s2) / n, rtol=1e-9)
    added = added_covariance(fisher, responsibilities, covariances, means_covariance)
    shrink = s2 / (tau2 + s2)  # d E[z | y] / d mu
    np.testing.assert_allclose(added[:, 0, 0], shrink**2 * (tau2 + s2) / n, rtol=1e-9)
    # a hyperprior as wide as the component halves nothing away: Cov(mu) = (I + 1/h)^-1
    narrow = mean_covariance(torch.full((1, 1, 1), 4.0, dtype=torch.float64), torch.full((1, 1), 0.25, dtype=torch.float64))
    np.testing.assert_allclose(narrow[0, 0, 0], 1.0 / 8.0, rtol=1e-12)


def test_corrected_intervals_cover_where_the_empirical_bayes_ones_do_not():
    """Few voxels, so the mean estimated from them is uncertain: the plug-in posterior's ±1.96 std
    interval covers too few truths; with the added variance it covers 95 %."""
    rng = np.random.default_rng(1)
    tau2, s2, n, n_sets = 0.5, 1.0, 3, 20000
    truth = rng.normal(size=(n_sets, 1)) * 5 + rng.normal(size=(n_sets, n)) * np.sqrt(tau2)
    data = truth + rng.normal(size=(n_sets, n)) * np.sqrt(s2)
    mean = data.mean(1, keepdims=True)  # the maximum-marginal-likelihood mean
    posterior_mean = mean + tau2 / (tau2 + s2) * (data - mean)
    plug_in = tau2 * s2 / (tau2 + s2)
    fisher = torch.full((n, 1, 1), 1.0 / s2, dtype=torch.float64)
    covariances = torch.full((1, 1, 1), tau2, dtype=torch.float64)
    responsibilities = torch.ones(n, 1, dtype=torch.float64)
    means_covariance = mean_covariance(mean_information(fisher, responsibilities, covariances), FLAT)
    added = added_covariance(fisher, responsibilities, covariances, means_covariance)[:, 0, 0].numpy()
    covered = lambda variance: np.mean(np.abs(posterior_mean - truth) <= 1.96 * np.sqrt(variance))
    assert covered(plug_in) < 0.92
    assert abs(covered(plug_in + added) - 0.95) < 0.006
