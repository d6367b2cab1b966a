"""Priors: densities and KL against torch.distributions, the mixture's splits and EM refinement."""

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from varmap.estimators.priors import GaussianMixturePrior, StandardNormalPrior, bhattacharyya_distance


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

    mean, log_var = torch.randn(4, 3, 3, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
    posterior = MultivariateNormal(mean, scale_tril=torch.diag_embed(torch.exp(0.5 * log_var)))
    torch.testing.assert_close(prior.kl_divergence(mean, log_var), kl_divergence(posterior, components))


def test_standard_normal_prior_matches_torch_distributions():
    prior = StandardNormalPrior(1, 3, torch.Generator()).double()
    z = torch.randn(5, 7, 3, dtype=torch.float64)
    standard = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(prior.log_density(z), standard.log_prob(z))
    torch.testing.assert_close(prior.component_log_density(z)[..., 0], standard.log_prob(z))
    mean, log_var = torch.randn(4, 1, 3, dtype=torch.float64), torch.randn(4, 1, 3, dtype=torch.float64)
    posterior = MultivariateNormal(mean, scale_tril=torch.diag_embed(torch.exp(0.5 * log_var)))
    torch.testing.assert_close(prior.kl_divergence(mean, log_var), kl_divergence(posterior, standard))
    assert prior.refit(z, z[..., 0], z[..., 0], 3) == [] and not prior.learnable
    with pytest.raises(ValueError, match="one component"):
        StandardNormalPrior(2, 3, torch.Generator())


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


def test_em_can_hold_the_last_mapped_coordinate_uncorrelated_with_the_others():
    """With ``uncorrelated_last`` the M-step keeps the block-diagonal covariance in A z: the last coordinate's
    cross-covariances vanish there, the other block is the unrestricted fit's, and EM still does not
    lower the evidence of its samples."""
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
            evidence += prior.refit(z, log_likelihood, log_proposal, 8, transform if restricted else None)
        assert np.all(np.diff(np.reshape(evidence, (3, 8)), axis=1) > -1e-9)
        covariance = (prior.scale_tril() @ prior.scale_tril().transpose(-1, -2))[0]
        fits[restricted] = transform @ covariance @ transform.T
    free, held = fits[False], fits[True]
    assert free[2, :2].abs().max().item() > 0.1  # the data do correlate them
    # zero up to the relative variance floor that each M-step adds in z
    torch.testing.assert_close(held[2, :2], torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(held[:2, :2], free[:2, :2], atol=0.03, rtol=0)
    assert held[2, 2].item() == pytest.approx(free[2, 2].item(), abs=0.03)


def test_bhattacharyya_distance_matches_its_closed_forms():
    eye = torch.eye(2, dtype=torch.float64)
    mean = torch.tensor([0.3, -1.0], dtype=torch.float64)
    assert bhattacharyya_distance(mean, 2 * eye, mean, 2 * eye) == pytest.approx(0.0, abs=1e-12)
    assert bhattacharyya_distance(mean, eye, mean + torch.tensor([2.0, 0.0], dtype=torch.float64), eye) == pytest.approx(0.5)
    # equal means, variances 1 and 4 on one axis: ½ log((1 + 4)/2 / √(1·4))
    wide = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert bhattacharyya_distance(mean, eye, mean, wide) == pytest.approx(0.5 * np.log(1.25))


def _moments(weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Total weight, mean and covariance of a set of weighted Gaussian components."""
    total = weights.sum()
    mean = (weights[:, None] * means).sum(0) / total
    centred = means - mean
    covariance = (weights[:, None, None] * (covariances + centred[:, :, None] * centred[:, None, :])).sum(0) / total
    return total, mean, covariance


@pytest.mark.parametrize("transform", [None, torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.2, -0.4], [0.2, 0.0, 0.9]])])
def test_split_closest_pair_keeps_the_pairs_moments_and_moves_along_the_principal_axis(transform):
    prior = _random_prior(2)
    transform = None if transform is None else transform.double()
    distance, i, j = prior.closest_pair(transform)
    assert i > j
    before = prior.log_weights().exp().detach().clone(), prior.means.detach().clone(), prior.covariances().detach()
    assert prior.split_closest_pair(0.8, transform)
    after = prior.log_weights().exp().detach(), prior.means.detach(), prior.covariances().detach()
    pair, other = [i, j], [k for k in range(3) if k not in (i, j)]
    for old, new in zip(_moments(*(t[pair] for t in before)), _moments(*(t[pair] for t in after))):
        torch.testing.assert_close(new, old)
    for old, new in zip(before, after):
        torch.testing.assert_close(new[other], old[other])
    torch.testing.assert_close(after[0][i], after[0][j])
    torch.testing.assert_close(after[2][i], after[2][j])
    # the new means differ along the merged component's principal axis (in A z without its last coordinate)
    forward = torch.eye(3, dtype=torch.float64) if transform is None else transform
    kept = 3 - (transform is not None)
    merged = forward @ _moments(*(t[pair] for t in before))[2] @ forward.T
    axis = torch.linalg.eigh(merged[:kept, :kept])[1][:, -1]
    difference = (forward @ (after[1][i] - after[1][j]))[:kept]
    assert abs(float(difference @ axis)) == pytest.approx(float(difference.norm()), rel=1e-6)
    assert prior.closest_pair(transform)[0] != pytest.approx(distance)


def test_closest_pair_and_log_evidence():
    prior = _random_prior(3)
    means, covariances = prior.means.detach(), prior.covariances().detach()
    distances = {(i, j): bhattacharyya_distance(means[i], covariances[i], means[j], covariances[j])
                 for i in range(3) for j in range(i)}
    best = min(distances, key=distances.get)
    assert prior.closest_pair() == (pytest.approx(distances[best]), *best)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(16, 5, 3, generator=generator, dtype=torch.float64)
    log_likelihood, log_proposal = torch.randn(16, 5, generator=generator, dtype=torch.float64), -0.5 * (z**2).sum(-1)
    with torch.no_grad():
        expected = float((torch.logsumexp(log_likelihood + prior.log_density(z) - log_proposal, 0) - np.log(16)).mean())
    assert prior.log_evidence(z, log_likelihood, log_proposal) == pytest.approx(expected)
    assert prior.refit(z, log_likelihood, log_proposal, 1)[0] == pytest.approx(expected)


def test_split_and_merge_separates_two_clusters_that_em_leaves_merged():
    """Two overlapping clusters, both components started on their union: EM alone keeps them together (the
    start is a fixed point), the split-and-merge move followed by EM finds both and a higher evidence."""
    rng = np.random.default_rng(4)
    true_means = np.array([[1.0, 0.0], [-1.0, 0.0]])
    labels = rng.integers(0, 2, 4000)
    codes = true_means[labels] + 0.4 * rng.normal(size=(4000, 2))
    noise_sd = 0.3
    observed = torch.as_tensor(codes + noise_sd * rng.normal(size=codes.shape))
    generator = torch.Generator().manual_seed(5)
    z = observed + 2 * noise_sd * torch.randn((128, *observed.shape), generator=generator, dtype=torch.float64)
    log_proposal = (-0.5 * ((z - observed) / (2 * noise_sd)) ** 2).sum(-1)
    log_likelihood = (-0.5 * ((z - observed) / noise_sd) ** 2).sum(-1)
    fits = {}
    for move in (False, True):
        prior = GaussianMixturePrior(2, 2, torch.Generator()).double()
        with torch.no_grad():
            prior.means.copy_(torch.zeros(2, 2))
            prior.log_vars.copy_(torch.log(torch.tensor([[1.16, 0.16], [1.16, 0.16]])))
            prior.lower.zero_()
        if move:
            assert prior.split_closest_pair(0.8)
        prior.refit(z, log_likelihood, log_proposal, 40)
        fits[move] = prior, prior.log_evidence(z, log_likelihood, log_proposal)
    merged, split = fits[False][0], fits[True][0]
    assert merged.means.detach().abs().max().item() < 0.05
    assert fits[True][1] > fits[False][1] + 0.05
    order = torch.argsort(split.means[:, 0], descending=True)
    torch.testing.assert_close(split.means[order].detach(), torch.as_tensor(true_means), atol=0.08, rtol=0)


def test_accelerated_em_climbs_faster_and_never_lowers_the_evidence():
    """Two clusters each voxel barely resolves (noise 3x their spread): plain EM creeps along the weakly
    informed direction; SQUAREM steps reach a higher evidence in as many steps, monotonically."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    codes = np.array([[1.0, 0.0], [-1.0, 0.0]])[labels] + 0.3 * rng.normal(size=(4000, 2))
    observed = torch.as_tensor(codes + rng.normal(size=codes.shape))
    z = observed + 1.5 * torch.randn((128, *observed.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_proposal = (-0.5 * ((z - observed) / 1.5) ** 2).sum(-1)
    log_likelihood = (-0.5 * (z - observed) ** 2).sum(-1)
    final = {}
    for accelerate in (False, True):
        prior = GaussianMixturePrior(2, 2, torch.Generator()).double()
        with torch.no_grad():
            prior.means.copy_(torch.tensor([[0.5, 0.2], [-0.5, -0.1]]))
        evidence = prior.refit(z, log_likelihood, log_proposal, 24, accelerate=accelerate)
        assert len(evidence) == 24 and np.all(np.diff(evidence) > -1e-9)
        final[accelerate] = prior.log_evidence(z, log_likelihood, log_proposal), float(prior.means.detach()[:, 0].diff().abs())
    assert final[True][0] > final[False][0] + 1e-3
    assert final[True][1] > final[False][1] + 0.1  # further apart, towards the clusters' 2


def test_split_closest_pair_needs_two_components():
    prior = GaussianMixturePrior(1, 3, torch.Generator().manual_seed(0)).double()
    before = prior.means.detach().clone()
    assert not prior.split_closest_pair(0.8)
    torch.testing.assert_close(prior.means.detach(), before)
