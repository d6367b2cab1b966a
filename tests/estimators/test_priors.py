"""Priors: densities and KL against torch.distributions, the mixture's splits and EM refinement."""

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from varmap.estimators.priors import CovarianceBlocks, GaussianMixturePrior, StandardNormalPrior, bhattacharyya_distance


def _random_prior(seed: int = 0, n_components: int = 3, n_latent: int = 3) -> GaussianMixturePrior:
    generator = torch.Generator().manual_seed(seed)
    prior = GaussianMixturePrior(n_components, n_latent, generator).double()
    with torch.no_grad():
        prior.logits.copy_(torch.randn(n_components, generator=generator, dtype=torch.float64))
        prior.log_vars.copy_(0.5 * torch.randn(n_components, n_latent, generator=generator, dtype=torch.float64))
        prior.lower.copy_(0.3 * torch.randn(n_components, n_latent, n_latent, generator=generator, dtype=torch.float64))
    return prior


def test_component_density_and_kl_match_torch_distributions():
    prior = _random_prior()
    components = MultivariateNormal(prior.means, scale_tril=prior.scale_tril())
    z = torch.randn(5, 7, 3, dtype=torch.float64)
    expected = prior.log_weights() + components.log_prob(z[..., None, :])
    torch.testing.assert_close(prior.component_log_density(z), expected)
    torch.testing.assert_close(prior.log_density(z), torch.logsumexp(expected, -1))
    equal = torch.logsumexp(components.log_prob(z[..., None, :]), -1) - np.log(3.0)
    torch.testing.assert_close(prior.log_density(z, equal_weights=True), equal)
    # from component densities computed elsewhere (torch.distributions' here)
    torch.testing.assert_close(prior.mixture_log_density(expected), torch.logsumexp(expected, -1))
    torch.testing.assert_close(prior.mixture_log_density(expected, equal_weights=True), equal)

    mean, log_var = torch.randn(4, 3, 3, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
    posterior = MultivariateNormal(mean, scale_tril=torch.diag_embed(torch.exp(0.5 * log_var)))
    torch.testing.assert_close(prior.kl_divergence(mean, log_var), kl_divergence(posterior, components))


def test_standard_normal_prior_matches_torch_distributions():
    prior = StandardNormalPrior(1, 3, torch.Generator()).double()
    z = torch.randn(5, 7, 3, dtype=torch.float64)
    standard = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(prior.log_density(z), standard.log_prob(z))
    torch.testing.assert_close(prior.component_log_density(z)[..., 0], standard.log_prob(z))
    torch.testing.assert_close(prior.mixture_log_density(standard.log_prob(z)[..., None]), standard.log_prob(z))
    mean, log_var = torch.randn(4, 1, 3, dtype=torch.float64), torch.randn(4, 1, 3, dtype=torch.float64)
    posterior = MultivariateNormal(mean, scale_tril=torch.diag_embed(torch.exp(0.5 * log_var)))
    torch.testing.assert_close(prior.kl_divergence(mean, log_var), kl_divergence(posterior, standard))
    assert prior.refit(z, z[..., 0], z[..., 0], 3) == [] and not prior.learnable
    with pytest.raises(ValueError, match="one component"):
        StandardNormalPrior(2, 3, torch.Generator())


def test_priors_draw_from_their_own_distribution():
    generator = torch.Generator().manual_seed(5)
    prior = GaussianMixturePrior(2, 2, generator)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]))
        prior.log_vars.copy_(torch.log(torch.tensor([[0.3, 0.2], [0.1, 0.5]])))
        prior.lower.copy_(torch.tensor([[[0.0, 0.0], [0.2, 0.0]], [[0.0, 0.0], [-0.1, 0.0]]]))
        prior.logits.copy_(torch.log(torch.tensor([0.25, 0.75])))
        z = prior.sample((20000, 3), generator)
    assert z.shape == (20000, 3, 2)
    first = z[..., 0] < 0
    assert abs(float(first.double().mean()) - 0.25) < 0.01
    covariances = prior.covariances()
    for k, chosen in enumerate((first, ~first)):
        points = z[chosen].double()
        torch.testing.assert_close(points.mean(0), prior.means[k].double(), atol=0.03, rtol=0.0)
        torch.testing.assert_close(torch.cov(points.T), covariances[k], atol=0.03, rtol=0.0)
    equal = prior.sample((20000,), generator, equal_weights=True)
    assert abs(float((equal[..., 0] < 0).double().mean()) - 0.5) < 0.015
    normals = MultivariateNormal(prior.means.detach(), covariance_matrix=covariances.float())
    torch.testing.assert_close(prior.log_density(equal[:50], equal_weights=True),
                               torch.logsumexp(normals.log_prob(equal[:50, None, :]), -1) - np.log(2.0))
    normal = StandardNormalPrior(1, 3, generator).sample((4000,), generator)
    assert normal.shape == (4000, 3) and abs(float(normal.std()) - 1.0) < 0.03


