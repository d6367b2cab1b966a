"""Tests of the importance-sampling proposals of the posterior module and of its posterior summaries."""

import numpy as np
import pytest
import torch

from varmap.estimators.posterior import (
    PosteriorSamples,
    cholesky_with_jitter,
    effective_sample_size,
    encoder_proposal,
    laplace_proposal,
    posterior_spread,
    fit_proposal,
    sample_posterior,
    solve_lower_triangular,
    weighted_mean_axis,
    widening_efficiency,
    widening_for_efficiency,
)
from varmap.estimators.priors import GaussianMixturePrior


def _two_tissue_prior() -> GaussianMixturePrior:
    """A prior whose two components lie far apart in a 2-d latent space, weights 0.7 and 0.3."""
    prior = GaussianMixturePrior(2, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-3.0, 0.0], [3.0, 1.0]]))
        prior.log_vars.copy_(torch.log(torch.tensor([[0.2, 0.3], [0.1, 0.4]])))
        prior.lower.zero_()
        prior.logits.copy_(torch.log(torch.tensor([0.7, 0.3])))
    return prior


def _mixture_log_density(z, shares, means, covariances):
    """log Σ_k share_k N(z; mean_k, cov_k) for z (S, B, L), shares (B, K), means (B, K, L), covs (B, K, L, L)."""
    normals = torch.distributions.MultivariateNormal(means, covariance_matrix=covariances)
    return torch.logsumexp(torch.log(shares) + normals.log_prob(z[:, :, None, :]), dim=-1)


def test_laplace_samples_have_the_density_of_their_gaussian():
    generator = torch.Generator().manual_seed(0)
    mode = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    axes = torch.linalg.qr(torch.randn(4, 3, 3, generator=generator, dtype=torch.float64))[0]
    curvatures = torch.tensor([1.0, 30.0, 1e4], dtype=torch.float64).expand(4, 3)
    z, log_q = laplace_proposal(mode, curvatures, axes, 20000, 1.5, generator)
    covariance = 1.5**2 * axes @ torch.diag_embed(1 / curvatures) @ axes.transpose(-1, -2)
    expected = torch.distributions.MultivariateNormal(mode, covariance_matrix=covariance)
    torch.testing.assert_close(log_q, expected.log_prob(z))
    centred = z - mode
    empirical = torch.einsum("sbi,sbj->bij", centred, centred) / z.shape[0]
    torch.testing.assert_close(empirical, covariance, rtol=0.05, atol=1e-6)


def test_refit_samples_have_the_density_of_the_fitted_gaussian():
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(50, 6, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 0.1, 1e-3],
                                                                                              dtype=torch.float64)
    weights = torch.softmax(torch.randn(50, 6, generator=generator, dtype=torch.float64), dim=0)
    z, log_q = fit_proposal(samples, weights, 1.2).sample(4000, generator)
    mean = (weights[..., None] * samples).sum(0)
    centred, plain = samples - mean, samples - samples.mean(0)
    covariance = (1.2**2 * torch.einsum("sb,sbi,sbj->bij", weights, centred, centred)
                  + 0.1 * torch.einsum("sbi,sbj->bij", plain, plain) / 49 + 1e-8 * torch.eye(3, dtype=torch.float64))
    expected = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    torch.testing.assert_close(log_q, expected.log_prob(z))
    whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(covariance), (z - mean)[..., None], upper=False)[..., 0]
    empirical = torch.einsum("sbi,sbj->bij", whitened, whitened) / z.shape[0]  # scales 1 to 1e-3 apart
    torch.testing.assert_close(empirical, torch.eye(3, dtype=torch.float64).expand(6, 3, 3), rtol=0.0, atol=0.1)


