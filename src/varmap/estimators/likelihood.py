"""Noise models for the reconstruction term: Gaussian and Rician negative log-likelihoods."""

from __future__ import annotations

import math

import torch

__all__ = [
    "LIKELIHOODS", "gaussian_nll", "rician_nll", "rician_log_pdf", "rician_mean", "rician_mean_noise_slope",
    "check_likelihood", "observable_moments",
]

LIKELIHOODS = ("rician", "gaussian")

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_likelihood(name: str) -> str:
    """Return ``name`` if it is a known likelihood, else raise ``ValueError`` listing the valid ones."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {list(LIKELIHOODS)}.")
    return name


def gaussian_nll(
    observed: torch.Tensor, predicted: torch.Tensor, sigma: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Gaussian negative log-likelihood of (averaged) observables, summed over the last axis.

    Parameters
    ----------
    observed, predicted : Tensor, shape (..., n_observables)
        Normalised signals.
    sigma : Tensor, shape (..., 1)
        Noise standard deviation of one measurement, normalised by S0.
    counts : Tensor, shape (n_observables,)
        Number of measurements averaged into each observable; the average has variance σ²/count.

    Returns
    -------
    Tensor, shape (...)
    """
    variance = sigma * sigma / counts
    return (0.5 * (observed - predicted) ** 2 / variance + 0.5 * torch.log(variance) + _HALF_LOG_2PI).sum(-1)


