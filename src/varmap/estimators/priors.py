"""Priors over latent codes, behind one interface: a fixed standard normal, and a learnable Gaussian mixture.

A variational estimator is given one of these; it needs nothing else from the prior than

- ``n_components`` (K; 1 for the standard normal) and ``log_weights()`` (log p(y), shape (K,)),
- ``component_log_density(z)`` (log p(y=k) + log p(z|y=k), shape (..., K)) and ``log_density(z)``
  (with ``equal_weights=True``, of the same components in equal proportions), and
  ``mixture_log_density(components, equal_weights=False)``, the same from component densities already
  computed (importance samples keep theirs, :class:`~varmap.estimators.posterior.PosteriorSamples`),
- ``sample(shape, generator, equal_weights=False)``: draws from the prior (or its components in equal
  proportions), for the importance sampler's defensive proposal,
- ``responsibilities(z)`` (p(y=k|z), shape (..., K); the softmax of the component densities),
- ``kl_divergence(mean, log_var)``: KL(q(z|s,k) ‖ p(z|y=k)) for diagonal Gaussians q, shape (B, K),
- ``refit(z, log_likelihood, log_proposal, n_steps, blocks=None)``: empirical-Bayes steps
  from importance-sampled posteriors; it returns the log-evidence trace (empty for a fixed prior).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["StandardNormalPrior", "GaussianMixturePrior", "CovarianceBlocks", "PRIORS", "bhattacharyya_distance"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Smallest variance an EM step leaves along any axis of a component, relative to the component's
#: mean variance (keeps a direction that the data pin down, e.g. an S0 shared by all voxels, invertible).
_RELATIVE_VARIANCE_FLOOR = 1e-6


class CovarianceBlocks(NamedTuple):
    """Coordinates ``transform @ z`` of a latent code, grouped into blocks that a prior component holds
    mutually uncorrelated (see :meth:`GaussianMixturePrior.refit`).

    Attributes
    ----------
    transform : Tensor, shape (L, L)
        An invertible matrix A.
    labels : sequence of int, length L
        The block of every coordinate of ``A z``; coordinates with equal labels may correlate.
    """

    transform: torch.Tensor
    labels: Sequence[int]

    def restrict(self, covariance: torch.Tensor) -> torch.Tensor:
        """The covariances (K, L, L) with every cross-covariance between blocks of ``A z`` set to zero;
        unchanged where ``transform`` cannot be inverted."""
        transform = self.transform.to(covariance)
        inverse, info = torch.linalg.inv_ex(transform)
        if info != 0 or not bool(torch.isfinite(inverse).all()):
            return covariance
        labels = torch.as_tensor(self.labels, device=covariance.device)
        mapped = transform @ covariance @ transform.T
        mapped = mapped * (labels[:, None] == labels[None, :])
        restricted = inverse @ mapped @ inverse.T
        return 0.5 * (restricted + restricted.transpose(-1, -2))


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I): one fixed component (the VAE-UniG prior).

    Parameters
    ----------
    n_components : int
        Must be 1.
    n_latent : int
    generator : torch.Generator
        Unused (the prior has no random initial state); accepted for one constructor signature.
    """

    learnable = False

    def __init__(self, n_components: int, n_latent: int, generator: torch.Generator) -> None:
        super().__init__()
        if n_components != 1:
            raise ValueError(f"the standard normal prior has one component; got n_components={n_components}.")
        self.n_components = 1
        self.n_latent = n_latent
        self.register_buffer("_log_weights", torch.zeros(1), persistent=False)

    def log_weights(self) -> torch.Tensor:
        """log p(y) = [0], shape (1,)."""
        return self._log_weights

    def component_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I), shape (..., 1)."""
        return self.log_density(z)[..., None]

    def log_density(self, z: torch.Tensor, equal_weights: bool = False) -> torch.Tensor:
        """log N(z; 0, I), shape (...) (``equal_weights``: the same, there is one component)."""
        return -0.5 * (z * z + _LOG_2PI).sum(-1)

    def mixture_log_density(self, components: torch.Tensor, equal_weights: bool = False) -> torch.Tensor:
        """log p(z) from :meth:`component_log_density`'s values (..., 1): the one component's, shape (...)."""
        return components[..., 0]

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, equal_weights: bool = False) -> torch.Tensor:
        """Draws z ~ N(0, I), shape (*shape, L) (``equal_weights``: the same, there is one component)."""
        return torch.randn((*shape, self.n_latent), generator=generator, device=self._log_weights.device)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Ones, shape (..., 1)."""
        return torch.ones_like(z[..., :1])

    def kl_divergence(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, diag exp(log_var)) ‖ N(0, I)), shape (B, 1) for inputs (B, 1, L)."""
        return 0.5 * (mean * mean + torch.exp(log_var) - log_var - 1.0).sum(-1)

    def refit(self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor, n_steps: int,
              blocks: CovarianceBlocks | None = None) -> list[float]:
        """Nothing to refit: the prior is fixed.  Returns an empty trace."""
        return []


class GaussianMixturePrior(nn.Module):
    """p(y) = Cat(π), p(z|y=k) = N(μ_k, Σ_k) with Σ_k = L_k L_kᵀ; all learnable.

    The Cholesky factor L_k has diagonal ``exp(log_vars / 2)`` and strictly lower part ``lower``, so
    with ``lower = 0`` the components are axis-aligned with variances ``exp(log_vars)``.

    Parameters
    ----------
    n_components, n_latent : int
    generator : torch.Generator
        Draws the initial component means (standard normal, so components start apart).
    """

    learnable = True

    def __init__(self, n_components: int, n_latent: int, generator: torch.Generator) -> None:
        super().__init__()
        self.n_components = n_components
        self.n_latent = n_latent
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, n_latent, generator=generator))
        self.log_vars = nn.Parameter(torch.zeros(n_components, n_latent))
        self.lower = nn.Parameter(torch.zeros(n_components, n_latent, n_latent))

    def log_weights(self) -> torch.Tensor:
        """log π, shape (K,)."""
        return torch.log_softmax(self.logits, dim=0)

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors L_k of the component covariances, shape (K, L, L)."""
        return torch.diag_embed(torch.exp(0.5 * self.log_vars)) + torch.tril(self.lower, diagonal=-1)

    def covariances(self) -> torch.Tensor:
        """Σ_k = L_k L_kᵀ, in float64, shape (K, L, L)."""
        tril = self.scale_tril().double()
        return tril @ tril.transpose(-1, -2)

    def _inverse_scale(self) -> torch.Tensor:
        """L_k⁻¹, shape (K, L, L)."""
        tril = self.scale_tril()
        eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device).expand_as(tril)
        return torch.linalg.solve_triangular(tril, eye, upper=False)

    def component_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(z; μ_k, Σ_k), shape (..., K)."""
        n_components, n_latent = self.means.shape
        inverse = self._inverse_scale()
        # L_k⁻¹ (z - μ_k) for every k at once: z times the K blocks L_k⁻ᵀ side by side, minus L_k⁻¹ μ_k
        blocks = inverse.transpose(-1, -2).permute(1, 0, 2).reshape(n_latent, n_components * n_latent)
        offsets = (inverse @ self.means[..., None]).reshape(n_components * n_latent)
        whitened = (z @ blocks - offsets).unflatten(-1, (n_components, n_latent))
        log_normal = -0.5 * ((whitened**2).sum(-1) + self.log_vars.sum(-1) + n_latent * _LOG_2PI)
        return self.log_weights() + log_normal

    def log_density(self, z: torch.Tensor, equal_weights: bool = False) -> torch.Tensor:
        """log p(z) of the mixture, shape (...); with ``equal_weights``, of the mixture of the same
        components in equal proportions (what :meth:`sample` draws from with ``equal_weights``)."""
        return self.mixture_log_density(self.component_log_density(z), equal_weights)

    def mixture_log_density(self, components: torch.Tensor, equal_weights: bool = False) -> torch.Tensor:
        """:meth:`log_density` from :meth:`component_log_density`'s values (..., K), shape (...)."""
        if equal_weights:
            components = components - self.log_weights() - math.log(self.n_components)
        return torch.logsumexp(components, dim=-1)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, equal_weights: bool = False) -> torch.Tensor:
        """Draws z from the mixture, shape (*shape, L); with ``equal_weights``, from its components in equal
        proportions (a component of small weight is explored as much as the others)."""
        n_draws = math.prod(shape)
        probabilities = torch.ones_like(self.logits) if equal_weights else self.log_weights().exp()
        component = torch.multinomial(probabilities.detach(), n_draws, replacement=True, generator=generator)
        noise = torch.randn((n_draws, self.n_latent), generator=generator, device=self.means.device)
        z = self.means[component] + torch.einsum("nij,nj->ni", self.scale_tril()[component], noise)
        return z.reshape(*shape, self.n_latent)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """p(y=k|z), shape (..., K)."""
        return torch.softmax(self.component_log_density(z), dim=-1)

    def kl_divergence(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, diag exp(log_var)) ‖ N(μ_k, Σ_k)) for every component, closed form.

        Parameters
        ----------
        mean, log_var : Tensor, shape (B, K, L)
            Each voxel's Gaussian posterior given each component.

        Returns
        -------
        Tensor, shape (B, K)
        """
        inverse = self._inverse_scale()
        # as batched matrix products rather than einsums: the same sums in a third of the operations
        # (training steps on small batches cost what their operations' overhead costs)
        whitened = torch.bmm((mean - self.means).transpose(0, 1), inverse.transpose(-1, -2))  # (K, B, L)
        mahalanobis = (whitened**2).sum(-1).T
        trace = (torch.exp(log_var) * (inverse**2).sum(-2)).sum(-1)
        log_det_ratio = self.log_vars.sum(-1) - log_var.sum(-1)
        return 0.5 * (trace + mahalanobis - mean.shape[-1] + log_det_ratio)

    @torch.no_grad()
    def split_component(self, dead: int, donor: int, offset: torch.Tensor) -> None:
        """Replace component ``dead`` by half of ``donor``: equal weights, shape copied, means ``∓ offset`` apart."""
        self.logits[donor] -= math.log(2.0)
        self.logits[dead] = self.logits[donor]
        centre = self.means[donor].clone()
        self.means[donor] = centre - offset
        self.means[dead] = centre + offset
        self.log_vars[dead] = self.log_vars[donor]
        self.lower[dead] = self.lower[donor]

    @torch.no_grad()
    def set_component(self, k: int, mean: torch.Tensor, covariance: torch.Tensor) -> None:
        """Set component ``k``'s mean (L,) and covariance (L, L) (its weight is left to ``logits``)."""
        self._set_components(k, mean, torch.linalg.cholesky(0.5 * (covariance + covariance.T)))

    def _set_components(self, index: int | torch.Tensor, means: torch.Tensor, tril: torch.Tensor) -> None:
        """Write the means and Cholesky factors of the components ``index`` (an index or a mask)."""
        self.means[index] = means.to(self.means.dtype)
        self.log_vars[index] = (2.0 * torch.log(tril.diagonal(dim1=-2, dim2=-1))).to(self.log_vars.dtype)
        self.lower[index] = torch.tril(tril, diagonal=-1).to(self.lower.dtype)

    @torch.no_grad()
    def refit(
        self,
        z: torch.Tensor,
        log_likelihood: torch.Tensor,
        log_proposal: torch.Tensor,
        n_steps: int,
        blocks: CovarianceBlocks | None = None,
    ) -> list[float]:
        """Expectation-maximisation steps towards the prior of maximum marginal likelihood (empirical Bayes).

        Each voxel's posterior under the current prior is represented by self-normalised importance
        samples: ``z`` drawn from a proposal with log density ``log_proposal`` and data log-likelihood
        ``log_likelihood`` (both fixed, so a step costs no network or physics evaluation).  The E-step
        weighs every sample by posterior weight × component responsibility; the M-step sets each
        component's weight, mean and full covariance to those of its weighted samples.  A component
        that holds fewer than ``L + 1`` voxels' worth of weight keeps its mean and covariance.

        Parameters
        ----------
        z : Tensor, shape (S, B, L)
        log_likelihood, log_proposal : Tensor, shape (S, B)
        n_steps : int
        blocks : CovarianceBlocks, optional
            An invertible matrix A and a block label for every coordinate of ``A z``: each component's
            covariance is then restricted to those under which coordinates of different blocks are
            uncorrelated (the M-step keeps the block-diagonal part of the weighted covariance in those
            coordinates, its maximum-likelihood value under that restriction, so a step still does not
            lower the evidence).  The variational estimators pass their latent decoder's weight, whose
            outputs are the model's unconstrained parameters and S0 (see Notes).

        Returns
        -------
        list of float
            Importance-sampling estimate of the mean log evidence per voxel (up to a constant) under
            the prior before each step; it should not decrease.

        Notes
        -----
        Why S0 is held apart: where S0 is the same in many voxels (one coil, one T2 weighting), a
        component's S0 spread is far below what one voxel's b=0 measurements resolve, so the data do not
        say how S0 varies with the tissue parameters within a component, and EM leaves whatever
        correlation training gave it.  That correlation is not harmless: tied to K, S0 changes how K
        moves the signal of every shell, and the posterior of D narrows as if S0 were measured
        (one b=0 + 2 x 30 directions, SNR 20: gmvae's D std in white matter 0.88x the Bayes posterior's
        with the same errors, decoded S0 correlated -0.78 with K over the prior's white-matter range;
        held apart, 0.99x).

        Whether the tissue parameters may correlate is the signal model's choice (see
        :class:`CovarianceBlocks` and gmvae's ``component_correlations``).  Held apart, a component's
        correlations cannot carry what the refinement's samples put in them where the tissues have none
        (ball-and-stick: f and d_par correlated +0.6 to +0.9 when refined with free correlations); but
        where the data do not place a component along some direction (MS-DKI's free water at b >= 1000
        s/mm², on the likelihood's ridge in D and K), the correlation is what keeps the component wide
        along that ridge, and held at zero EM contracts it onto one point of it.
        """
        n_samples, n_voxels, n_latent = z.shape
        points = z.reshape(-1, n_latent).double()
        eye = torch.eye(n_latent, dtype=torch.float64, device=z.device)
        evidence = []
        for _ in range(n_steps):
            components = self.component_log_density(z).double()
            log_weights = log_likelihood.double() + torch.logsumexp(components, -1) - log_proposal.double()
            evidence.append(float((torch.logsumexp(log_weights, 0) - math.log(n_samples)).mean()))
            posterior = torch.softmax(log_weights, dim=0)[..., None] * torch.softmax(components, dim=-1)
            posterior = posterior.reshape(-1, posterior.shape[-1])  # (S·B, K), sums to B
            mass = posterior.sum(0)
            means = posterior.T @ points / mass[:, None].clamp_min(1e-300)
            weighted = (posterior[:, :, None] * points[:, None, :]).reshape(points.shape[0], -1)
            second = (weighted.T @ points).reshape(-1, n_latent, n_latent) / mass[:, None, None].clamp_min(1e-300)
            covariance = second - means[:, :, None] * means[:, None, :]
            covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
            if blocks is not None:
                covariance = blocks.restrict(covariance)
            floor = _RELATIVE_VARIANCE_FLOOR * covariance.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
            tril, info = torch.linalg.cholesky_ex(covariance + floor[:, None, None] * eye)
            update = (mass > n_latent + 1) & (info == 0)
            self.logits.copy_(torch.log(mass.clamp_min(1e-12) / n_voxels).to(self.logits.dtype))
            self._set_components(update, means[update], tril[update])
        return evidence


def bhattacharyya_distance(
    mean_1: torch.Tensor, covariance_1: torch.Tensor, mean_2: torch.Tensor, covariance_2: torch.Tensor
) -> float:
    """Bhattacharyya distance between two Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂).

    .. math:: \\tfrac18 (μ_1-μ_2)^T Σ^{-1} (μ_1-μ_2) + \\tfrac12 \\log\\frac{\\det Σ}{\\sqrt{\\det Σ_1 \\det Σ_2}},
              \\quad Σ = (Σ_1 + Σ_2)/2

    0 for identical Gaussians; two unit-variance Gaussians whose means lie d apart have d²/8.
    """
    covariance = 0.5 * (covariance_1 + covariance_2)
    difference = mean_1 - mean_2
    mahalanobis = difference @ torch.linalg.solve(covariance, difference)
    log_dets = [torch.linalg.slogdet(c)[1] for c in (covariance, covariance_1, covariance_2)]
    return float(mahalanobis / 8.0 + 0.5 * (log_dets[0] - 0.5 * (log_dets[1] + log_dets[2])))


#: Priors by name; each takes (n_components, n_latent, generator).
PRIORS: dict[str, type[nn.Module]] = {"standard_normal": StandardNormalPrior, "mixture": GaussianMixturePrior}
