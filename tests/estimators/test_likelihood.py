"""Tests of the Gaussian and Rician likelihoods against scipy and Monte Carlo."""

import math
import numpy as np
import pytest
import torch
from scipy import stats

from varmap.estimators.likelihood import (
    gaussian_nll,
    observable_moments,
    rician_mean,
    rician_mean_noise_slope,
    rician_nll,
)


def test_rician_mean_matches_monte_carlo_and_limits():
    rng = np.random.default_rng(0)
    sigma = 0.3
    for nu in (0.0, 0.2, 1.0, 3.0):
        samples = np.abs(nu + sigma * rng.normal(size=200_000) + 1j * sigma * rng.normal(size=200_000))
        value = float(rician_mean(torch.tensor(nu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)))
        assert value == pytest.approx(samples.mean(), rel=5e-3)
    assert float(rician_mean(torch.tensor(0.0), torch.tensor(1.0))) == pytest.approx(np.sqrt(np.pi / 2), rel=1e-6)


def test_observable_moments_are_those_of_averaged_magnitudes():
    """Mean and variance of an average of 30 Rician magnitudes, from the signal to the noise floor, and
    the Gaussian's ν and σ²/n."""
    rng = np.random.default_rng(1)
    sigma, count = 0.3, 30
    nus = np.array([0.0, 0.1, 0.6, 2.0])
    noise = sigma * (rng.normal(size=(40_000, count, 4)) + 1j * rng.normal(size=(40_000, count, 4)))
    averages = np.abs(nus + noise).mean(1)
    predicted = torch.as_tensor(nus)[None]
    counts = torch.full((4,), float(count), dtype=torch.float64)
    mean, variance = observable_moments(predicted, torch.tensor([[sigma]], dtype=torch.float64), counts, "rician")
    np.testing.assert_allclose(mean[0], averages.mean(0), rtol=2e-3)
    np.testing.assert_allclose(variance[0], averages.var(0), rtol=3e-2)
    mean, variance = observable_moments(predicted, torch.tensor([[sigma]], dtype=torch.float64), counts, "gaussian")
    np.testing.assert_array_equal(mean, predicted)
    np.testing.assert_allclose(variance, np.full((1, 4), sigma**2 / count))


def test_single_measurement_rician_nll_is_exact_up_to_a_constant():
    m = torch.tensor([[0.1, 0.5, 1.3, 2.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.4]], dtype=torch.float64)
    counts = torch.ones(4, dtype=torch.float64)
    for nu in (0.2, 0.9, 1.7):
        ours = rician_nll(m, torch.full_like(m, nu), sigma, counts).item()
        exact = -stats.rice.logpdf(m.numpy()[0], nu / 0.4, scale=0.4).sum()
        constant = -np.log(m.numpy()[0]).sum()  # dropped: does not depend on nu or sigma
        assert ours + constant == pytest.approx(exact, rel=1e-9)


def test_gaussian_nll_matches_scipy_for_averages():
    observed = torch.tensor([[0.5, 0.7]], dtype=torch.float64)
    predicted = torch.tensor([[0.45, 0.72]], dtype=torch.float64)
    sigma = torch.tensor([[0.1]], dtype=torch.float64)
    counts = torch.tensor([4.0, 9.0], dtype=torch.float64)
    ours = gaussian_nll(observed, predicted, sigma, counts).item()
    exact = -stats.norm.logpdf([0.5, 0.7], [0.45, 0.72], 0.1 / np.sqrt([4.0, 9.0])).sum()
    assert ours == pytest.approx(exact, rel=1e-12)


def test_rician_mean_noise_slope_matches_autograd_and_its_limits():
    from varmap.estimators.likelihood import rician_mean, rician_mean_noise_slope

    nu = torch.tensor([0.0, 0.3, 1.0, 2.5, 8.0, 40.0], dtype=torch.float64)
    sigma = torch.full_like(nu, 1.3, requires_grad=True)
    (slope_autograd,) = torch.autograd.grad(rician_mean(nu, sigma).sum(), sigma)
    slope = rician_mean_noise_slope(nu, sigma.detach())
    torch.testing.assert_close(slope, slope_autograd, rtol=1e-6, atol=1e-9)
    assert float(slope[0]) == pytest.approx(math.sqrt(math.pi / 2.0), rel=1e-9)
    assert float(slope[-1]) == pytest.approx(1.3 / 40.0, rel=0.01)


def test_an_uncertain_noise_level_widens_averages_near_the_floor_only():
    """With sigma_log_sd the averaged observables' variance grows by (dE[M]/dsigma sigma sd)^2: a lot at
    the noise floor, hardly at high SNR; 0 leaves the likelihood unchanged."""
    counts = torch.tensor([90.0])
    sigma = torch.tensor([[0.1]])
    for nu, widened in ((0.0, True), (2.0, False)):
        predicted = torch.tensor([[nu]])
        observed = predicted + 0.05
        exact = rician_nll(observed, predicted, sigma, counts)
        torch.testing.assert_close(rician_nll(observed, predicted, sigma, counts, torch.tensor([[0.0]])), exact)
        uncertain = rician_nll(observed, predicted, sigma, counts, torch.tensor([[0.1]]))
        assert (abs(float(uncertain - exact)) > 1.0) is widened


def test_an_uncertain_noise_level_moves_every_average_at_once():
    """The marginalised likelihood of several averages is the Gaussian whose covariance is their own
    variances plus the rank-one term of one shared error of log σ: averages all above their floors
    cost less than under independent widening."""
    counts = torch.tensor([90.0, 90.0, 90.0])
    sigma, log_sd = torch.tensor([[0.1]]), torch.tensor([[0.08]])
    predicted = torch.tensor([[0.6, 0.05, 0.0]])
    mean = rician_mean(predicted, sigma)
    variance = (2 * sigma**2 + predicted**2 - mean**2) / counts
    shift = rician_mean_noise_slope(predicted, sigma) * sigma * log_sd
    covariance = torch.diag(variance[0]) + shift[0, :, None] * shift[0, None, :]
    gaussian = torch.distributions.MultivariateNormal(mean[0], covariance)
    for offset in (0.0, 0.01, -0.02):
        observed = mean + offset * torch.tensor([[0.2, 1.0, 1.0]])
        expected = -gaussian.log_prob(observed[0]) - 1.5 * math.log(2 * math.pi)
        torch.testing.assert_close(rician_nll(observed, predicted, sigma, counts, log_sd)[0], expected, rtol=1e-5, atol=1e-4)
    together = mean + 0.012 * torch.tensor([[0.0, 1.0, 1.0]])
    apart = mean + 0.012 * torch.tensor([[0.0, 1.0, -1.0]])
    assert float(rician_nll(together, predicted, sigma, counts, log_sd)) < float(rician_nll(apart, predicted, sigma, counts, log_sd))