def observable_moments(
    predicted: torch.Tensor, sigma: torch.Tensor, counts: torch.Tensor, likelihood: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of each observable, an average of ``counts`` measurements, under a noise model.

    Parameters
    ----------
    predicted : Tensor, shape (..., n_observables)
        Noise-free model prediction ν, normalised as the observables.
    sigma : Tensor, shape (..., 1)
        Noise standard deviation of one measurement, normalised likewise.
    counts : Tensor, shape (n_observables,)
    likelihood : {"rician", "gaussian"}

    Returns
    -------
    mean, variance : Tensor, shape (..., n_observables)
        Rician: :func:`rician_mean` and the variance of an average of Rician magnitudes,
        (2σ² + ν² − E[M]²) / count (the moments :func:`rician_nll` matches); Gaussian: ν and σ² / count.
    """
    if likelihood == "gaussian":
        return predicted, (sigma * sigma / counts).expand_as(predicted)
    nu = predicted.clamp_min(0.0)
    return _rician_moments(nu, sigma, counts, _scaled_bessels(nu, sigma))


def _rician_moments(
    nu: torch.Tensor, sigma: torch.Tensor, counts: torch.Tensor, bessels: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of averaged Rician magnitudes (:func:`observable_moments`), from
    :func:`_scaled_bessels`; the variance is floored at 10⁻³ σ² / count."""
    variance = sigma * sigma
    mean = _mean_of(sigma, *bessels)
    return mean, (2.0 * variance + nu * nu - mean * mean).clamp_min(1e-3 * variance) / counts


def rician_mean(nu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Expected magnitude of a Rician variable with underlying signal ``nu`` and noise ``sigma``.

    Notes
    -----
    .. math:: E[M] = \\sigma\\sqrt{\\pi/2}\\,[(1+2t) I_0^e(t) + 2t I_1^e(t)],\\quad t = \\nu^2/(4\\sigma^2)

    with the exponentially scaled Bessel functions :math:`I^e_k(t) = e^{-t} I_k(t)`.  It tends to ν for
    ν ≫ σ and to the noise floor σ√(π/2) for ν → 0.
    """
    return _mean_of(sigma, *_scaled_bessels(nu, sigma))


def rician_mean_noise_slope(nu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""Derivative of the Rician mean with respect to the noise level, ∂E[M]/∂σ.

    Notes
    -----
    E[M] is homogeneous of degree one in (ν, σ), so ∂E[M]/∂σ = (E[M] − ν ∂E[M]/∂ν) / σ, with

    .. math:: \partial E[M]/\partial\nu = (\nu/\sigma)\sqrt{\pi/8}\,[I^e_0(t) + I^e_1(t)],\quad t = \nu^2/(4\sigma^2).

    It is √(π/2) at ν = 0 (the noise floor moves with σ) and falls as σ/ν for ν ≫ σ.
    """
    bessels = _scaled_bessels(nu, sigma)
    return _noise_slope_of(nu, sigma, _mean_of(sigma, *bessels), *bessels[1:])


def _scaled_bessels(nu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t = ν²/(4σ²) and I₀ᵉ(t), I₁ᵉ(t), which the Rician mean and its noise slope share (the Bessel
    evaluations are the costly part of the likelihood)."""
    t = nu * nu / (4.0 * sigma * sigma)
    return t, torch.special.i0e(t), torch.special.i1e(t)


def _mean_of(sigma: torch.Tensor, t: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
    """:func:`rician_mean` from :func:`_scaled_bessels`."""
    return sigma * math.sqrt(math.pi / 2.0) * ((1.0 + 2.0 * t) * i0 + 2.0 * t * i1)


def _noise_slope_of(nu: torch.Tensor, sigma: torch.Tensor, mean: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
    """:func:`rician_mean_noise_slope` from the mean and the Bessel terms of :func:`_scaled_bessels`."""
    slope_nu = (nu / sigma) * math.sqrt(math.pi / 8.0) * (i0 + i1)
    return (mean - nu * slope_nu) / sigma


def rician_nll(
    observed: torch.Tensor,
    predicted: torch.Tensor,
    sigma: torch.Tensor,
    counts: torch.Tensor,
    sigma_log_sd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rician negative log-likelihood of magnitude observables, summed over the last axis.

    Single measurements (count 1) use the exact Rician density.  An observable that averages
    ``count > 1`` Rician measurements uses the Gaussian that matches the mean and variance of that
    average (central limit), which keeps the noise floor: the mean is :func:`rician_mean`, not ν.

    Parameters
    ----------
    observed, predicted : Tensor, shape (..., n_observables)
        Normalised magnitude signals and the noise-free model prediction ν.
    sigma : Tensor, shape (..., 1)
        Noise standard deviation of one measurement, normalised by S0.
    counts : Tensor, shape (n_observables,)
    sigma_log_sd : Tensor, shape (..., 1), optional
        Uncertainty of ``sigma`` where it was estimated, the standard deviation of log σ.  An average
        of many measurements is precise enough that its noise floor, σ√(π/2) where the signal has
        decayed, must be known as precisely: a σ a few per cent off moves that floor by several
        standard errors of the average and biases the parameters.  The uncertainty is marginalised for
        the mean linearised in log σ: one error of log σ moves every average's mean at once, by
        ``g = ∂E[M]/∂σ · σ · sigma_log_sd`` per standard deviation (:func:`rician_mean_noise_slope`), so
        the averages' covariance gains the rank-one term ``g gᵀ`` (see Notes).  ``None`` or 0: σ is
        known.

    Returns
    -------
    Tensor, shape (...)
        Terms that do not depend on ``predicted`` or ``sigma`` are dropped.

    Notes
    -----
    Exact density: :math:`p(m|\\nu,\\sigma) = (m/\\sigma^2) \\exp(-(m^2+\\nu^2)/2\\sigma^2) I_0(m\\nu/\\sigma^2)`,
    evaluated as :math:`-\\log p = 2\\log\\sigma + (m-\\nu)^2/2\\sigma^2 - \\log I^e_0(m\\nu/\\sigma^2) + c`.

    With ``sigma_log_sd`` the averages' residuals r (about their means) are Gaussian with covariance
    :math:`V + g g^T`, V diagonal; by the Sherman-Morrison identity and the matrix determinant lemma
    their negative log density is the independent one plus
    :math:`-\\tfrac12 (\\sum_j r_j g_j / v_j)^2 / (1 + q) + \\tfrac12 \\log(1 + q)`,
    :math:`q = \\sum_j g_j^2 / v_j`.  Unlike widening each average on its own, this knows that the floors
    of all shells move together: averages that sit above their floors by the same number of σ are
    explained by one error of σ.  Single measurements keep the exact density at ``sigma``.
    """
    nu = predicted.clamp_min(0.0)
    variance = sigma * sigma
    single = counts <= 1
    if bool(single.all()):  # only the branch the observables need (ball_stick: every one is single)
        return (torch.log(variance) - _rician_kernel(observed.clamp_min(0.0), nu, variance)).sum(-1)
    bessels = _scaled_bessels(nu, sigma)
    mean, avg_variance = _rician_moments(nu, sigma, counts, bessels)
    residual = observed - mean
    nll = 0.5 * residual**2 / avg_variance + 0.5 * torch.log(avg_variance)
    if bool(single.any()):
        nll = torch.where(single, torch.log(variance) - _rician_kernel(observed.clamp_min(0.0), nu, variance), nll)
    nll = nll.sum(-1)
    if sigma_log_sd is None or not bool(sigma_log_sd.any()):  # known σ: the slope is not needed
        return nll
    shift = _noise_slope_of(nu, sigma, mean, *bessels[1:]) * sigma * sigma_log_sd
    shift = torch.where(single, 0.0, shift)
    q = (shift * shift / avg_variance).sum(-1)
    c = (residual * shift / avg_variance).sum(-1)
    return nll - 0.5 * c * c / (1.0 + q) + 0.5 * torch.log1p(q)


def rician_log_pdf(m: torch.Tensor, nu: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    r"""Exact log density of Rician magnitudes, elementwise.

    Parameters
    ----------
    m : Tensor
        Measured magnitudes (>= 0).
    nu : Tensor, broadcastable with ``m``
        Noiseless signals (>= 0).
    sigma : Tensor or float, broadcastable with ``m``
        Noise standard deviation per channel.

    Returns
    -------
    Tensor
        ``log p(m | nu, sigma)``.

    Notes
    -----
    .. math:: \log p = \log(m/\sigma^2) - \frac{(m-\nu)^2}{2\sigma^2} + \log I^e_0(m\nu/\sigma^2)

    with the exponentially scaled Bessel function :math:`I^e_0(x) = e^{-x} I_0(x)`, which keeps the
    evaluation finite at any SNR.
    """
    variance = sigma * sigma
    return torch.log(m / variance) + _rician_kernel(m, nu, variance)


def _rician_kernel(m: torch.Tensor, nu: torch.Tensor, variance: torch.Tensor | float) -> torch.Tensor:
    """The part of the Rician log density that depends on ν: -(m-ν)²/2σ² + log I₀ᵉ(mν/σ²)."""
    return -((m - nu) ** 2) / (2.0 * variance) + torch.log(torch.special.i0e(m * nu / variance))
