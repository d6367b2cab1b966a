"""VAE with a learnable Gaussian-mixture prior (VAE-GMM) whose components learn tissue types."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..signal_models import SignalModel
from .data import PreparedData
from .mixture_prior import GaussianMixturePrior
from .networks import VoxelBatch, encoder_inputs
from .neural import device_generator
from .variational import VariationalEstimator, gaussian_log_density

__all__ = ["GMVAEEstimator", "Y_SAMPLERS"]

#: Training voxels on which component usage is measured after each epoch.
_USAGE_VOXELS = 4096

#: How the component y enters the reconstruction term during training.
Y_SAMPLERS = ("gumbel", "enumerate")


class GMVAEEstimator(VariationalEstimator):
    """Variational autoencoder with a Gaussian-mixture prior.

    The encoder outputs class logits of q(y|s) and, for every component k, the mean and log-variance of
    q(z|s, y=k).  The KL term is computed exactly as

    .. math:: KL(q(y|s)\\|p(y)) + \\sum_k q(y=k|s)\\, KL(q(z|s,k)\\|p(z|y=k))

    (against each component's own learnable Gaussian, not a single standard normal).

    Notes
    -----
    Mixture components can die: early in training one component may reconstruct everything a
    little better, take over q(y|s) for two tissues, and leave another component unused with
    p(y=k) → 0; nothing then brings it back, and two tissues share one broad Gaussian prior.
    After the warm-up, an unused component is therefore re-seeded by splitting the most used one
    (as in split-and-merge EM): both get half its weight and its encoder head, and their prior means
    move ±0.8 standard deviations apart along the principal axis of that component's posterior means
    over the training voxels.  Training then decides whether the split stays (a re-seeded component
    that the data do not support dies again).  At most ``max_reseeds`` splits, one per
    ``patience // 2`` epochs; the epochs are listed in ``history["reseeded_epochs"]``.  For the
    reconstruction term, y is drawn with the Gumbel-softmax relaxation at a temperature annealed from
    ``temperature[0]`` to ``temperature[1]`` (``y_sampler="gumbel"``), or summed exactly over the K
    components (``y_sampler="enumerate"``).

    Gradient training fits the prior only as far as the ELBO's gradients move it, which is slowly where
    the data pin a direction down (at high SNR, an S0 shared by all voxels shows as a prior several
    times wider than the noise of one voxel's S0).  After training, the prior is therefore refined
    by empirical Bayes: ``refinement_rounds`` times, the posteriors of ``refinement_voxels`` random
    voxels are drawn by importance sampling (as at inference) and ``refinement_steps`` EM steps set
    the mixture weights, means and full covariances to the maximum-marginal-likelihood values for
    those samples (:meth:`GaussianMixturePrior.em_steps`); encoder and decoder stay fixed.  The
    importance-sampling estimate of the mean log evidence per voxel before each step is in
    ``history["refinement_log_evidence"]``.  Maps and cluster probabilities are posterior means
    and posterior component probabilities under the refined prior.

    Parameters
    ----------
    model : SignalModel
    n_components : int
        Number of mixture components K.
    y_sampler : {"gumbel", "enumerate"}
    temperature : tuple of float
        Gumbel-softmax temperature at the end of the KL warm-up and at the last epoch (geometric decay).
    min_component_usage : float
        A component whose share of the training voxels (mean of q(y|s)) falls below this after the
        warm-up is re-seeded by splitting the most used component (see Notes); 0 never re-seeds.
    max_reseeds : int
        Most re-seedings in one training run.
    refinement_rounds : int
        Fresh importance-sampling draws in the prior refinement after training; 0 skips it.
    refinement_steps : int
        EM steps on each draw.
    refinement_voxels : int
        Voxels (a random subset of the data) whose posteriors the refinement uses.
    **kwargs
        Options of :class:`~varmap.estimators.variational.VariationalEstimator`.
    """

    name = "gmvae"

    def __init__(
        self,
        model: SignalModel,
        *,
        n_components: int = 3,
        y_sampler: str = "enumerate",
        temperature: tuple[float, float] = (1.0, 0.3),
        min_component_usage: float = 0.005,
        max_reseeds: int = 4,
        refinement_rounds: int = 4,
        refinement_steps: int = 5,
        refinement_voxels: int = 8192,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        if y_sampler not in Y_SAMPLERS:
            raise ValueError(f"unknown y_sampler {y_sampler!r}; choose one of {list(Y_SAMPLERS)}.")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1; got {n_components}.")
        self.n_components = n_components
        self.y_sampler = y_sampler
        self.temperature = tuple(temperature)
        self.min_component_usage = min_component_usage
        self.max_reseeds = max_reseeds
        if min(refinement_rounds, refinement_steps) < 0 or refinement_voxels < 1:
            raise ValueError(
                "refinement_rounds and refinement_steps must be >= 0 and refinement_voxels >= 1; got "
                f"{refinement_rounds!r}, {refinement_steps!r}, {refinement_voxels!r}."
            )
        self.refinement_rounds = refinement_rounds
        self.refinement_steps = refinement_steps
        self.refinement_voxels = refinement_voxels

    def _encoder_outputs(self) -> int:
        return self.n_components * (1 + 2 * self.latent_size)

    def _prior_modules(self, generator: torch.Generator) -> dict[str, nn.Module]:
        self.prior_ = GaussianMixturePrior(self.n_components, self.latent_size, generator)
        return {"prior": self.prior_}

    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        self.reseeded_epochs_: list[int] = []
        history = super()._train(data)
        history["reseeded_epochs"] = list(self.reseeded_epochs_)
        history["refinement_log_evidence"] = self._refine_prior(data)
        return history

    def _refine_prior(self, data: PreparedData) -> list[float]:
        """Empirical-Bayes refinement of the trained prior (see Notes); returns the log-evidence trace."""
        n_valid = data.observables.shape[0]
        rows = np.sort(np.random.default_rng(self.seed + 5).permutation(n_valid)[: self.refinement_voxels])
        voxels = self._tensors(data, rows)
        generator = device_generator(self.device_, self.seed + 5)
        evidence: list[float] = []
        self.network_.eval()
        with torch.no_grad():
            for _ in range(self.refinement_rounds if self.refinement_steps else 0):
                parts = [self._posterior_samples(batch, generator) for batch in self._chunks(voxels)]
                z, log_likelihood, log_proposal = (torch.cat(tensors, dim=1) for tensors in zip(*parts))
                evidence += self.prior_.em_steps(z, log_likelihood, log_proposal, self.refinement_steps)
        return evidence

    def _after_epoch(self, epoch: int, train_data: VoxelBatch) -> bool:
        last = self.reseeded_epochs_[-1] if self.reseeded_epochs_ else -float("inf")
        if (
            epoch + 1 < self._first_stop_epoch()
            or len(self.reseeded_epochs_) >= self.max_reseeds
            or epoch - last < max(1, self.patience // 2)
        ):
            return False
        sample = VoxelBatch(*(t[:_USAGE_VOXELS] for t in train_data))
        with torch.no_grad():
            logits, mean, _ = self._split(self.encoder_(encoder_inputs(sample.observables, sample.S0_relative)))
            q_y = torch.softmax(logits, dim=-1)
            usage = q_y.mean(0)
            dead = int(torch.argmin(usage))
            if usage[dead] >= self.min_component_usage:
                return False
            donor = int(torch.argmax(usage))
            axis, spread = _principal_axis(mean[:, donor], q_y[:, donor])
            self._reseed(dead, donor, 0.8 * spread * axis)
        self.reseeded_epochs_.append(epoch)
        return True

    def _reseed(self, dead: int, donor: int, offset: torch.Tensor) -> None:
        """Split component ``donor`` into itself and ``dead``, prior means ``∓ offset`` apart."""
        self.prior_.split_component(dead, donor, offset)
        head = self.encoder_.net[-1]
        head.weight[self._head_rows(dead)] = head.weight[self._head_rows(donor)]
        head.bias[self._head_rows(dead)] = head.bias[self._head_rows(donor)]

    def _head_rows(self, k: int) -> list[int]:
        """Rows of the encoder's last layer that belong to component k, in :meth:`_split`'s layout:
        its class logit, then its latent means and log-variances."""
        K, L = self.n_components, self.latent_size
        return [k, *range(K + 2 * L * k, K + 2 * L * (k + 1))]

    def _split(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits (B, K), component means and log-variances (B, K, L)."""
        K, L = self.n_components, self.latent_size
        logits = encoded[..., :K]
        mean, log_var = encoded[..., K:].reshape(*encoded.shape[:-1], K, 2 * L).chunk(2, dim=-1)
        return logits, mean, log_var

    def _temperature(self, epoch: int) -> float:
        start, end = self.temperature
        progress = min(1.0, max(0.0, (epoch - self._first_stop_epoch()) / max(self.n_epochs - self._first_stop_epoch(), 1)))
        return start * (end / start) ** progress

    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        observables, sigma = batch.observables, batch.sigma
        logits, mean, log_var = self._split(self.encoder_(encoder_inputs(observables, batch.S0_relative)))
        log_q_y = torch.log_softmax(logits, dim=-1)
        q_y = log_q_y.exp()
        kl_z = self.prior_.kl_divergence(mean, log_var)
        kl = (q_y * (log_q_y - self.prior_.log_weights())).sum(-1) + (q_y * kl_z).sum(-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * noise  # (B, K, L): one draw per component
        if self.y_sampler == "enumerate":
            nll = self._reconstruction_nll(observables[:, None, :], z, sigma[:, None, :])
            reconstruction = (q_y * nll).sum(-1)
        else:
            y = _gumbel_softmax(logits, self._temperature(epoch), generator)
            reconstruction = self._reconstruction_nll(observables, (y[..., None] * z).sum(-2), sigma)
        return reconstruction + self._kl_weight(epoch) * kl

    def _sample_proposal(
        self, encoded: torch.Tensor, n_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, mean, log_var = self._split(encoded)
        log_var = log_var + 2.0 * math.log(self.proposal_scale)
        # Defensive mixture: every component keeps some proposal mass, so a component that the
        # encoder dismisses is still explored.
        mix = 0.8 * torch.softmax(logits, dim=-1) + 0.2 / self.n_components
        component = torch.multinomial(mix, n_samples, replacement=True, generator=generator).T  # (S, B)
        index = component[..., None, None].expand(-1, -1, 1, mean.shape[-1])
        chosen_mean = torch.gather(mean.expand(n_samples, *mean.shape), 2, index)[:, :, 0]
        chosen_log_var = torch.gather(log_var.expand(n_samples, *log_var.shape), 2, index)[:, :, 0]
        noise = torch.randn(chosen_mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = chosen_mean + torch.exp(0.5 * chosen_log_var) * noise
        log_q = torch.logsumexp(torch.log(mix) + gaussian_log_density(z[..., None, :], mean, log_var), dim=-1)
        return z, log_q

    def _proposal_centres(self, encoded: torch.Tensor) -> torch.Tensor:
        return self._split(encoded)[1].transpose(0, 1)

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior_.log_density(z)

    def _cluster_probs(self, z: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
        responsibilities = torch.softmax(self.prior_.component_log_density(z), dim=-1)
        return (weights[..., None] * responsibilities.double()).sum(0).cpu().numpy()


def _principal_axis(points: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit principal axis (L,) of weighted points (N, L) and the standard deviation along it."""
    weights = weights / weights.sum().clamp_min(1e-12)
    centred = points - (weights[:, None] * points).sum(0)
    covariance = torch.einsum("n,ni,nj->ij", weights, centred, centred)
    values, vectors = torch.linalg.eigh(covariance)
    return vectors[:, -1], values[-1].clamp_min(0.0).sqrt()


def _gumbel_softmax(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Relaxed one-hot sample of Cat(softmax(logits)) (Jang et al. 2017), with a local generator."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    return torch.softmax((logits + gumbel) / temperature, dim=-1)
