"""The variational estimators: one class, given a prior (standard normal or Gaussian mixture).

Training maximises the evidence lower bound

.. math:: \\sum_v E_q[\\log p(s_v|z)] - \\beta\\, KL(q(y, z|s_v) \\| p(y, z))

with the physics model inside :math:`p(s|z)`.  The encoder's posterior family matches the prior's
components: q(y|s) q(z|s,y) with K = ``prior.n_components`` diagonal Gaussians (K = 1 for the standard
normal, where q(y|s) = 1), and the KL term is computed exactly as

.. math:: KL(q(y|s)\\|p(y)) + \\sum_k q(y=k|s)\\, KL(q(z|s,k)\\|p(z|y=k)).

Maps are posterior means under the trained generative model, by importance sampling
(:mod:`varmap.estimators.posterior`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from ..memory import release_freed_memory
from ..random_streams import numpy_stream, stream_seed, torch_stream
from .base import Estimates, Estimator
from .data import PreparedData
from .likelihood import observable_moments
from .networks import SignalDecoder, VoxelBatch, encoder_inputs, seeded_linear, start_at_typical_values, voxel_batch
from .neural import (
    build_encoder,
    input_statistics,
    map_chunks,
    network_state,
    train_estimator,
    untrained_input_statistics,
)
from .nlls import INITIALISERS, NLLSEstimator
from .parametrisation import S0_PER_SCALE
from .prior_uncertainty import (
    added_covariance,
    jacobian,
    latent_fisher_information,
    latent_noise_score,
    mean_covariance,
    mean_information,
    mean_noise_score,
    shared_noise_covariance,
)
from .merged_components import (
    SPLIT_OFFSET, GridComponents, GridProblem, closest_pair, grid_nodes, merged_start, pooled, s0_quadrature,
    signal_distributions, split_start,
)
from .priors import CovarianceBlocks, bhattacharyya_distance
from .posterior import (
    COLLAPSED_ESS,
    PosteriorSamples,
    effective_sample_size,
    posterior_spread,
    sample_posterior,
    weighted_mean_axis,
    widening_efficiency,
)

__all__ = ["VariationalEstimator"]

#: Training voxels on which component usage is measured after each epoch.
_USAGE_VOXELS = 4096

T = TypeVar("T")

#: Standard deviation (latent units) of the first proposal around a collapsed voxel's classical fit.
_RESTART_SPREAD = 0.05

#: Elements (samples × voxels × observables) one inference chunk may hold.
_INFERENCE_BUDGET = 2**24

#: The repair of merged components (:meth:`VariationalEstimator._repair_merged_components`): draws per
#: component of the signals' distributions; tissue parameters a grid may hold; voxels whose likelihoods it
#: holds; nodes per axis for one and two tissue parameters; the grid's half width in standard deviations of
#: the refitted components' mixture; the smallest share of them for a voxel to count; float64 values one
#: grid chunk may hold.
_SIGNAL_DRAWS = 4096
_GRID_DIMENSIONS = 2
_GRID_VOXELS = 2048
_GRID_NODES = {1: 256, 2: 48}
_GRID_HALF_WIDTH = 4.0
_MIN_PAIR_SHARE = 1e-3
_GRID_BUDGET = 2**21

#: Range of the encoder's latent log-variances (the prior's scale is 1): a voxel unlike the training data
#: (a noise level never seen) must not get a proposal whose density overflows float32.
_LOG_VAR_RANGE = (-20.0, 8.0)


class VariationalEstimator(Estimator):
    """A VAE whose prior is ``prior_class`` (see :mod:`varmap.estimators.priors`).

    The KL weight is 0 for ``warmup_off_epochs`` and rises linearly to ``beta`` over
    ``warmup_ramp_epochs``.  Maps are the posterior mean of each parameter, computed by self-normalised
    importance sampling: samples from the encoder's widened posterior (a quarter from the prior's
    components, so that a posterior mode the encoder does not propose is found), then adaptive rounds (with
    ``target_effective_samples`` set, only where the encoder's samples leave fewer effective samples);
    where they leave fewer than ``min_effective_samples`` (or everywhere with ``inference="exact"``), also
    from a Laplace approximation at the voxel's posterior mode.  The
    weighted spread gives the posterior standard deviation, the effective sample size is reported per
    voxel, and with a mixture prior the component responsibilities give ``cluster_probs``.

    With a mixture prior (K > 1), training also keeps every component in use and refines the prior
    after training (see :class:`~varmap.estimators.gmvae.GMVAEEstimator`).

    Options: ``varmap.estimators.options.OPTIONS[name]``.
    """

    #: The prior: a class of :mod:`varmap.estimators.priors` taking (n_components, n_latent, generator).
    prior_class: ClassVar[type[nn.Module]]
    #: K, components of the prior and of the encoder's posterior (an option where the prior is a mixture).
    n_components: int

    # ------------------------------------------------------------------ network
    @property
    def latent_size(self) -> int:
        """Dimension of the latent space."""
        return self.n_latent or self.model.n_packed + 1

    def _build(self, input_mean: np.ndarray, input_std: np.ndarray) -> None:
        K, L = self.n_components, self.latent_size
        generator = torch_stream(self.seed, "init")
        self.encoder_ = build_encoder(self, K * (1 + 2 * L), input_mean, input_std, generator)
        self.latent_decoder_ = seeded_linear(L, self.model.n_packed + 1, generator)
        start_at_typical_values(self.latent_decoder_, self.model)
        self.prior_ = self.prior_class(K, L, generator)
        self.decoder_ = SignalDecoder(self.model, self.likelihood)
        self.network_ = nn.ModuleDict({"encoder": self.encoder_, "decoder": self.decoder_,
                                       "latent_decoder": self.latent_decoder_, "prior": self.prior_}).to(self.device_)

    def _encode(self, batch: VoxelBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's posterior: class logits (B, K), component means and log-variances (B, K, L)."""
        encoded = self.encoder_(encoder_inputs(batch))
        K, L = self.n_components, self.latent_size
        mean, log_var = encoded[..., K:].reshape(*encoded.shape[:-1], K, 2 * L).chunk(2, dim=-1)
        return encoded[..., :K], mean, log_var.clamp(*_LOG_VAR_RANGE)

    def _head_rows(self, k: int) -> list[int]:
        """Rows of the encoder's output layer that belong to component k, in :meth:`_encode`'s layout:
        its class logit, then its latent means and log-variances."""
        K, L = self.n_components, self.latent_size
        return [k, *range(K + 2 * L * k, K + 2 * L * (k + 1))]

    def _log_likelihood(self, batch: VoxelBatch, z: torch.Tensor) -> torch.Tensor:
        """log p(s|z) of latent codes (..., B, L) up to a constant per voxel, shape (..., B)."""
        return -self.decoder_.nll(batch, self.latent_decoder_(z))

    # ------------------------------------------------------------------ training
    def _kl_weight(self, epoch: int) -> float:
        if epoch < self.warmup_off_epochs:
            return 0.0
        ramp = (epoch - self.warmup_off_epochs + 1) / max(self.warmup_ramp_epochs, 1)
        return self.beta * min(1.0, ramp)

    @property
    def _first_stop_epoch(self) -> int:
        return self.warmup_off_epochs + self.warmup_ramp_epochs

    def _temperature(self, epoch: int) -> float:
        """Gumbel-softmax temperature: geometric decay from ``temperature[0]`` after the warm-up to ``[1]``."""
        start, end = self.temperature
        first = self._first_stop_epoch
        progress = min(1.0, max(0.0, (epoch - first) / max(self.n_epochs - first, 1)))
        return start * (end / start) ** progress

    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """Negative ELBO of every voxel (KL weighted by the warm-up), shape (B,)."""
        logits, mean, log_var = self._encode(batch)
        log_q_y = torch.log_softmax(logits, dim=-1)
        q_y = log_q_y.exp()
        kl = (q_y * (log_q_y - self.prior_.log_weights())).sum(-1) + (q_y * self.prior_.kl_divergence(mean, log_var)).sum(-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * noise  # (B, K, L): one draw per component
        if self.n_components == 1 or self.y_sampler == "enumerate":
            per_component = (t[:, None, :] for t in (batch.observables, batch.b0_mean, batch.sigma, batch.sigma_log_sd))
            observables, b0_mean, sigma, sigma_log_sd = per_component
            nll = self.decoder_.nll_of(observables, self.latent_decoder_(z), b0_mean, sigma, sigma_log_sd)
            reconstruction = (q_y * nll).sum(-1)
        else:
            y = _gumbel_softmax(logits, self._temperature(epoch), generator)
            reconstruction = self.decoder_.nll(batch, self.latent_decoder_((y[..., None] * z).sum(-2)))
        return reconstruction + self._kl_weight(epoch) * kl

    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        """Train (and refine a learnable prior); with a mixture prior whose refined components include two
        closer than ``duplicate_distance``, train again from other random streams, at most ``restarts``
        times, and keep the attempt whose closest pair of components lies farthest apart."""
        voxels = voxel_batch(data, self.device_)
        statistics = input_statistics(voxels)
        if self.n_components == 1:
            return self._train_once(data, voxels, statistics, attempt=0)
        attempts: list[tuple[float, dict, dict]] = []
        for attempt in range(1 + self.restarts):
            history = self._train_once(data, voxels, statistics, attempt)
            separation = self._closest_components()
            attempts.append((separation, history, {k: v.clone() for k, v in self.network_.state_dict().items()}))
            if separation >= self.duplicate_distance:
                break
        if len(attempts) > 1:
            best = max(range(len(attempts)), key=lambda i: attempts[i][0])
            history = attempts[best][1]
            self.network_.load_state_dict(attempts[best][2])
            history["restart_kept"] = [best]
        history["closest_components"] = [separation for separation, _, _ in attempts]
        history |= self._repair_merged_components(data, voxels)
        return history

    def _train_once(
        self, data: PreparedData, voxels: VoxelBatch, statistics: tuple[np.ndarray, np.ndarray], attempt: int
    ) -> dict[str, list[float]]:
        """One training run, then the prior refinement; a restart (``attempt`` > 0) draws every random
        number of both (initial networks, held-out split, mini-batches, noise, importance samples) from
        the streams of its own seed, derived from ``seed``."""
        seed = self.seed
        if attempt:
            self.seed = stream_seed(seed, f"restart {attempt}")
        try:
            self._build(*statistics)
            self.reseeded_epochs_: list[int] = []
            mixture = self.n_components > 1
            history = train_estimator(self, voxels, self._loss, first_stop_epoch=self._first_stop_epoch,
                                      after_epoch=self._reseed_unused_component if mixture else None)
            if mixture:
                history["reseeded_epochs"] = list(self.reseeded_epochs_)
            if self.prior_.learnable:
                history["refinement_log_evidence"] = self._refine_prior(data)
        finally:
            self.seed = seed
        return history

    def _closest_components(self) -> float:
        """Smallest Bhattacharyya distance between two of the mixture prior's components, taken over the
        model's unconstrained parameters without S0 (where the latent space has the default size; in the
        latent space otherwise): two components of one tissue are a fit that training merged (see Notes
        of :class:`~varmap.estimators.gmvae.GMVAEEstimator`)."""
        with torch.no_grad():
            means, covariances = self.prior_.means.double(), self.prior_.covariances()
            weight = self.latent_decoder_.weight.double()
            if weight.shape[0] == weight.shape[1]:
                means = (means @ weight.T)[:, :-1]
                covariances = (weight @ covariances @ weight.T)[:, :-1, :-1]
            return float(min(bhattacharyya_distance(means[i], covariances[i], means[j], covariances[j])
                             for i in range(self.n_components) for j in range(i)))

    @torch.no_grad()
    def _repair_merged_components(self, data: PreparedData, voxels: VoxelBatch) -> dict[str, list[float]]:
        """Repair a refined mixture whose two components a voxel's observables tell apart least, by exact EM
        of a few components alone on a grid of the tissue parameters (models with at most two;
        :mod:`varmap.estimators.merged_components`).  Two moves are scored by the log evidence they add
        over a sample of the voxels (nats, each voxel weighted by its share of the components moved):

        - where the pair lies closer than ``merged_distance``, the pair refitted, from itself and from a
          split of it; made if it adds evidence to the learned prior;
        - where it lies closer than ``merge_split_distance``, the pair merged into one component and
          another component split in two (each other component tried; the number of components stays).
          The merge is scored against the pair refitted and the split against the component refitted
          alone, so that the move is not credited with what EM gains without it; made if the two add
          up to a gain, in place of the refit.

        Returns the history entries: ``closest_in_signals`` (the distance before, and after a move),
        ``merged_pair`` (the pair, the refit's gain, its EM steps) and ``merge_split`` (the pair, the
        component split, the merge's and the split's gains).  ``voxels`` are ``data``'s valid
        voxels as :func:`.voxel_batch` gives them."""
        weight, bias = self.latent_decoder_.weight.double(), self.latent_decoder_.bias.double()
        n_latent = weight.shape[1]
        if (not (self.merged_distance or self.merge_split_distance) or weight.shape[0] != n_latent
                or not 2 <= n_latent <= _GRID_DIMENSIONS + 1):
            return {}
        distance, i, j = self._closest_in_signals(voxels, weight, bias)
        history = {"closest_in_signals": [distance]}
        refit, merge_split = distance < self.merged_distance, distance < self.merge_split_distance
        if not (refit or merge_split):
            return history
        self.network_.eval()
        problem = self._grid_problems(data, voxels, weight, bias)
        pair = problem((i, j))
        if pair is None:
            return history
        refitted = max((pair.fit(start) for start in (pair.learned, split_start(pair.learned))),
                       key=lambda result: result.log_evidence)
        refit_gain = pair.gain(refitted)
        writes: list[tuple[tuple[int, ...], GridProblem, GridComponents]] = []
        if refit:
            history["merged_pair"] = [float(i), float(j), refit_gain, float(refitted.n_steps)]
            if refit_gain > 0.0:
                writes = [((i, j), pair, refitted.components)]
        if merge_split:
            # each part scored against the same components converged by the same EM, so that the move is
            # not credited with what EM alone gains over the learned prior
            merged = pair.fit(merged_start(pair.learned))
            merge = pair.gain(merged) - refit_gain
            splits = []
            for t in (k for k in range(self.n_components) if k not in (i, j)):
                single = problem((t,))
                if single is not None:
                    split = single.fit(split_start(single.learned))
                    splits.append((single.gain(split) - single.gain(single.fit(single.learned)), t, single, split))
            if splits:
                split_gain, t, single, split = max(splits, key=lambda candidate: candidate[0])
                history["merge_split"] = [float(i), float(j), float(t), merge, split_gain]
                if merge + split_gain > 0.0:
                    writes = [((i,), pair, merged.components), ((j, t), single, split.components)]
        if not writes:
            return history
        self._write_components(writes, weight, bias)
        history["closest_in_signals"].append(self._closest_in_signals(voxels, weight, bias)[0])
        return history

    def _grid_problems(
        self, data: PreparedData, voxels: VoxelBatch, weight: torch.Tensor, bias: torch.Tensor
    ) -> Callable[[tuple[int, ...]], GridProblem | None]:
        """Sample the posteriors of ``_GRID_VOXELS`` of ``data``'s voxels once, and return what builds the
        :class:`.GridProblem` of some components from them (None where fewer voxels than the
        refinement's EM needs to move a component hold a share of them)."""
        rows = np.sort(numpy_stream(self.seed, "merged pair voxels").permutation(data.n_valid)[:_GRID_VOXELS])
        batch = voxels.select(torch.as_tensor(rows, device=self.device_))
        responsibilities, s0_mean, s0_sd = [], [], []
        for samples in self._map_chunks(self._sample, batch, "merged pair", "merged pair"):
            weights = samples.summary_weights().double()
            s0 = (samples.z.double() @ weight.T + bias)[..., -1]  # S0's unconstrained coordinate
            mean = (weights * s0).sum(0)
            responsibilities.append((weights[..., None] * samples.responsibilities().double()).sum(0))
            s0_mean.append(mean)
            s0_sd.append((weights * (s0 - mean) ** 2).sum(0).sqrt())
        shares_all, s0_mean_all, s0_sd_all = (torch.cat(columns) for columns in (responsibilities, s0_mean, s0_sd))
        means = self.prior_.means.double() @ weight.T + bias  # (K, L): the unconstrained parameters, S0 last
        covariances = weight @ self.prior_.covariances() @ weight.T
        prior_weights = self.prior_.log_weights().double().exp()
        n_latent = weight.shape[1]

        def problem(components: tuple[int, ...]) -> GridProblem | None:
            index = list(components)
            share = shares_all[:, index].sum(-1)
            kept = torch.nonzero(share > _MIN_PAIR_SHARE)[:, 0]
            if kept.numel() <= n_latent + 1:
                return None
            relative = prior_weights[index] / prior_weights[index].sum()
            learned = GridComponents(relative, means[index, :-1], covariances[index, :-1, :-1])
            s0_prior_mean, s0_prior_variance = pooled(GridComponents(relative, means[index, -1:],
                                                                     covariances[index, -1:, -1:]))
            nodes, cell, floor = grid_nodes(learned, _GRID_NODES[n_latent - 1], _GRID_HALF_WIDTH)
            s0_nodes, s0_log_weights = s0_quadrature(s0_mean_all[kept], s0_sd_all[kept], s0_prior_mean[0],
                                                     s0_prior_variance[0, 0])
            likelihood = self._grid_likelihood(batch.select(kept.to(self.device_)), nodes, s0_nodes, s0_log_weights)
            return GridProblem(likelihood, share[kept], nodes, cell, floor, learned, float(prior_weights[index].sum()),
                               s0_prior_mean, s0_prior_variance, self.component_correlations == "none")

        return problem

    def _write_components(
        self, writes: list[tuple[tuple[int, ...], GridProblem, GridComponents]], weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        """Write grid-fitted components into the prior: for each (slots, problem, components), component
        ``slots[c]`` takes ``components``' c-th Gaussian, its share of ``problem.prior_share`` and the
        problem's S0 moments."""
        logits = self.prior_.log_weights().detach().double().clone()
        inverse = torch.linalg.inv(weight)
        for slots, problem, components in writes:
            for k, share, mean, covariance in zip(slots, components.weights, components.means, components.covariances):
                logits[k] = math.log(problem.prior_share * float(share))
                full = torch.block_diag(covariance, problem.s0_variance)
                self.prior_.set_component(k, inverse @ (torch.cat([mean, problem.s0_mean]) - bias),
                                          inverse @ full @ inverse.T)
        self.prior_.logits.copy_(logits.to(self.prior_.logits.dtype))

    def _closest_in_signals(
        self, voxels: VoxelBatch, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[float, int, int]:
        """:func:`.closest_pair` of the prior's components, for a voxel with the median b=0 signal and noise."""
        b0_mean, sigma = voxels.b0_mean.double().median(), voxels.sigma.double().median().reshape(1, 1)
        counts = self.decoder_.counts.double()

        def moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            predicted = self.decoder_.predict(nn.functional.linear(z, weight, bias), b0_mean)
            return observable_moments(predicted, sigma, counts, self.decoder_.likelihood)

        generator = torch_stream(self.seed, "signal distributions", self.device_)
        distributions = signal_distributions(moments, self.prior_.means.double(), self.prior_.scale_tril().double(),
                                             _SIGNAL_DRAWS, generator)
        return closest_pair(distributions)

    def _grid_likelihood(
        self, voxels: VoxelBatch, nodes: torch.Tensor, s0_nodes: torch.Tensor, s0_log_weights: torch.Tensor
    ) -> torch.Tensor:
        """Each voxel's likelihood (V, G) at the grid's tissue parameters ``nodes`` (G, T), its S0 coordinate
        integrated over ``s0_nodes`` (V, H) with ``s0_log_weights``, divided by its largest (float32).

        The likelihood is taken at each voxel's noise level as a point value: its stated uncertainty is not
        marginalised here, unlike in training and in the maps.  The grid EM deconvolves the components from
        these likelihoods, so every bit that widens them is taken off the components' spread; where σ was
        estimated from each voxel's residuals, its stated uncertainty is about twice its error with one
        noise level (7 % against 4 % on the ABCD-like protocol at b=0 SNR 5), and the errors it has are
        largely shared by the voxels, which widening each voxel's likelihood does not describe.  Measured
        there (seeds 0 and 1): grey matter's refitted K spread 0.07 -> 0.10 (the simulated voxels: 0.105),
        its K coverage 0.81 -> 0.92-0.93, all voxels' K 0.89 -> 0.94."""
        n_nodes, n_s0 = nodes.shape[0], s0_nodes.shape[1]
        step = max(1, _GRID_BUDGET // (n_nodes * n_s0 * self.model.n_observables))
        rows = []
        for start in range(0, voxels.n_voxels, step):
            chunk = voxels.select(slice(start, start + step))
            s0 = s0_nodes[start : start + step]
            codes = torch.cat([nodes[None, :, None, :].expand(len(s0), -1, n_s0, -1),
                               s0[:, None, :, None].expand(-1, n_nodes, -1, 1)], dim=-1)
            columns = [t.double()[:, None, None, :] for t in (chunk.observables, chunk.b0_mean, chunk.sigma)]
            log_likelihood = -self.decoder_.nll_of(columns[0], codes, *columns[1:])
            rows.append(torch.logsumexp(log_likelihood + s0_log_weights[start : start + step, None, :], dim=-1))
        log_likelihood = torch.cat(rows)
        return torch.exp(log_likelihood - log_likelihood.max(-1, keepdim=True).values).float()

    def _reseed_unused_component(self, epoch: int, train_voxels: VoxelBatch) -> bool:
        """Split the most used component into an unused one (see :class:`GMVAEEstimator`); true if done."""
        last = self.reseeded_epochs_[-1] if self.reseeded_epochs_ else -float("inf")
        if (
            epoch + 1 < self._first_stop_epoch
            or len(self.reseeded_epochs_) >= self.max_reseeds
            or epoch - last < max(1, self.patience // 2)
        ):
            return False
        with torch.no_grad():
            logits, mean, _ = self._encode(train_voxels.select(slice(0, _USAGE_VOXELS)))
            q_y = torch.softmax(logits, dim=-1)
            usage = q_y.mean(0)
            dead = int(torch.argmin(usage))
            if usage[dead] >= self.min_component_usage:
                return False
            donor = int(torch.argmax(usage))
            axis, spread = _principal_axis(mean[:, donor], q_y[:, donor])
            self.prior_.split_component(dead, donor, SPLIT_OFFSET * spread * axis)
            head = self.encoder_.head
            head.weight[self._head_rows(dead)] = head.weight[self._head_rows(donor)]
            head.bias[self._head_rows(dead)] = head.bias[self._head_rows(donor)]
        self.reseeded_epochs_.append(epoch)
        return True

    def _component_blocks(self) -> CovarianceBlocks | None:
        """The parameters that each refined prior component holds mutually uncorrelated: with
        ``component_correlations="none"`` every scalar parameter, the direction's three coordinates
        together, and S0; with ``"tissue"`` S0 apart from the tissue parameters (gmvae's default: the signal
        model's :attr:`~varmap.signal_models.base.SignalModel.component_correlations`).  None where the
        latent space does not have the default size (its coordinates are then not the parameters)."""
        weight = self.latent_decoder_.weight.detach()  # outputs: the unconstrained packed parameters, then S0
        if weight.shape[0] != weight.shape[1]:
            return None
        if self.component_correlations == "tissue":
            return CovarianceBlocks(weight, [0] * (weight.shape[0] - 1) + [1])
        n_scalars = self.model.n_scalars
        labels = list(range(n_scalars)) + [n_scalars] * (3 * self.model.has_direction)
        return CovarianceBlocks(weight, labels + [labels[-1] + 1])

    def _refine_prior(self, data: PreparedData) -> list[float]:
        """Empirical-Bayes refinement of the trained prior from importance-sampled posteriors of a random
        subset of voxels, with the correlations of :meth:`_component_blocks` held at zero within each
        component (:meth:`.GaussianMixturePrior.refit`); returns the log-evidence trace."""
        if not (self.refinement_rounds and self.refinement_steps):
            return []
        rows = np.sort(numpy_stream(self.seed, "refinement_voxels").permutation(data.n_valid)[: self.refinement_voxels])
        voxels = voxel_batch(data, self.device_, rows)
        evidence: list[float] = []
        blocks = self._component_blocks()
        self.network_.eval()
        with torch.no_grad():
            for round_ in range(self.refinement_rounds):
                parts = self._map_chunks(partial(self._sample, scale=self.refinement_proposal_scale), voxels,
                                         f"refinement/{round_}", "prior refinement")
                evidence += self.prior_.refit(
                    torch.cat([p.z for p in parts], dim=1),
                    torch.cat([p.log_likelihood for p in parts], dim=1),
                    torch.cat([p.log_proposal for p in parts], dim=1),
                    self.refinement_steps,
                    blocks,
                )
        return evidence

    # ------------------------------------------------------------------ inference
    def _map_chunks(
        self, function: Callable[[VoxelBatch, torch.Generator], T], voxels: VoxelBatch, stream: str, description: str
    ) -> list[T]:
        """``function(chunk, generator)`` over chunks of ``voxels`` (:func:`.neural.map_chunks`), each chunk
        drawing from its own random stream ``stream/<chunk>``."""
        # samples held per voxel: the adaptive rounds' pooled, or the mode search's two proposals
        n_held = self.n_posterior_samples * max(self.n_adaptive_rounds, 2)
        budget = _INFERENCE_BUDGET // (n_held * max(self.model.n_observables, 8))
        return map_chunks(
            lambda index, chunk: function(chunk, torch_stream(self.seed, f"{stream}/{index}", self.device_)),
            voxels, max(1, min(self.chunk_size, budget)), progress=self.progress, description=description,
        )

    def _posterior(
        self, batch: VoxelBatch, generator: torch.Generator, *, mode_search: bool, adaptive: bool = True,
        scale: float | None = None,
    ) -> PosteriorSamples:
        """Importance samples of the voxels' posteriors; ``mode_search`` adds the Laplace proposal,
        ``adaptive=False`` skips the adaptive rounds (the encoder's proposals only); ``scale`` widens the
        proposals (the prior refinement's; default ``proposal_scale``, the maps').  Where the rounds are
        pooled (:meth:`_pools_rounds`) and skipped, as many sets of encoder draws are pooled instead.
        """
        logits, mean, log_var = self._encode(batch)
        pool = self._pools_rounds(scale)
        sample = partial(
            sample_posterior, lambda z: self._log_likelihood(batch, z), self.prior_, logits, mean, log_var,
            n_samples=self.n_posterior_samples, scale=scale or self.proposal_scale,
            n_mode_steps=self.n_mode_steps if mode_search else 0, generator=generator, pool_rounds=pool,
        )
        if adaptive:
            return sample(n_adaptive_rounds=self.n_adaptive_rounds)
        return PosteriorSamples.pooled(
            [sample(n_adaptive_rounds=0) for _ in range(max(self.n_adaptive_rounds, 1) if pool else 1)])

    @staticmethod
    def _pools_rounds(scale: float | None) -> bool:
        """Whether samples drawn with widening ``scale`` pool every adaptive round: the maps' (``None``, the
        default ``proposal_scale``) do; the prior refinement's (its own widening) keep the last round's, as
        its EM was tuned on (pooling there too moved the learned prior: on the ABCD-like protocol at SNR 10
        free water's K coverage fell from 0.90 to 0.60)."""
        return scale is None

    def _infer(self, data: PreparedData) -> Estimates:
        """Maps of every voxel, in two passes over chunks: the proposals of :meth:`_sample` without the
        mode search, then the mode search (:meth:`_search_again`) on the voxels of all chunks left with
        fewer than ``min_effective_samples`` effective samples, gathered into chunks of their own (a few
        such voxels in every chunk would otherwise pay the search's fixed cost once per chunk)."""
        def summarised(sampler: Callable[[VoxelBatch, torch.Generator], PosteriorSamples]) -> Callable:
            def estimates(batch: VoxelBatch, generator: torch.Generator) -> tuple[Estimates, torch.Tensor]:
                samples = sampler(batch, generator)
                summary = self._summarise(samples)
                release_freed_memory()  # the chunks' temporaries otherwise fragment the heap
                return summary, self._last_proposal_ess(samples)
            return estimates

        self.network_.eval()
        voxels = voxel_batch(data, self.device_)
        with torch.no_grad():
            first = self._map_chunks(summarised(partial(self._sample, search=False)), voxels, "inference",
                                     f"{self.name} inference")
            estimates = Estimates.concatenate([summary for summary, _ in first])
            last_ess = torch.cat([ess for _, ess in first]).cpu().numpy()
            rows = np.flatnonzero(last_ess < self.min_effective_samples)
            if rows.size and not self._exact:
                again = self._map_chunks(summarised(self._search_again), voxels.select(torch.as_tensor(rows)),
                                         "inference/search", f"{self.name} mode search")
                estimates = estimates.with_rows(rows, Estimates.concatenate([summary for summary, _ in again]))
            if self.prior_.learnable and self.prior_uncertainty:
                self._add_prior_uncertainty(voxels, estimates, data.sigma_shared_log_sd)
        return estimates

    def _add_prior_uncertainty(self, voxels: VoxelBatch, estimates: Estimates, shared_log_sd: float) -> None:
        """Widen ``estimates.std`` (scalar parameters, in place) by the uncertainty of the learned
        components' means (:mod:`varmap.estimators.prior_uncertainty`): the voxels' information about
        the means, summed over every voxel at its posterior mean, then each voxel's share of it.
        ``shared_log_sd``: the error of the noise level shared by all voxels (0 where it was given),
        whose pull on the means joins their covariance."""
        if not len(estimates.S0):
            return
        covariances = self.prior_.covariances()
        weight, bias = self.latent_decoder_.weight.double(), self.latent_decoder_.bias.double()
        # the means' hyperprior: anywhere in the physical range, as the latent codes whose unconstrained
        # images are logistic-like N(0, π²/3) (a uniform value in a bounded range, through the sigmoid)
        inverse = torch.linalg.pinv(weight)
        hyperprior = (math.pi**2 / 3.0) * inverse @ inverse.T
        counts = self.decoder_.counts.double()
        n_scalars = self.model.n_scalars
        packed = torch.as_tensor(estimates.packed, device=self.device_)
        S0 = torch.as_tensor(estimates.S0, device=self.device_)[:, None]
        probs = estimates.cluster_probs if estimates.cluster_probs is not None else np.ones((len(S0), 1))
        responsibilities = torch.as_tensor(probs, device=self.device_)

        def moments_of(rows: slice) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
            batch = voxels.select(rows)
            b0_mean, sigma = batch.b0_mean.double(), batch.sigma.double()

            def moments(z: torch.Tensor, log_noise_scale: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
                predicted = self.decoder_.predict(nn.functional.linear(z, weight, bias), b0_mean)
                return observable_moments(predicted, sigma * math.exp(log_noise_scale), counts, self.decoder_.likelihood)

            return moments

        chunks = [slice(start, start + self.chunk_size) for start in range(0, len(S0), self.chunk_size)]
        codes = [self._latent_codes_of(packed[rows], S0[rows]).double() for rows in chunks]
        informations = [latent_fisher_information(moments_of(rows), z) for rows, z in zip(chunks, codes)]
        information = sum(mean_information(f, responsibilities[rows], covariances) for f, rows in zip(informations, chunks))
        means_covariance = mean_covariance(information, hyperprior)
        if shared_log_sd > 0:
            score = sum(
                mean_noise_score(f, latent_noise_score(moments_of(rows), z), responsibilities[rows], covariances)
                for rows, z, f in zip(chunks, codes, informations))
            means_covariance = means_covariance + shared_noise_covariance(means_covariance, score, shared_log_sd)
        added = []
        for rows, z, f in zip(chunks, codes, informations):
            derivative = jacobian(
                lambda c: self.decoder_.parameters_of(nn.functional.linear(c, weight, bias))[0][..., :n_scalars], z)
            covariance = added_covariance(f, responsibilities[rows], covariances, means_covariance)
            added.append(torch.einsum("bml,blk,bmk->bm", derivative, covariance, derivative))
        variance = torch.cat(added).clamp_min(0.0).cpu().numpy()
        for i, name in enumerate(self.model.parameter_names):
            estimates.std[name] = np.sqrt(estimates.std[name] ** 2 + variance[:, i])

    @property
    def _exact(self) -> bool:
        """Whether every voxel gets the mode search and the adaptive rounds (see :meth:`_sample`)."""
        return self.inference == "exact" or not (self.n_mode_steps and self.n_adaptive_rounds)

    def _sample(
        self, batch: VoxelBatch, generator: torch.Generator, *, search: bool = True, scale: float | None = None
    ) -> PosteriorSamples:
        """Importance samples of a chunk's posteriors, for the maps and the prior refinement.

        ``inference="fast"``: samples from the encoder's proposals and the adaptive rounds; with
        ``search``, the voxels left with fewer than ``min_effective_samples`` effective samples (a
        posterior narrower than, or away from, what the encoder proposes) are sampled again by
        :meth:`_search_again`.  With ``target_effective_samples`` set, a voxel whose samples from the
        encoder's proposals alone leave at least that many effective samples keeps them and skips the
        adaptive rounds.  ``"exact"``, or no adaptive rounds (the mode search then returns more samples
        than the first pass): :meth:`_search_again` in every voxel.  ``scale`` widens every proposal
        (default ``proposal_scale``); both thresholds, meant for ``proposal_scale``, are then scaled by
        what the other widening alone does to the effective sample size (:func:`.widening_efficiency`):
        MS-DKI's prior refinement's proposals, 2.5x wide, leave about 10 of 64 effective samples where they
        fit the posterior, and searching every voxel below 32 made their sampling 4-7x as slow as the
        first pass alone, for as many effective samples.
        """
        search_again = partial(self._search_again, scale=scale)
        if self._exact:
            return search_again(batch, generator)
        factor, default_efficiency = 1.0, widening_efficiency(self.proposal_scale, self.latent_size)
        if scale is not None and default_efficiency > 0.0:
            factor = widening_efficiency(scale, self.latent_size) / default_efficiency
        gated = self.target_effective_samples is not None
        samples = self._posterior(batch, generator, mode_search=False, adaptive=not gated, scale=scale)
        gated_rounds = partial(self._posterior, mode_search=False, scale=scale)
        steps = ((self.target_effective_samples, gated_rounds),) if gated else ()
        if search:
            steps = (*steps, (self.min_effective_samples, search_again))
        for threshold, sampler in steps:
            rows = torch.nonzero(self._last_proposal_ess(samples) < factor * threshold)[:, 0]
            if rows.numel():
                samples = samples.with_voxels(rows, sampler(batch.select(rows), generator))
        return samples

    def _search_again(
        self, batch: VoxelBatch, generator: torch.Generator, scale: float | None = None
    ) -> PosteriorSamples:
        """Samples from the encoder's proposals, a Laplace approximation at each voxel's posterior mode and
        the adaptive rounds; voxels whose weights still collapse restart (:meth:`_restart_collapsed`)."""
        samples = self._posterior(batch, generator, mode_search=True, scale=scale)
        return self._restart_collapsed(batch, samples, generator, scale)

    def _restart_collapsed(
        self, batch: VoxelBatch, samples: PosteriorSamples, generator: torch.Generator, scale: float | None = None
    ) -> PosteriorSamples:
        """Voxels whose importance weights collapsed (effective sample size below :data:`~varmap.estimators.posterior.COLLAPSED_ESS`:
        every proposal and the mode search missed a posterior narrower than they are, and the std would be
        near 0 whatever the error) search again from their voxelwise least-squares fit
        (:meth:`.NLLSEstimator.fit_observables`) mapped into the latent space: mode search, Laplace
        proposal and adaptive rounds from there.  A voxel keeps the new samples where their best log
        posterior is higher than its old samples' best; a model without a least-squares starting rule
        keeps its samples."""
        rows = torch.nonzero(self._last_proposal_ess(samples) < COLLAPSED_ESS)[:, 0]
        if not (rows.numel() and self.n_mode_steps and self.model.name in INITIALISERS):
            return samples
        voxels = batch.select(rows)
        packed, S0_per_b0 = NLLSEstimator(self.model).fit_observables(voxels.observables)
        start = self._latent_codes_of(packed, S0_per_b0 * voxels.b0_mean.double())
        again = sample_posterior(
            lambda z: self._log_likelihood(voxels, z), self.prior_, torch.zeros_like(start[:, :1]), start[:, None, :],
            torch.full_like(start[:, None, :], 2.0 * math.log(_RESTART_SPREAD)), n_samples=self.n_posterior_samples,
            scale=scale or self.proposal_scale, n_mode_steps=self.n_mode_steps,
            n_adaptive_rounds=self.n_adaptive_rounds, generator=generator, pool_rounds=self._pools_rounds(scale),
        )
        better = torch.nonzero(again.best_log_joint() > samples.select_voxels(rows).best_log_joint())[:, 0]
        return samples.with_voxels(rows[better], again.select_voxels(better)) if better.numel() else samples

    def _last_proposal_ess(self, samples: PosteriorSamples) -> torch.Tensor:
        """Each voxel's effective sample size among the samples of its last proposal (the last
        ``n_posterior_samples``), shape (B,): how well that proposal fits the posterior, which the gates of
        the adaptive rounds, the mode search and the restart read.  With the maps' rounds pooled, the
        pool's effective sample size is larger while both rounds may miss a narrow posterior alike
        (measured on the study's SNR-50 data: gated on the pool's, free water's D coverage fell from
        0.936 to 0.895)."""
        return effective_sample_size(samples.last(self.n_posterior_samples).weights())

    def _latent_codes_of(self, packed: torch.Tensor, S0: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, L) that the linear latent decoder maps closest (least squares, unconstrained
        space) to packed parameters (B, n_packed) and S0 in reference units (B, 1)."""
        target = torch.cat([self.model.unconstrain(packed), S0_PER_SCALE.to_unconstrained(S0)], dim=-1)
        weight, bias = self.latent_decoder_.weight.double(), self.latent_decoder_.bias.double()
        codes = torch.linalg.lstsq(weight, (target - bias).T).solution.T
        return codes.to(self.latent_decoder_.weight.dtype)

    def _summarise(self, samples: PosteriorSamples) -> Estimates:
        """Posterior means, standard deviations and component probabilities of weighted samples."""
        weights = samples.summary_weights()
        packed, S0 = self.decoder_.parameters_of(self.latent_decoder_(samples.z))
        packed = packed.double()
        w = weights[..., None]
        n_scalars = self.model.n_scalars
        scalars = packed[..., :n_scalars]
        mean = (w * scalars).sum(0)
        std = posterior_spread(scalars, mean, weights)
        std_maps = {name: std[:, i].cpu().numpy() for i, name in enumerate(self.model.parameter_names)}
        if self.model.has_direction:
            direction, spread = weighted_mean_axis(packed[..., n_scalars : n_scalars + 3], weights)
            mean = torch.cat([mean, direction], dim=-1)
            std_maps["n"] = spread.cpu().numpy()
        cluster_probs = None
        if self.prior_.n_components > 1:
            responsibilities = samples.responsibilities().double()
            cluster_probs = (w * responsibilities).sum(0).cpu().numpy()
        return Estimates(
            packed=mean.cpu().numpy(),
            S0=(weights * S0.double()[..., 0]).sum(0).cpu().numpy(),
            std=std_maps,
            cluster_probs=cluster_probs,
            effective_samples=effective_sample_size(weights).cpu().numpy(),
        )

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return network_state(self.network_)

    def _load_state(self, state: dict) -> None:
        self._build(*untrained_input_statistics(self.model))
        self.network_.load_state_dict(state["network"])


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
