"""VAE with a univariate standard Gaussian prior (VAE-UniG)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .networks import VoxelBatch, encoder_inputs
from .variational import VariationalEstimator, gaussian_log_density

__all__ = ["VAEEstimator"]


class VAEEstimator(VariationalEstimator):
    """Variational autoencoder with prior p(z) = N(0, I).

    The encoder outputs the mean and log-variance of q(z|s); a linear layer decodes z into unconstrained
    parameters, which smooth transforms bound to their physical ranges before the physics model predicts
    the signal.  Takes every option of :class:`~varmap.estimators.variational.VariationalEstimator`.
    """

    name = "vae"

    def _encoder_outputs(self) -> int:
        return 2 * self.latent_size

    def _prior_modules(self, generator: torch.Generator) -> dict[str, nn.Module]:
        return {}

    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        mean, log_var = self.encoder_(encoder_inputs(batch.observables, batch.S0_relative)).chunk(2, dim=-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * noise
        kl = 0.5 * (mean * mean + torch.exp(log_var) - log_var - 1.0).sum(-1)
        return self._reconstruction_nll(batch.observables, z, batch.sigma) + self._kl_weight(epoch) * kl

    def _sample_proposal(
        self, encoded: torch.Tensor, n_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = encoded.chunk(2, dim=-1)
        log_var = log_var + 2.0 * math.log(self.proposal_scale)
        noise = torch.randn((n_samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * noise
        return z, gaussian_log_density(z, mean, log_var)

    def _proposal_centres(self, encoded: torch.Tensor) -> torch.Tensor:
        return encoded.chunk(2, dim=-1)[0][None]

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
