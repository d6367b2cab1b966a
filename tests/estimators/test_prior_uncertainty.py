"""Tests of varmap.estimators.prior_uncertainty: the Kass-Steffey correction for learned component means,
against the closed forms of the linear-Gaussian hierarchical model and by the coverage it restores."""

import numpy as np
import torch

from varmap.estimators.prior_uncertainty import (
    added_covariance,
    jacobian,
    latent_fisher_information,
    latent_noise_score,
    mean_covariance,
    mean_information,
    mean_noise_score,
    shared_noise_covariance,
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


def test_a_shared_noise_level_error_moves_the_mean_as_it_moves_every_voxel():
    """A noise floor that adds σ·u to every voxel's expected observables (linear model m = Wz + σu): a
    noise level wrong by a factor e^δ moves every voxel's signal-implied code by F⁻¹ g δ, so the mean
    learned from them moves by exactly that, whatever the prior's covariance, and the shared error's
    variance s² adds s² (F⁻¹g)(F⁻¹g)ᵀ to Cov(μ)."""
    rng = np.random.default_rng(2)
    n, log_sd = 7, 0.05
    design, floor = torch.as_tensor(rng.normal(size=(4, 2))), torch.as_tensor(rng.uniform(0.2, 1.0, size=4))
    variance = torch.as_tensor(rng.uniform(0.5, 2.0, size=4)).expand(n, 4)

    def moments(codes, log_noise_scale=0.0):
        return codes @ design.T + floor * np.exp(log_noise_scale), variance.expand(*codes.shape[:-1], 4)

    z = torch.as_tensor(rng.normal(size=(n, 2)))
    fisher = latent_fisher_information(moments, z)
    score = latent_noise_score(moments, z)
    np.testing.assert_allclose(score, (design.T @ (floor / variance[0])).expand(n, 2), rtol=1e-6)
    shift = torch.linalg.solve(fisher[0], score[0])  # each voxel's code moves by this per unit log σ
    covariances = torch.as_tensor([[[0.3, 0.1], [0.1, 0.5]]], dtype=torch.float64)
    flat = 1e12 * torch.eye(2, dtype=torch.float64)
    responsibilities = torch.ones(n, 1, dtype=torch.float64)
    means_covariance = mean_covariance(mean_information(fisher, responsibilities, covariances), flat)
    pull = mean_noise_score(fisher, score, responsibilities, covariances)
    shared = shared_noise_covariance(means_covariance, pull, log_sd)
    np.testing.assert_allclose(shared[0], log_sd**2 * torch.outer(shift, shift), rtol=1e-6)
    # a given noise level, or voxels whose signals do not depend on it, add nothing
    assert shared_noise_covariance(means_covariance, pull, 0.0).abs().max() == 0
    silent = mean_noise_score(fisher, torch.zeros_like(score), responsibilities, covariances)
    assert shared_noise_covariance(means_covariance, silent, log_sd).abs().max() == 0
    # two components share the voxels: each mean still moves by the voxels' shift
    two = torch.tensor([[1.0, 0.0]] * 3 + [[0.25, 0.75]] * 4, dtype=torch.float64)
    covariances = torch.cat([covariances, torch.as_tensor([[[0.2, -0.05], [-0.05, 0.9]]], dtype=torch.float64)])
    means_covariance = mean_covariance(mean_information(fisher, two, covariances), flat)
    shared = shared_noise_covariance(means_covariance, mean_noise_score(fisher, score, two, covariances), log_sd)
    np.testing.assert_allclose(shared, log_sd**2 * torch.outer(shift, shift).expand(2, 2, 2), rtol=1e-6)


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
