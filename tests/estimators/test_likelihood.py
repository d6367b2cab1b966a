"""Tests of the Gaussian and Rician likelihoods against scipy and Monte Carlo."""

import numpy as np
import pytest
import torch
from scipy import stats

from varmap.estimators.likelihood import gaussian_nll, rician_mean, rician_nll

def test_rician_mean_matches_monte_carlo_and_limits():
    rng = np.random.default_rng(0)
    sigma = 0.3
    for nu in (0.0, 0.2, 1.0, 3.0):
        samples = np.abs(nu + sigma * rng.normal(size=200_000) + 1j * sigma * rng.normal(size=200_000))
        value = float(rician_mean(torch.tensor(nu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)))
        assert value == pytest.approx(samples.mean(), rel=5e-3)
    assert float(rician_mean(torch.tensor(0.0), torch.tensor(1.0))) == pytest.approx(np.sqrt(np.pi / 2), rel=1e-6)


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
