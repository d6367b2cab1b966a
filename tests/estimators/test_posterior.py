"""Tests of the importance-sampling proposals of the posterior module and of its posterior summaries."""

import numpy as np
import torch

from varmap.estimators.posterior import (
    cholesky_with_jitter,
    laplace_proposal,
    posterior_spread,
    refit_proposal,
    weighted_mean_axis,
)


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
    z, log_q = refit_proposal(samples, weights, 4000, 1.2, generator)
    mean = (weights[..., None] * samples).sum(0)
    centred, plain = samples - mean, samples - samples.mean(0)
    covariance = (1.2**2 * torch.einsum("sb,sbi,sbj->bij", weights, centred, centred)
                  + 0.1 * torch.einsum("sbi,sbj->bij", plain, plain) / 49 + 1e-8 * torch.eye(3, dtype=torch.float64))
    expected = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    torch.testing.assert_close(log_q, expected.log_prob(z))
    whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(covariance), (z - mean)[..., None], upper=False)[..., 0]
    empirical = torch.einsum("sbi,sbj->bij", whitened, whitened) / z.shape[0]  # scales 1 to 1e-3 apart
    torch.testing.assert_close(empirical, torch.eye(3, dtype=torch.float64).expand(6, 3, 3), rtol=0.0, atol=0.1)


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
