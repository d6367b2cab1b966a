"""Priors over latent codes, behind one interface: a fixed standard normal, and a learnable Gaussian mixture.

A variational estimator is given one of these; it needs nothing else from the prior than

- ``n_components`` (K; 1 for the standard normal) and ``log_weights()`` (log p(y), shape (K,)),
- ``component_log_density(z)`` (log p(y=k) + log p(z|y=k), shape (..., K)) and ``log_density(z)``,
- ``responsibilities(z)`` (p(y=k|z), shape (..., K)),
- ``kl_divergence(mean, log_var)``: KL(q(z|s,k) ‖ p(z|y=k)) for diagonal Gaussians q, shape (B, K),
- ``refit(z, log_likelihood, log_proposal, n_steps)``: empirical-Bayes steps from importance-sampled
  posteriors; it returns the log-evidence trace (empty for a fixed prior).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["StandardNormalPrior", "GaussianMixturePrior", "PRIORS"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Smallest variance an EM step leaves along any axis of a component, relative to the component's
#: mean variance (keeps a direction that the data pin down, e.g. an S0 shared by all voxels, invertible).
_RELATIVE_VARIANCE_FLOOR = 1e-6

#: A split-and-merge move places the two new components this many standard deviations (of the merger,
#: along its principal axis) either side of the merger's centre.
_SPLIT_SPREAD = 0.8


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

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I), shape (...)."""
        return -0.5 * (z * z + _LOG_2PI).sum(-1)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Ones, shape (..., 1)."""
        return torch.ones_like(z[..., :1])

    def kl_divergence(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, diag exp(log_var)) ‖ N(0, I)), shape (B, 1) for inputs (B, 1, L)."""
        return 0.5 * (mean * mean + torch.exp(log_var) - log_var - 1.0).sum(-1)

    def refit(
        self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor, n_steps: int
    ) -> list[float]:
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

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of the mixture, shape (...)."""
        return torch.logsumexp(self.component_log_density(z), dim=-1)

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
    def refit(
        self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor, n_steps: int
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

        Returns
        -------
        list of float
            Importance-sampling estimate of the mean log evidence per voxel (up to a constant) under
            the prior before each step; it should not decrease.
        """
        n_samples, n_voxels, n_latent = z.shape
        points = z.reshape(-1, n_latent).double()
        eye = torch.eye(n_latent, dtype=torch.float64, device=z.device)
        evidence = []
        for _ in range(n_steps):
            components, log_weights = self._posterior_terms(z, log_likelihood, log_proposal)
            evidence.append(_mean_log_evidence(log_weights))
            posterior = torch.softmax(log_weights, dim=0)[..., None] * torch.softmax(components, dim=-1)
            posterior = posterior.reshape(-1, posterior.shape[-1])  # (S·B, K), sums to B
            mass = posterior.sum(0)
            means = posterior.T @ points / mass[:, None].clamp_min(1e-300)
            weighted = (posterior[:, :, None] * points[:, None, :]).reshape(points.shape[0], -1)
            second = (weighted.T @ points).reshape(-1, n_latent, n_latent) / mass[:, None, None].clamp_min(1e-300)
            covariance = second - means[:, :, None] * means[:, None, :]
            covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
            floor = _RELATIVE_VARIANCE_FLOOR * covariance.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
            tril, info = torch.linalg.cholesky_ex(covariance + floor[:, None, None] * eye)
            update = (mass > n_latent + 1) & (info == 0)
            self.logits.copy_(torch.log(mass.clamp_min(1e-12) / n_voxels).to(self.logits.dtype))
            self.means[update] = means[update].to(self.means.dtype)
            self.log_vars[update] = (2.0 * torch.log(tril[update].diagonal(dim1=-2, dim2=-1))).to(self.log_vars.dtype)
            self.lower[update] = torch.tril(tril[update], diagonal=-1).to(self.lower.dtype)
        return evidence

    @torch.no_grad()
    def log_evidence(self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor) -> float:
        """Importance-sampling estimate of the mean log evidence per voxel under this prior (as :meth:`refit`)."""
        return _mean_log_evidence(self._posterior_terms(z, log_likelihood, log_proposal)[1])

    def _posterior_terms(
        self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Components' log densities (S, B, K) and log importance weights (S, B) of the samples, float64."""
        components = self.component_log_density(z).double()
        return components, log_likelihood.double() + torch.logsumexp(components, -1) - log_proposal.double()

    @torch.no_grad()
    def split_merge(
        self, z: torch.Tensor, log_likelihood: torch.Tensor, log_proposal: torch.Tensor, n_steps: int
    ) -> bool:
        """Try to move a component that duplicates another to where the prior lacks one (split-and-merge
        EM, Ueda et al. 2000).  EM alone keeps two components that share one cluster of voxels while
        another cluster shares one component with a third.  The two components whose responsibilities
        over the samples overlap most are merged by moment matching, and one component (the merger or
        another) is split in two along its principal axis into the freed place; ``n_steps`` EM steps
        (:meth:`refit`) follow each candidate.  The candidate of highest log evidence of the samples is
        kept if it beats the prior before the move; otherwise the prior is restored.  Returns whether a
        move was kept.

        Ueda N, Nakano R, Ghahramani Z, Hinton GE (2000) SMEM algorithm for mixture models. Neural
        Comput. 12:2109-2128.
        """
        if self.n_components < 2:
            return False
        before = self._parameters_copy()
        best_evidence, best = self.log_evidence(z, log_likelihood, log_proposal), None
        components, log_weights = self._posterior_terms(z, log_likelihood, log_proposal)
        posterior = torch.softmax(log_weights, dim=0)[..., None] * torch.softmax(components, dim=-1)
        responsibility = posterior.reshape(-1, self.n_components)
        unit = responsibility / responsibility.norm(dim=0).clamp_min(1e-300)
        overlap = torch.triu(unit.T @ unit, diagonal=1)
        first, second = divmod(int(overlap.argmax()), self.n_components)
        for target in (k for k in range(self.n_components) if k != second):
            self._load_parameters(before)
            self._merge(first, second)
            self._split(target, second)
            self.refit(z, log_likelihood, log_proposal, n_steps)
            evidence = self.log_evidence(z, log_likelihood, log_proposal)
            if evidence > best_evidence:
                best_evidence, best = evidence, self._parameters_copy()
        self._load_parameters(before if best is None else best)
        return best is not None

    def _parameters_copy(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.named_parameters()}

    def _load_parameters(self, values: dict[str, torch.Tensor]) -> None:
        for name, tensor in self.named_parameters():
            tensor.copy_(values[name])

    def _moments(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weight, mean (L,) and covariance (L, L) of component ``index``, float64."""
        tril = self.scale_tril()[index].double()
        return self.log_weights()[index].exp().double(), self.means[index].double(), tril @ tril.T

    def _set_component(self, index: int, weight: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> None:
        """Set component ``index`` (the other components keep their weights; the logits are renormalised)."""
        weights = self.log_weights().exp().double()
        weights[index] = weight
        eye = torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
        factor = torch.linalg.cholesky(covariance + 1e-9 * covariance.diagonal().mean().clamp_min(1e-30) * eye)
        self.logits.copy_(torch.log(weights).to(self.logits.dtype))
        self.means[index] = mean.to(self.means.dtype)
        self.log_vars[index] = (2.0 * torch.log(factor.diagonal())).to(self.log_vars.dtype)
        self.lower[index] = torch.tril(factor, diagonal=-1).to(self.lower.dtype)

    def _merge(self, first: int, second: int) -> None:
        """Moment-matched merger of components ``first`` and ``second`` in place of ``first``; ``second``
        keeps a weight of 0 until :meth:`_split` fills it."""
        (w1, m1, c1), (w2, m2, c2) = self._moments(first), self._moments(second)
        weight = w1 + w2
        mean = (w1 * m1 + w2 * m2) / weight
        covariance = (w1 * (c1 + torch.outer(m1 - mean, m1 - mean)) + w2 * (c2 + torch.outer(m2 - mean, m2 - mean))) / weight
        self._set_component(second, torch.zeros((), dtype=torch.float64), m2, c2)
        self._set_component(first, weight, mean, covariance)

    def _split(self, source: int, free: int) -> None:
        """Split component ``source`` into itself and ``free``: half the weight each, means
        :data:`_SPLIT_SPREAD` standard deviations either side along its principal axis, covariances
        narrowed along that axis so that the pair keeps the source's spread."""
        weight, mean, covariance = self._moments(source)
        values, vectors = torch.linalg.eigh(covariance)
        axis, variance = vectors[:, -1], values[-1].clamp_min(0.0)
        offset = _SPLIT_SPREAD * variance.sqrt() * axis
        narrowed = covariance - _SPLIT_SPREAD**2 * variance * torch.outer(axis, axis)
        self._set_component(source, weight / 2, mean - offset, narrowed)
        self._set_component(free, weight / 2, mean + offset, narrowed)


def _mean_log_evidence(log_weights: torch.Tensor) -> float:
    """Mean over voxels of log (1/S Σ_s w_s) from log importance weights (S, B)."""
    return float((torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])).mean())


#: Priors by name; each takes (n_components, n_latent, generator).
PRIORS: dict[str, type[nn.Module]] = {"standard_normal": StandardNormalPrior, "mixture": GaussianMixturePrior}
