"""Shared machinery of the latent-variable estimators: KL warm-up and importance-sampled posteriors."""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from ..signal_models import SignalModel
from .base import Estimates
from .networks import VoxelBatch, encoder_inputs
from .mode_search import find_modes
from .neural import NetworkEstimator

__all__ = ["VariationalEstimator", "gaussian_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last axis."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-log_var) + log_var + _LOG_2PI).sum(-1)


class VariationalEstimator(NetworkEstimator):
    """Base of the VAE estimators.

    Training maximises the evidence lower bound

    .. math:: \\sum_v E_q[\\log p(s_v|z)] - \\beta\\, KL(q(z|s_v) \\| p(z))

    with the physics model inside :math:`p(s|z)`; the KL weight is 0 for ``warmup_off_epochs`` and rises
    linearly to ``beta`` over ``warmup_ramp_epochs``.  Maps are the posterior mean of each parameter
    under the trained generative model, computed by self-normalised importance sampling: samples from
    the encoder's (widened) posterior and from a Laplace approximation at the posterior mode (found
    by Newton steps), then adaptive rounds; the weighted spread of the samples gives the posterior
    standard deviation.

    Parameters
    ----------
    model : SignalModel
    n_latent : int, optional
        Latent dimension; default: number of decoder outputs (physical parameters + S0 scale).
    beta : float
        Final KL weight.  1 is the proper ELBO with a calibrated likelihood.
    warmup_off_epochs, warmup_ramp_epochs : int
        KL warm-up schedule.
    n_posterior_samples : int
        Importance samples per voxel at inference.
    proposal_scale : float
        Factor on the encoder's posterior standard deviation in the proposal (heavier than the
        mean-field posterior, which is too narrow), and on the fitted spread in adaptive rounds.
    n_mode_steps : int
        Newton steps (:func:`~varmap.estimators.mode_search.find_modes`) from the best of the encoder's
        samples to each voxel's posterior mode; as many samples again are then drawn from the Laplace
        approximation there and pooled with the encoder's (each weighted against its own proposal).
        This finds posteriors far narrower than, or away from, the encoder's guess: at high SNR, or
        where a signal rises past the kurtosis turning point and tiny changes of K move it a lot.
        0 skips the search.
    n_adaptive_rounds : int
        Rounds of adaptive importance sampling after the encoder's proposal: each fits a Gaussian to
        the weighted samples and draws the next set from it, which corrects an encoder whose posterior
        is off by more than its width (high SNR).
    **kwargs
        Options of :class:`~varmap.estimators.neural.NetworkEstimator`.
    """

    def __init__(
        self,
        model: SignalModel,
        *,
        n_latent: int | None = None,
        beta: float = 1.0,
        warmup_off_epochs: int = 5,
        warmup_ramp_epochs: int = 20,
        n_posterior_samples: int = 128,
        proposal_scale: float = 1.2,
        n_mode_steps: int = 10,
        n_adaptive_rounds: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        self.n_latent = n_latent
        self.beta = beta
        self.warmup_off_epochs = warmup_off_epochs
        self.warmup_ramp_epochs = warmup_ramp_epochs
        self.n_posterior_samples = n_posterior_samples
        self.proposal_scale = proposal_scale
        self.n_mode_steps = n_mode_steps
        self.n_adaptive_rounds = n_adaptive_rounds

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _prior_modules(self, generator: torch.Generator) -> dict[str, nn.Module]:
        """Learnable prior (if any)."""

    @abstractmethod
    def _sample_proposal(
        self, encoded: torch.Tensor, n_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n_samples`` latent codes per voxel; returns z (S, B, L) and log q(z) (S, B)."""

    @abstractmethod
    def _proposal_centres(self, encoded: torch.Tensor) -> torch.Tensor:
        """The encoder's posterior mean(s) of each voxel, shape (M, B, L): starts of the mode search."""

    @abstractmethod
    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Log prior density of latent codes (..., L) -> (...)."""

    def _cluster_probs(self, z: torch.Tensor, weights: torch.Tensor) -> np.ndarray | None:
        """Posterior component probabilities from weighted samples; ``None`` without components."""
        return None

    # ------------------------------------------------------------------ shared
    @property
    def latent_size(self) -> int:
        """Dimension of the latent space."""
        return self.n_latent or self.model.n_packed + 1

    def _extra_modules(self, generator: torch.Generator) -> dict[str, nn.Module]:
        self.latent_decoder_ = nn.Linear(self.latent_size, self.model.n_packed + 1)
        return {"latent_decoder": self.latent_decoder_, **self._prior_modules(generator)}

    def _output_layer(self) -> nn.Linear:
        return self.latent_decoder_

    def _kl_weight(self, epoch: int) -> float:
        if epoch < self.warmup_off_epochs:
            return 0.0
        ramp = (epoch - self.warmup_off_epochs + 1) / max(self.warmup_ramp_epochs, 1)
        return self.beta * min(1.0, ramp)

    def _first_stop_epoch(self) -> int:
        return self.warmup_off_epochs + self.warmup_ramp_epochs

    def _reconstruction_nll(self, observables: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.decoder_.nll(observables, self.latent_decoder_(z), sigma)

    def _log_likelihood(self, batch: VoxelBatch, z: torch.Tensor) -> torch.Tensor:
        """log p(s|z) of latent samples (S, B, L) up to a constant per voxel, shape (S, B)."""
        return -self.decoder_.nll(batch.observables, self.latent_decoder_(z), batch.sigma)

    def _log_joint(self, batch: VoxelBatch, z: torch.Tensor) -> torch.Tensor:
        """log p(s, z) of latent samples (S, B, L) up to a constant per voxel, shape (S, B)."""
        return self._log_likelihood(batch, z) + self._log_prior(z)

    def _inference_chunk(self) -> int:
        budget = 2**24 // (self.n_posterior_samples * max(self.model.n_observables, 8))
        return max(1, min(self.chunk_size, budget))

    def _posterior_samples(
        self, batch: VoxelBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Importance samples of each voxel's posterior: the encoder's and the Laplace proposals, refined by
        the adaptive rounds.

        Returns
        -------
        z : Tensor, shape (S, B, L)
        log_likelihood, log_proposal : Tensor, shape (S, B)
        """
        encoded = self.encoder_(encoder_inputs(batch.observables, batch.S0_relative))
        z, log_q = self._sample_proposal(encoded, self.n_posterior_samples, generator)
        log_lik = self._log_likelihood(batch, z)
        if self.n_mode_steps:
            voxel = torch.arange(z.shape[1], device=z.device)
            best_sample = (log_lik + self._log_prior(z)).argmax(0)
            starts = torch.cat([self._proposal_centres(encoded), z[best_sample, voxel][None]])
            modes, values, curvatures, axes = find_modes(
                lambda codes: -self._log_joint(batch, codes), starts, self.n_mode_steps
            )
            best = values.argmin(0)
            z_mode, log_q_mode = _laplace_samples(
                modes[best, voxel], curvatures[best, voxel], axes[best, voxel], self.n_posterior_samples,
                self.proposal_scale, generator,
            )
            z, log_q = torch.cat([z, z_mode]), torch.cat([log_q, log_q_mode])
            log_lik = torch.cat([log_lik, self._log_likelihood(batch, z_mode)])
        for _ in range(self.n_adaptive_rounds):
            weights = torch.softmax(log_lik + self._log_prior(z) - log_q, dim=0)
            z, log_q = _refit_proposal(z, weights, self.n_posterior_samples, self.proposal_scale, generator)
            log_lik = self._log_likelihood(batch, z)
        return z, log_lik, log_q

    def _estimate(self, batch: VoxelBatch, generator: torch.Generator) -> Estimates:
        z, log_lik, log_q = self._posterior_samples(batch, generator)
        weights = torch.softmax(log_lik + self._log_prior(z) - log_q, dim=0)
        packed, S0_level = self.decoder_.parameters_of(self.latent_decoder_(z))
        packed, weights = packed.double(), weights.double()
        S0_scale = S0_level.double()[..., 0] / batch.S0_relative.double()[:, 0]
        w = weights[..., None]
        n_scalars = self.model.n_scalars
        scalars = packed[..., :n_scalars]
        mean = (w * scalars).sum(0)
        std = ((w * (scalars - mean) ** 2).sum(0)).clamp_min(0.0).sqrt()
        std_maps = {name: std[:, i].cpu().numpy() for i, name in enumerate(self.model.parameter_names)}
        if self.model.has_direction:
            direction, spread = _mean_axis(packed[..., n_scalars : n_scalars + 3], weights)
            mean = torch.cat([mean, direction], dim=-1)
            std_maps["n"] = spread.cpu().numpy()
        return Estimates(
            packed=mean.cpu().numpy(),
            S0_scale=(weights * S0_scale).sum(0).cpu().numpy(),
            std=std_maps,
            cluster_probs=self._cluster_probs(z, weights),
        )


def _laplace_samples(
    mode: torch.Tensor,
    curvatures: torch.Tensor,
    axes: torch.Tensor,
    n_samples: int,
    scale: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws from the Laplace approximation N(mode, scale² · H⁻¹), H = axes · diag(curvatures) · axesᵀ.

    Returns z (n_samples, B, L) and their log densities (n_samples, B).
    """
    noise = torch.randn((n_samples, *mode.shape), generator=generator, device=mode.device, dtype=mode.dtype)
    z = mode + torch.einsum("bij,sbj->sbi", axes, scale * noise / curvatures.sqrt())
    log_det = torch.log(curvatures).sum(-1) - 2 * mode.shape[-1] * math.log(scale)
    return z, -0.5 * ((noise**2).sum(-1) - log_det + mode.shape[-1] * _LOG_2PI)


def _refit_proposal(
    z: torch.Tensor, weights: torch.Tensor, n_samples: int, scale: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive importance sampling: a Gaussian fitted to weighted samples becomes the next proposal.

    The covariance is the weighted one, widened by ``scale`` and floored by a tenth of the previous
    proposal's spread so that a round with few effective samples still explores.

    Returns
    -------
    z : Tensor, shape (n_samples, B, L)
    log_q : Tensor, shape (n_samples, B)
    """
    mean = (weights[..., None] * z).sum(0)
    centred = z - mean
    weighted_cov = torch.einsum("sb,sbi,sbj->bij", weights, centred, centred)
    plain = z - z.mean(0)
    previous_cov = torch.einsum("sbi,sbj->bij", plain, plain) / max(z.shape[0] - 1, 1)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    cov = scale**2 * weighted_cov + 0.1 * previous_cov + 1e-8 * eye
    proposal = torch.distributions.MultivariateNormal(mean, scale_tril=_cholesky_with_jitter(cov))
    noise = torch.randn((n_samples, *mean.shape), generator=generator, device=z.device, dtype=z.dtype)
    new_z = mean + torch.einsum("bij,sbj->sbi", proposal.scale_tril, noise)
    return new_z, proposal.log_prob(new_z)


def _cholesky_with_jitter(covariance: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of covariances (B, L, L); a matrix that is not numerically positive definite (far
    apart sample scales in float32) gets a relative jitter in float64, and its diagonal if that fails too."""
    tril, info = torch.linalg.cholesky_ex(covariance)
    failed = info > 0
    if failed.any():
        retry = covariance[failed].double()
        diagonal = retry.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
        jitter = 1e-6 * diagonal.mean(-1) + 1e-12
        eye = torch.eye(retry.shape[-1], dtype=retry.dtype, device=retry.device)
        fixed, retry_info = torch.linalg.cholesky_ex(retry + jitter[:, None, None] * eye)
        fallback = torch.diag_embed((diagonal + jitter[:, None]).sqrt())
        fixed = torch.where((retry_info > 0)[:, None, None], fallback, fixed)
        tril[failed] = fixed.to(tril.dtype)
    return tril


def _mean_axis(directions: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean axis of antipodally symmetric unit vectors and the angular spread in degrees.

    The mean axis is the principal eigenvector of the weighted scatter matrix Σ w n nᵀ; the spread is
    the weighted root-mean-square angle between the samples and that axis.
    """
    scatter = torch.einsum("sb,sbi,sbj->bij", weights, directions, directions)
    _, vectors = torch.linalg.eigh(scatter)
    axis = vectors[..., -1]
    cosine = (directions * axis).sum(-1).abs().clamp(max=1.0)
    spread = torch.sqrt((weights * torch.arccos(cosine) ** 2).sum(0))
    return axis, torch.rad2deg(spread)