def test_split_component_halves_the_donor_and_copies_its_shape():
    prior = _random_prior(1)
    before = {name: p.detach().clone() for name, p in prior.named_parameters()}
    offset = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    prior.split_component(dead=2, donor=0, offset=offset)
    weights = prior.log_weights().exp()
    old_weights = torch.softmax(before["logits"], 0)
    torch.testing.assert_close(weights[0], weights[2])
    torch.testing.assert_close(weights[0] / weights[1], old_weights[0] / 2 / old_weights[1])
    torch.testing.assert_close(prior.means[0], before["means"][0] - offset)
    torch.testing.assert_close(prior.means[2], before["means"][0] + offset)
    torch.testing.assert_close(prior.scale_tril()[2], prior.scale_tril()[0])


def test_em_recovers_a_mixture_from_exact_posterior_samples():
    """With exact likelihoods of a Gaussian measurement, EM converges to the maximum-likelihood mixture."""
    rng = np.random.default_rng(0)
    true_means = np.array([[2.0, 0.0], [-2.0, 1.0]])
    true_covariances = np.array([[[0.5, 0.3], [0.3, 0.4]], [[0.2, -0.1], [-0.1, 0.6]]])
    labels = rng.integers(0, 2, 4000)
    codes = np.stack([rng.multivariate_normal(true_means[k], true_covariances[k]) for k in labels])
    noise_sd = 0.1
    observed = torch.as_tensor(codes + noise_sd * rng.normal(size=codes.shape))
    prior = GaussianMixturePrior(2, 2, torch.Generator().manual_seed(3)).double()
    generator = torch.Generator().manual_seed(4)
    evidence = []
    for _ in range(4):
        # proposal: N(observed, (2 noise_sd)²) per voxel; likelihood: N(observed; z, noise_sd²)
        z = observed + 2 * noise_sd * torch.randn((256, *observed.shape), generator=generator, dtype=torch.float64)
        log_proposal = (-0.5 * ((z - observed) / (2 * noise_sd)) ** 2).sum(-1) - 2 * np.log(2 * noise_sd)
        log_likelihood = (-0.5 * ((z - observed) / noise_sd) ** 2).sum(-1) - 2 * np.log(noise_sd)
        evidence += prior.refit(z, log_likelihood, log_proposal, 10)
    assert np.all(np.diff(evidence[:10]) > -1e-9)  # EM never lowers the evidence of its samples
    order = torch.argsort(prior.means[:, 0], descending=True)
    torch.testing.assert_close(prior.means[order], torch.as_tensor(true_means), atol=0.06, rtol=0)
    covariances = prior.scale_tril() @ prior.scale_tril().transpose(-1, -2)
    torch.testing.assert_close(covariances[order], torch.as_tensor(true_covariances), atol=0.06, rtol=0)
    weights = prior.log_weights().exp()[order]
    assert weights[0].item() == pytest.approx(np.mean(labels == 0), abs=0.02)


