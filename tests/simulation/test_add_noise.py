"""Tests of varmap.simulation.noise (add_noise) and of the Rician density it pairs with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from varmap.simulation import add_noise, rician_log_pdf


def test_rician_noise_floor():
    sigma = 0.3
    noisy = add_noise(np.zeros(400_000), sigma=sigma, rng=0)
    floor = sigma * math.sqrt(math.pi / 2)
    assert noisy.mean() == pytest.approx(floor, abs=4 * noisy.std() / math.sqrt(noisy.size))


def test_pure_noise_is_rayleigh():
    """Without signal the magnitude is Rayleigh(σ); the test tells a 3 % error in σ apart."""
    sigma = 0.3
    noisy = add_noise(np.zeros(50_000), sigma=sigma, rng=2)
    assert stats.kstest(noisy, stats.rayleigh(scale=sigma).cdf).pvalue > 1e-3
    assert stats.kstest(noisy, stats.rayleigh(scale=1.03 * sigma).cdf).pvalue < 1e-3


def test_signal_plus_noise_is_rice():
    """At SNR 3 the magnitude is Rice(ν/σ, σ), told apart from Gaussian noise and from a wrong σ."""
    nu, sigma = 1.5, 0.5
    clean = np.full(50_000, nu)
    rice = stats.rice(nu / sigma, scale=sigma)
    assert stats.kstest(add_noise(clean, sigma=sigma, rng=3), rice.cdf).pvalue > 1e-3
    assert stats.kstest(add_noise(clean, sigma=sigma, kind="gaussian", rng=3), rice.cdf).pvalue < 1e-3
    assert stats.kstest(add_noise(clean, sigma=1.05 * sigma, rng=3), rice.cdf).pvalue < 1e-3


def test_gaussian_noise_and_high_snr_rician():
    clean = np.full(200_000, 2.0)
    gaussian = add_noise(clean, sigma=0.1, kind="gaussian", rng=1)
    assert gaussian.mean() == pytest.approx(2.0, abs=2e-3) and gaussian.std() == pytest.approx(0.1, rel=0.01)
    rician = add_noise(clean, sigma=0.01, kind="rician", rng=1)
    assert rician.mean() == pytest.approx(2.0 + 0.01**2 / 4.0, abs=1e-4)  # E[m] ≈ ν + σ²/2ν


def test_add_noise_is_seeded_and_validates():
    clean = np.linspace(0, 1, 50)
    np.testing.assert_array_equal(add_noise(clean, sigma=0.1, rng=5), add_noise(clean, sigma=0.1, rng=5))
    assert not np.array_equal(add_noise(clean, sigma=0.1, rng=5), add_noise(clean, sigma=0.1, rng=6))
    with pytest.raises(ValueError, match="rician"):
        add_noise(clean, sigma=0.1, kind="laplace", rng=0)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(clean, sigma=-1.0, rng=0)


@pytest.mark.parametrize("nu", [0.0, 0.4, 3.0])
def test_rician_log_pdf_is_the_rice_density(nu):
    sigma = 0.5
    m = np.linspace(1e-6, 8.0, 20_001)
    log_pdf = rician_log_pdf(torch.tensor(m), torch.tensor(nu, dtype=torch.float64), sigma).numpy()
    np.testing.assert_allclose(log_pdf, stats.rice.logpdf(m, nu / sigma, scale=sigma), rtol=1e-9, atol=1e-9)
    assert np.exp(log_pdf).sum() * (m[1] - m[0]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.05, np.array([0.1, 0.2, 0.3])])
def test_add_noise_is_the_hand_written_rician_draw(sigma):
    """The package's Rician noise is the usual two-channel formula, draw for draw."""
    clean = np.linspace(0.0, 2.0, 60).reshape(20, 3)
    rng = np.random.default_rng(12)
    by_hand = np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))
    np.testing.assert_array_equal(add_noise(clean, sigma=sigma, rng=np.random.default_rng(12)), by_hand)