def test_refit_with_responsibilities_fits_one_gaussian_per_component_and_keeps_both_modes():
    """A posterior with a mode in each of two components (weights 0.6 / 0.4): the refitted proposal is the
    mixture of the two components' weighted Gaussians in those shares (a fifth spread evenly), and its
    draws land in both modes; one Gaussian fitted across them would put them in between."""
    generator = torch.Generator().manual_seed(2)
    n_samples = 400
    left = torch.randn(n_samples // 2, 3, 2, generator=generator, dtype=torch.float64) * 0.1 - torch.tensor([3.0, 0.0], dtype=torch.float64)
    right = torch.randn(n_samples // 2, 3, 2, generator=generator, dtype=torch.float64) * 0.1 + torch.tensor([3.0, 0.0], dtype=torch.float64)
    samples = torch.cat([left, right])
    weights = torch.cat([torch.full((n_samples // 2, 3), 0.6), torch.full((n_samples // 2, 3), 0.4)]).double() / (n_samples // 2)
    responsibilities = torch.stack([(samples[..., 0] < 0).double(), (samples[..., 0] > 0).double()], -1)
    z, log_q = fit_proposal(samples, weights, 1.0, responsibilities).sample(5000, generator)
    shares = torch.tensor([0.8 * 0.6 + 0.1, 0.8 * 0.4 + 0.1], dtype=torch.float64).expand(3, 2)
    means, covariances = [], []
    plain = samples - samples.mean(0)
    previous = torch.einsum("sbi,sbj->bij", plain, plain) / (n_samples - 1)
    for side in (left, right):
        mean = side.mean(0)
        centred = side - mean
        covariances.append(torch.einsum("sbi,sbj->bij", centred, centred) / side.shape[0] + 0.1 * previous
                           + 1e-8 * torch.eye(2, dtype=torch.float64))
        means.append(mean)
    expected = _mixture_log_density(z, shares, torch.stack(means, 1), torch.stack(covariances, 1))
    torch.testing.assert_close(log_q, expected)
    assert abs(float((z[..., 0] < 0).double().mean()) - 0.58) < 0.03


def test_only_the_spread_rows_floor_the_refitted_covariance():
    """Draws far from the posterior that carry no weight (the prior's, in the first round) would widen the
    floor of the next proposal to their own spread; left out of ``spread_rows`` they do not."""
    generator = torch.Generator().manual_seed(6)
    near = torch.randn(48, 4, 2, generator=generator, dtype=torch.float64) * 0.01
    far = torch.randn(16, 4, 2, generator=generator, dtype=torch.float64) * 10.0
    samples = torch.cat([near, far])
    weights = torch.cat([torch.full((48, 4), 1.0 / 48), torch.zeros(16, 4)]).double()
    rows = torch.cat([torch.ones(48, dtype=torch.bool), torch.zeros(16, dtype=torch.bool)])
    narrow, _ = fit_proposal(samples, weights, 1.0, spread_rows=rows).sample(4000, generator)
    wide, _ = fit_proposal(samples, weights, 1.0).sample(4000, generator)
    assert float(narrow.std(0).max()) < 0.02
    assert float(wide.std(0).min()) > 0.5


def test_prior_draws_make_the_proposal_a_stratified_mixture_with_the_prior():
    """A quarter of the encoder proposal's draws come from the prior's components in equal shares, and
    every draw's log density is that of the mixture 3/4 encoder + 1/4 equally weighted prior components."""
    generator = torch.Generator().manual_seed(3)
    prior = _two_tissue_prior()
    logits = torch.tensor([[2.0, -2.0], [0.0, 0.0]])
    mean = torch.tensor([[[-3.0, 0.1], [2.5, 1.0]], [[-2.5, 0.0], [3.0, 0.5]]])
    log_var = torch.log(torch.full((2, 2, 2), 0.05))
    z, log_q, components = encoder_proposal(logits, mean, log_var, 64, 1.5, generator, prior)
    assert z.shape == (64, 2, 2)
    torch.testing.assert_close(components, prior.component_log_density(z))
    mix = 0.8 * torch.softmax(logits, -1) + 0.1
    encoder = _mixture_log_density(z, mix, mean, torch.diag_embed(torch.exp(log_var) * 1.5**2))
    components = torch.distributions.MultivariateNormal(prior.means, covariance_matrix=prior.covariances().float())
    equal = torch.logsumexp(components.log_prob(z[..., None, :]), -1) - np.log(2.0)
    torch.testing.assert_close(log_q, torch.logaddexp(encoder + np.log(0.75), equal + np.log(0.25)))
    prior_draws = z[-16:]
    assert (prior_draws[..., 0] > 0).sum() > 8  # the 0.3 component gets half the prior's draws


def test_a_posterior_mode_the_encoder_does_not_propose_is_found():
    """The encoder proposes only the first component, the likelihood is flat: the posterior is the prior,
    and its weight on the second component (0.3) must come out of the importance samples."""
    prior = _two_tissue_prior()
    n_voxels = 200
    logits = torch.tensor([[5.0, -5.0]]).expand(n_voxels, -1)
    mean = torch.tensor([[-3.0, 0.0], [-3.0, 0.0]]).expand(n_voxels, -1, -1)
    log_var = torch.log(torch.full((n_voxels, 2, 2), 0.2))
    with torch.no_grad():
        samples = sample_posterior(lambda z: torch.zeros(z.shape[:-1]), prior, logits, mean, log_var, n_samples=64,
                                   scale=1.2, n_mode_steps=0, n_adaptive_rounds=2,
                                   generator=torch.Generator().manual_seed(4))
        weights = samples.weights()
        second = (weights * samples.responsibilities()[..., 1]).sum(0)
    assert abs(float(second.mean()) - 0.3) < 0.03


def test_samples_keep_the_prior_densities_of_their_codes_through_every_step():
    """The prior's component densities, computed once per draw (the encoder's and the prior's draws, the
    Laplace proposal's, each adaptive round's), are those of the prior at every sample's code after
    pooling, selecting and replacing voxels; weights, component probabilities and best joints follow."""
    prior = _two_tissue_prior()
    n_voxels = 50
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(n_voxels, 2, generator=generator)
    mean = 2.0 * torch.randn(n_voxels, 2, 2, generator=generator)
    log_var = torch.log(torch.full((n_voxels, 2, 2), 0.1))
    centre = 2.0 * torch.randn(n_voxels, 2, generator=generator)

    def log_likelihood(z):
        return -2.0 * ((z - centre) ** 2).sum(-1)

    def check(samples):
        torch.testing.assert_close(samples.log_prior_components, prior.component_log_density(samples.z))
        joint = samples.log_likelihood + prior.log_density(samples.z)
        torch.testing.assert_close(samples.weights(), torch.softmax(joint - samples.log_proposal, 0))
        torch.testing.assert_close(samples.summary_weights(), samples.weights().double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(samples.responsibilities(), prior.responsibilities(samples.z))
        torch.testing.assert_close(samples.best_log_joint(), joint.max(0).values)

    with torch.no_grad():
        for n_mode_steps, pool_rounds in ((0, True), (3, True), (3, False)):
            samples = sample_posterior(log_likelihood, prior, logits, mean, log_var, n_samples=32, scale=1.2,
                                       n_mode_steps=n_mode_steps, n_adaptive_rounds=2, generator=generator,
                                       pool_rounds=pool_rounds)
            check(samples)
        other = sample_posterior(log_likelihood, prior, logits, mean, log_var, n_samples=32, scale=1.2,
                                 n_mode_steps=0, n_adaptive_rounds=0, generator=generator)  # the encoder's draws
        check(other)
        rows = torch.arange(0, n_voxels, 3)
        for derived in (samples.last(8), samples.select_voxels(rows),
                        samples.with_voxels(rows, other.select_voxels(rows)), PosteriorSamples.pooled([samples, other])):
            check(derived)


def test_the_adaptive_rounds_samples_are_pooled_each_weighted_against_its_own_proposal(monkeypatch):
    """A Gaussian likelihood under a standard normal prior (posterior N(τc/(1+τ), 1/(1+τ)) per axis), the
    encoder's guess off-centre and too narrow: both rounds' samples come back (``pool_rounds=False``: the
    last round's alone), each with the density of the proposal it was drawn from, and the pool's weighted
    mean and variance are the posterior's, with more effective samples than the last round alone."""
    import varmap.estimators.posterior as posterior

    prior = GaussianMixturePrior(1, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        prior.means.zero_()
        prior.log_vars.zero_()
        prior.lower.zero_()
    n_voxels, precision = 400, 4.0
    centre = torch.randn(n_voxels, 2, generator=torch.Generator().manual_seed(1))
    logits = torch.zeros(n_voxels, 1)
    mean = (centre + 0.5)[:, None, :]
    log_var = torch.full((n_voxels, 1, 2), float(np.log(0.05)))
    proposals = []
    monkeypatch.setattr(posterior, "fit_proposal", lambda *args: proposals.append(fit_proposal(*args)) or proposals[-1])

    def run(pool_rounds):
        proposals.clear()
        return sample_posterior(lambda z: -0.5 * precision * ((z - centre) ** 2).sum(-1), prior, logits, mean,
                                log_var, n_samples=64, scale=1.2, n_mode_steps=0, n_adaptive_rounds=2,
                                generator=torch.Generator().manual_seed(2), pool_rounds=pool_rounds)

    with torch.no_grad():
        last_only = run(False)
        samples = run(True)
        own = torch.cat([proposals[0].log_density(samples.z[:64]), proposals[1].log_density(samples.z[64:])])
        weights = samples.weights()
        last_weights = last_only.weights()
    assert samples.z.shape == (128, n_voxels, 2) and len(proposals) == 2
    torch.testing.assert_close(samples.z[64:], last_only.z)  # without pooling: the last round's samples alone
    torch.testing.assert_close(last_only.log_proposal, proposals[1].log_density(last_only.z))
    torch.testing.assert_close(samples.log_proposal, own)
    posterior_mean = precision * centre / (1.0 + precision)
    estimated_mean = (weights[..., None] * samples.z).sum(0)
    estimated_variance = (weights[..., None] * (samples.z - estimated_mean) ** 2).sum(0)
    assert float((estimated_mean - posterior_mean).mean().abs()) < 0.01
    assert float((estimated_mean - posterior_mean).abs().mean()) < 0.06  # Monte Carlo error: about 0.45 / √ESS
    assert abs(float(estimated_variance.mean()) * (1.0 + precision) - 1.0) < 0.05
    pooled_ess, last_ess = effective_sample_size(weights), effective_sample_size(last_weights)
    assert float(pooled_ess.median()) > 1.5 * float(last_ess.median())


def test_widening_efficiency_is_the_effective_sample_share_of_a_widened_gaussian_proposal():
    """Importance weights of a Gaussian posterior from the same Gaussian widened by ``scale``: their Kish
    effective sample size per sample is what the closed form says (1 without widening, 0 where the
    weights' variance is infinite)."""
    generator = torch.Generator().manual_seed(0)
    n_draws = 400_000
    for n_latent in (2, 3):
        for scale in (1.2, 2.5):
            draws = scale * torch.randn(n_draws, n_latent, generator=generator, dtype=torch.float64)
            log_weights = -0.5 * (draws**2).sum(-1) * (1.0 - 1.0 / scale**2) + n_latent * np.log(scale)
            weights = torch.softmax(log_weights, 0)
            measured = 1.0 / float((weights**2).sum()) / n_draws
            assert abs(measured / widening_efficiency(scale, n_latent) - 1.0) < 0.03, (n_latent, scale, measured)
    assert widening_efficiency(1.0, 3) == 1.0
    assert widening_efficiency(2.5, 3) < widening_efficiency(1.2, 3) < 1.0
    assert widening_efficiency(0.7, 3) == 0.0


def test_widening_for_efficiency_inverts_widening_efficiency_and_widens_less_in_more_dimensions():
    """The widening that leaves a given share of effective samples: the inverse of
    :func:`widening_efficiency` at every latent size, less widening where there are more dimensions."""
    for n_latent in (1, 3, 7):
        for scale in (1.0, 1.2, 1.66, 2.5, 6.0):
            found = widening_for_efficiency(widening_efficiency(scale, n_latent), n_latent)
            assert abs(found - scale) < 1e-9 * scale, (n_latent, scale, found)
    share = widening_efficiency(2.5, 3)
    assert 1.0 < widening_for_efficiency(share, 7) < widening_for_efficiency(share, 5) < 2.5
    with pytest.raises(ValueError, match="efficiency"):
        widening_for_efficiency(0.0, 3)


def test_cholesky_with_jitter_factors_near_singular_covariances():
    vector = torch.tensor([1e3, -2e2, 5e1, 1.0])
    good = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    covariance = torch.stack([vector[:, None] * vector[None, :], good, -good])  # rank 1, fine, not PSD
    tril = cholesky_with_jitter(covariance)
    assert torch.all(torch.isfinite(tril)) and torch.all(tril.diagonal(dim1=-2, dim2=-1) > 0)
    torch.testing.assert_close(tril[1], torch.linalg.cholesky(good))
    jitter = 1e-6 * covariance[0].diagonal().mean() + 1e-12  # relative to the matrix's scale
    torch.testing.assert_close(tril[0] @ tril[0].T, covariance[0] + jitter * torch.eye(4), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(tril[2], torch.diag(torch.full((4,), 1e-6)))  # not even PSD: tiny diagonal


def test_solve_lower_triangular_solves_every_batched_system():
    generator = torch.Generator().manual_seed(3)
    for n_latent in (1, 2, 3, 5):
        factors = torch.randn(4, 2, n_latent, n_latent, generator=generator, dtype=torch.float64)
        tril = torch.linalg.cholesky(factors @ factors.transpose(-1, -2) + 0.1 * torch.eye(n_latent, dtype=torch.float64))
        right = torch.randn(4, 2, n_latent, 7, generator=generator, dtype=torch.float64)
        solution = solve_lower_triangular(tril, right)
        torch.testing.assert_close(tril @ solution, right)
        torch.testing.assert_close(solution, torch.linalg.solve_triangular(tril, right, upper=False))


def test_posterior_spread_is_unbiased_and_never_collapses():
    """Equal weights give the unbiased sample variance; weights collapsed onto one sample give the samples'
    own spread instead of a zero standard deviation."""
    values = torch.randn(8, 5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    equal = torch.full((8, 5), 1.0 / 8, dtype=torch.float64)
    torch.testing.assert_close(posterior_spread(values, values.mean(0), equal), values.std(0))
    collapsed = torch.zeros(8, 5, dtype=torch.float64)
    collapsed[3] = 1.0
    torch.testing.assert_close(posterior_spread(values, values[3], collapsed), values.std(0))


def test_direction_spread_is_the_rms_angle_and_never_collapses():
    """Directions tilted 10 degrees off z in every azimuth: the mean axis is z and the spread, with equal
    weights, 10 degrees times the 1 - 1/ESS correction; weights collapsed onto one sample report the
    samples' own RMS angle about the axis (a ball-and-stick voxel once mapped an angular spread of 0)."""
    n_samples = 8
    tilt = np.deg2rad(10.0)
    azimuth = torch.linspace(0.0, 2.0 * np.pi, n_samples + 1, dtype=torch.float64)[:-1]
    directions = torch.stack([np.sin(tilt) * torch.cos(azimuth), np.sin(tilt) * torch.sin(azimuth),
                              torch.full_like(azimuth, np.cos(tilt))], -1)[:, None, :]  # (S, 1, 3)
    equal = torch.full((n_samples, 1), 1.0 / n_samples, dtype=torch.float64)
    axis, spread = weighted_mean_axis(directions, equal)
    torch.testing.assert_close(axis.abs(), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(spread, torch.tensor([10.0 * np.sqrt(n_samples / (n_samples - 1))], dtype=torch.float64))
    collapsed = torch.zeros(n_samples, 1, dtype=torch.float64)
    collapsed[3] = 1.0
    axis, spread = weighted_mean_axis(directions, collapsed)
    assert float(spread) > 5.0  # about the collapsed sample's axis the others lie 0-20 degrees off