def test_em_shrinks_a_direction_that_all_voxels_share():
    """A coordinate equal in every voxel (like a shared S0) ends far narrower than one voxel's noise."""
    rng = np.random.default_rng(1)
    codes = np.stack([rng.normal(size=3000), np.zeros(3000)], axis=1)
    noise_sd = 0.05
    observed = torch.as_tensor(codes + noise_sd * rng.normal(size=codes.shape))
    prior = GaussianMixturePrior(1, 2, torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(2)
    for _ in range(4):
        z = observed + noise_sd * torch.randn((256, *observed.shape), generator=generator, dtype=torch.float64)
        log_proposal = (-0.5 * ((z - observed) / noise_sd) ** 2).sum(-1)
        log_likelihood = log_proposal.clone()
        prior.refit(z, log_likelihood, log_proposal, 5)
    covariance = (prior.scale_tril() @ prior.scale_tril().transpose(-1, -2))[0]
    assert covariance[0, 0].sqrt().item() == pytest.approx(1.0, abs=0.05)
    assert covariance[1, 1].sqrt().item() < 0.5 * noise_sd


@pytest.mark.parametrize("labels", [(0, 0, 1), (0, 1, 2), (1, 0, 1)])
def test_em_can_hold_blocks_of_mapped_coordinates_uncorrelated(labels):
    """With ``blocks`` the M-step keeps the block-diagonal covariance in A z: cross-covariances between
    blocks vanish there, those within a block are the unrestricted fit's, and EM still does not lower the
    evidence of its samples."""
    rng = np.random.default_rng(5)
    true_covariance = np.array([[1.0, 0.2, 0.3], [0.2, 0.5, -0.25], [0.3, -0.25, 0.4]])
    codes = rng.multivariate_normal(np.zeros(3), true_covariance, size=3000)
    noise_sd = 0.1
    observed = torch.as_tensor(codes + noise_sd * rng.normal(size=codes.shape))
    transform = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.2, -0.4], [0.2, 0.0, 0.9]], dtype=torch.float64)
    fits = {}
    for restricted in (False, True):
        prior = GaussianMixturePrior(1, 3, torch.Generator().manual_seed(0)).double()
        generator = torch.Generator().manual_seed(1)
        evidence = []
        for _ in range(3):
            z = observed + 2 * noise_sd * torch.randn((128, *observed.shape), generator=generator, dtype=torch.float64)
            log_proposal = (-0.5 * ((z - observed) / (2 * noise_sd)) ** 2).sum(-1)
            log_likelihood = (-0.5 * ((z - observed) / noise_sd) ** 2).sum(-1)
            blocks = CovarianceBlocks(transform, labels) if restricted else None
            evidence += prior.refit(z, log_likelihood, log_proposal, 8, blocks)
        assert np.all(np.diff(np.reshape(evidence, (3, 8)), axis=1) > -1e-9)
        covariance = (prior.scale_tril() @ prior.scale_tril().transpose(-1, -2))[0]
        fits[restricted] = transform @ covariance @ transform.T
    free, held = fits[False], fits[True]
    same_block = torch.tensor(labels)[:, None] == torch.tensor(labels)[None, :]
    assert free[~same_block].abs().max().item() > 0.1  # the data do correlate them
    # zero up to the relative variance floor that each M-step adds in z
    torch.testing.assert_close(held[~same_block], torch.zeros_like(held[~same_block]), atol=1e-5, rtol=0)
    torch.testing.assert_close(held[same_block], free[same_block], atol=0.03, rtol=0)


def test_bhattacharyya_distance_matches_its_closed_forms():
    eye = torch.eye(2, dtype=torch.float64)
    mean = torch.tensor([0.3, -1.0], dtype=torch.float64)
    assert bhattacharyya_distance(mean, 2 * eye, mean, 2 * eye) == pytest.approx(0.0, abs=1e-12)
    assert bhattacharyya_distance(mean, eye, mean + torch.tensor([2.0, 0.0], dtype=torch.float64), eye) == pytest.approx(0.5)
    # equal means, variances 1 and 4 on one axis: ½ log((1 + 4)/2 / √(1·4))
    wide = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert bhattacharyya_distance(mean, eye, mean, wide) == pytest.approx(0.5 * np.log(1.25))
