"""The uncertainty of a learned prior's component means, added to the voxels' posterior variances.

An empirical-Bayes posterior treats the prior learned from the data as known.  Where the voxels'
signals pin a component down, the error that leaves is negligible; where they do not (free water at
b >= 1 ms/µm², whose D and K only enter the data through D - D²K/6 once the signal has decayed into the
noise floor), the data place the component's mean only loosely, and the posterior intervals must say
so.  This module computes the first-order correction of Kass and Steffey (1989) for the component
means: each voxel's posterior covariance gains A Cov(μ) Aᵀ, with Cov(μ) the inverse of the information
the voxels hold about the means and A = ∂E[z | s]/∂μ.

Both come from the linearised model: each voxel's expected (Fisher) information about its latent code,
Jᵀ V⁻¹ J, with J the derivative of the observables' expected values (the noise floor included) and V
their variances (:func:`varmap.estimators.likelihood.observable_moments`).  Unlike the information
estimated from importance samples, this has no Monte Carlo bias: a posterior variance underestimated by
a tenth reads as a tenth of the prior's precision gained, which summed over a thousand voxels would pin
a mean the data do not.

A noise level estimated from the data has, besides each voxel's own error (which the voxel's likelihood
marginalises), a systematic error that all voxels share.  Through the noise floor it moves every voxel's
signal-implied code the same way, so it moves the learned means too: by ∂μ_k/∂log σ =
-Cov(μ_k) Σ_v r_vk A_vkᵀ g_v (g_v = Jᵀ V⁻¹ ∂m/∂log σ, each voxel's score shift; the derivative of the
empirical-Bayes fixed point in the linearised model), and its variance s² (∂μ_k/∂log σ)(∂μ_k/∂log σ)ᵀ joins
Cov(μ_k) (:func:`shared_noise_covariance`).  Only components whose data sit in the noise floor (free
water at high b) move appreciably.  The correlation between this shift of the mean and the voxel's own
shift through its likelihood is left out.

References
----------
Kass RE, Steffey D (1989) Approximate Bayesian inference in conditionally independent hierarchical
models (parametric empirical Bayes models). J. Am. Stat. Assoc. 84:717-726.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "latent_fisher_information",
    "latent_noise_score",
    "mean_information",
    "mean_noise_score",
    "mean_covariance",
    "shared_noise_covariance",
    "added_covariance",
    "jacobian",
]

#: Moments of each voxel's observables: codes (..., B, L) and a relative change of the noise level,
#: log σ'/σ (default 0), to their mean and variance (..., B, n_observables).
Moments = Callable[..., tuple[torch.Tensor, torch.Tensor]]

#: Step of the central differences, in latent units (the latent codes are of order one).
_STEP = 1e-4


def jacobian(function: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, step: float = _STEP) -> torch.Tensor:
    """Derivatives of a map applied voxel by voxel, by central differences.

    Parameters
    ----------
    function : callable
        Maps codes (..., B, L) to values (..., B, M); voxel b's value depends only on ``[..., b, :]``.
    z : Tensor, shape (B, L)

    Returns
    -------
    Tensor, shape (B, M, L)
    """
    n_latent = z.shape[-1]
    offsets = step * torch.eye(n_latent, dtype=z.dtype, device=z.device)[:, None, :]
    values = function(torch.cat([z + offsets, z - offsets]))  # (2L, B, M)
    return ((values[:n_latent] - values[n_latent:]) / (2.0 * step)).permute(1, 2, 0)


def latent_fisher_information(moments: Moments, z: torch.Tensor) -> torch.Tensor:
    """Each voxel's expected information about its latent code, Jᵀ V⁻¹ J.

    Parameters
    ----------
    moments : callable
        Maps codes (..., B, L) to the mean and variance (..., B, n_observables) of each voxel's
        observables.
    z : Tensor, shape (B, L)
        Where to evaluate (the voxels' posterior means).

    Returns
    -------
    Tensor, shape (B, L, L)
    """
    derivative = jacobian(lambda codes: moments(codes)[0], z)
    variance = moments(z)[1]
    return derivative.transpose(-1, -2) @ (derivative / variance[..., None])


def latent_noise_score(moments: Moments, z: torch.Tensor, step: float = _STEP) -> torch.Tensor:
    """Each voxel's score shift per unit error in log σ, g = Jᵀ V⁻¹ ∂m/∂log σ.

    A noise level too high by a factor e^δ makes the model expect m + δ ∂m/∂log σ (a higher noise
    floor), which moves the code the signals imply by -F⁻¹ g δ.

    Parameters
    ----------
    moments : callable
        ``moments(codes, log_noise_scale)``: the mean and variance (..., B, n_observables) of each voxel's
        observables with the noise level multiplied by e^log_noise_scale (0 when not given).
    z : Tensor, shape (B, L)
    step : float
        Step of the central difference in log σ.

    Returns
    -------
    Tensor, shape (B, L)
    """
    derivative = jacobian(lambda codes: moments(codes)[0], z)
    noise_slope = (moments(z, step)[0] - moments(z, -step)[0]) / (2.0 * step)
    return torch.einsum("bml,bm->bl", derivative, noise_slope / moments(z)[1])


def mean_information(fisher: torch.Tensor, responsibilities: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """Information the voxels hold about each component's mean, Σ_v r_vk (Σ_k + F_v⁻¹)⁻¹.

    In the linearised model a voxel of component k has the marginal N(μ_k, Σ_k + F_v⁻¹); the term is
    written P_k - P_k (P_k + F_v)⁻¹ P_k (P_k = Σ_k⁻¹) so that a singular F_v (a direction the voxel's
    data do not inform) contributes nothing there instead of failing.

    Parameters
    ----------
    fisher : Tensor, shape (B, L, L)
        :func:`latent_fisher_information` of B voxels.
    responsibilities : Tensor, shape (B, K)
        Each voxel's posterior component probabilities.
    covariances : Tensor, shape (K, L, L)
        The components' covariances Σ_k.

    Returns
    -------
    Tensor, shape (K, L, L)
        Summed over the B voxels; add the sums of several batches.
    """
    precision, gain = _gains(fisher, covariances)
    per_voxel = precision - precision @ gain  # (B, K, L, L)
    return torch.einsum("bk,bkij->kij", responsibilities, per_voxel)


def mean_noise_score(
    fisher: torch.Tensor, score: torch.Tensor, responsibilities: torch.Tensor, covariances: torch.Tensor
) -> torch.Tensor:
    """How a shared error in log σ pulls on each component's mean, Σ_v r_vk A_vkᵀ g_v.

    Parameters
    ----------
    fisher : Tensor, shape (B, L, L)
    score : Tensor, shape (B, L)
        :func:`latent_noise_score` of the same voxels.
    responsibilities : Tensor, shape (B, K)
    covariances : Tensor, shape (K, L, L)

    Returns
    -------
    Tensor, shape (K, L)
        Summed over the B voxels; add the sums of several batches.
    """
    gain = _gains(fisher, covariances)[1]
    return torch.einsum("bk,bkji,bj->ki", responsibilities, gain, score)


def mean_covariance(information: torch.Tensor, hyperprior: torch.Tensor) -> torch.Tensor:
    """Cov(μ_k) = (I_k + H⁻¹)⁻¹: the means' uncertainty given the voxels' information ``information``
    (K, L, L) and a Gaussian hyperprior of covariance ``hyperprior`` (L, L), shape (K, L, L).

    The hyperprior only bounds directions the voxels do not inform at all; the variational estimators
    pass one that places a mean anywhere in the model's physical range (latent codes whose
    unconstrained parameters are N(0, π²/3), the logistic spread of a value uniform in its bounds)."""
    precision = information + torch.linalg.inv(hyperprior)
    covariance = torch.linalg.inv(precision)
    return 0.5 * (covariance + covariance.transpose(-1, -2))


def shared_noise_covariance(means_covariance: torch.Tensor, score: torch.Tensor, log_sd: float) -> torch.Tensor:
    """What a systematic error of the noise level, shared by all voxels, adds to Cov(μ_k).

    The means move by ∂μ_k/∂log σ = -Cov(μ_k) ``score``_k (the derivative of the fixed point
    Σ_v r_vk (Σ_k + F_v⁻¹)⁻¹ (ẑ_v - μ_k) = H⁻¹ μ_k that :func:`mean_covariance` linearises), so the error's
    variance ``log_sd``² adds ``log_sd``² (∂μ_k/∂log σ)(∂μ_k/∂log σ)ᵀ.

    Parameters
    ----------
    means_covariance : Tensor, shape (K, L, L)
        :func:`mean_covariance`.
    score : Tensor, shape (K, L)
        :func:`mean_noise_score`, summed over all voxels.
    log_sd : float
        Standard deviation of the shared error, in log σ (0: a noise level that was given).

    Returns
    -------
    Tensor, shape (K, L, L)
    """
    slope = means_covariance @ score[..., None]  # (K, L, 1), up to the sign
    return log_sd**2 * slope @ slope.transpose(-1, -2)


def added_covariance(
    fisher: torch.Tensor, responsibilities: torch.Tensor, covariances: torch.Tensor, means_covariance: torch.Tensor
) -> torch.Tensor:
    """What the uncertainty of the component means adds to each voxel's posterior covariance.

    Σ_k r_vk A_vk Cov(μ_k) A_vkᵀ with A_vk = (P_k + F_v)⁻¹ P_k, the derivative of the voxel's posterior
    mean with respect to μ_k in the linearised model (1 where its data say nothing, 0 where they
    decide).

    Parameters
    ----------
    fisher : Tensor, shape (B, L, L)
    responsibilities : Tensor, shape (B, K)
    covariances, means_covariance : Tensor, shape (K, L, L)
        Σ_k and :func:`mean_covariance`.

    Returns
    -------
    Tensor, shape (B, L, L)
    """
    gain = _gains(fisher, covariances)[1]
    added = gain @ means_covariance @ gain.transpose(-1, -2)  # (B, K, L, L)
    return torch.einsum("bk,bkij->bij", responsibilities, added)


def _gains(fisher: torch.Tensor, covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P_k = Σ_k⁻¹ (K, L, L) and A_vk = (P_k + F_v)⁻¹ P_k (B, K, L, L), which :func:`mean_information` and
    :func:`added_covariance` share."""
    precision = torch.linalg.inv(covariances)
    return precision, torch.linalg.solve(precision + fisher[:, None], precision.expand(fisher.shape[0], -1, -1, -1))
