"""VAE with a learnable Gaussian-mixture prior (VAE-GMM) whose components learn tissue types."""

from __future__ import annotations

from typing import Any

from ..signal_models.base import SignalModel
from .posterior import widening_efficiency, widening_for_efficiency
from .priors import GaussianMixturePrior
from .variational import VariationalEstimator

__all__ = ["GMVAEEstimator", "REFINEMENT_EFFICIENCY"]

#: Effective samples per sample that the prior refinement's widened proposals leave from the widening
#: alone (:func:`~varmap.estimators.posterior.widening_efficiency`): that of the 2.5-fold widening chosen
#: on MS-DKI's three latent dimensions, kept at other latent sizes (ball-and-stick's seven: 1.66-fold).
#: The same 2.5-fold widening in seven dimensions leaves about 1 effective sample of 64, and EM on the
#: samples then gives the prior's components the proposals' correlations.
REFINEMENT_EFFICIENCY = widening_efficiency(2.5, 3)


class GMVAEEstimator(VariationalEstimator):
    """Variational autoencoder with a Gaussian-mixture prior p(y) = Cat(π), p(z|y=k) = N(μ_k, Σ_k).

    The encoder outputs class logits of q(y|s) and, for every component k, the mean and log-variance of
    q(z|s, y=k); the KL term is taken against each component's own learnable Gaussian (not a single
    standard normal).  Options: ``varmap.estimators.options.OPTIONS["gmvae"]``.

    Notes
    -----
    Mixture components can die: early in training one component may reconstruct everything a little
    better, take over q(y|s) for two tissues, and leave another component unused with p(y=k) → 0; nothing
    then brings it back, and two tissues share one broad Gaussian prior.  After the warm-up, an unused
    component (share of the training voxels, the mean of q(y|s), below ``min_component_usage``) is
    therefore re-seeded by splitting the most used one (as in split-and-merge EM): both get half its
    weight and its encoder head, and their prior means move ±0.8 standard deviations apart along the
    principal axis of that component's posterior means over the training voxels.  Training then decides
    whether the split stays.  At most ``max_reseeds`` splits, one per ``patience // 2`` epochs; the
    epochs are listed in ``history["reseeded_epochs"]``.  For the reconstruction term, y is drawn with
    the Gumbel-softmax relaxation at a temperature annealed from ``temperature[0]`` to ``temperature[1]``
    (``y_sampler="gumbel"``), or summed exactly over the K components (``y_sampler="enumerate"``).

    Gradient training fits the prior only as far as the ELBO's gradients move it, which is slowly where
    the data pin a direction down (at high SNR, an S0 shared by all voxels shows as a prior several times
    wider than the noise of one voxel's S0).  After training, the prior is therefore refined by empirical
    Bayes: ``refinement_rounds`` times, the posteriors of ``refinement_voxels`` random voxels are drawn by
    importance sampling (as at inference, with every proposal widened by ``refinement_proposal_scale``
    instead of ``proposal_scale``, by default the widening that leaves :data:`REFINEMENT_EFFICIENCY`
    effective samples per sample: the M-step sets each component's covariance from these samples, and
    proposals that miss the posteriors' tails narrow the prior round after round, most along directions
    the data pin down weakly; the mode search's threshold scaled by what the wider proposals cost in
    effective samples alone, :func:`~varmap.estimators.posterior.widening_efficiency`) and
    ``refinement_steps`` EM steps set the mixture weights, means and full covariances to the
    maximum-marginal-likelihood values for those samples, with S0 uncorrelated with the tissue parameters
    within each component (a correlation the data cannot resolve where S0 varies less than one voxel's b=0
    noise, and which narrows the other parameters' posteriors), and with ``component_correlations="none"``
    (ball-and-stick's default) every tissue parameter uncorrelated with the others too
    (:meth:`~varmap.estimators.priors.GaussianMixturePrior.refit`); encoder and decoder stay fixed.  The
    importance-sampling estimate of the mean log evidence per voxel before each step is in
    ``history["refinement_log_evidence"]``.  Maps and cluster probabilities are posterior means and
    posterior component probabilities under the refined prior.

    Training can also end with two components on one tissue: at low SNR, where one voxel's signals
    barely tell two nearby tissues apart, the ELBO's gradients merge them early, and neither the
    re-seeding (both components stay in use) nor the refinement (two identical components are a fixed
    point of EM) pulls them apart; a Gaussian fitted across two clusters then ties one parameter to the
    other and the posteriors come out too narrow.  After the refinement, the smallest Bhattacharyya
    distance between two components (over the model's unconstrained parameters, S0 left out) is
    therefore checked: below ``duplicate_distance``, the network is trained and the prior refined again,
    every random number drawn from the streams of a seed derived from ``seed``, at most ``restarts``
    times, and the attempt whose closest pair of components lies farthest apart is kept.  The distance
    of every attempt is in ``history["closest_components"]``, the kept attempt's index in
    ``history["restart_kept"]`` where there was more than one.

    Two components can also lie apart in the parameters yet predict what a voxel measures alike: at SNR 5
    on short protocols both tissue components each span white and grey matter, anticorrelated in D and K.
    The kept prior's two components whose distributions of one voxel's observables (noise included) lie
    closest are therefore compared too: below ``merged_distance`` (a Bhattacharyya distance; the true
    white and grey matter of the clinical protocol at SNR 5 lie 0.81 apart, merged pairs 0.01-0.06), and
    where the model has at most two tissue parameters, that pair alone is refitted by EM on a grid of
    them, every voxel's likelihood computed once with S0 integrated by quadrature and σ taken as a point
    value (a marginalised uncertainty of σ would be taken off the components' spread), from the learned pair
    and from a split of it, and the result is kept where its evidence is higher
    (:mod:`~varmap.estimators.merged_components`; ``history["closest_in_signals"]``, before and after,
    and ``history["merged_pair"]``).  Training can also spend two components on what one describes (two
    on free water) and leave one across both tissues.  Where the closest pair lies below
    ``merge_split_distance``, merging it into one component while splitting another in two (each other
    component tried; the same grid EM, every other component fixed) is scored too, by the log evidence
    the merge loses plus what the split gains (``history["merge_split"]``); the move that adds more
    evidence, the refit or this one, is made if it adds any.

    The refined prior is an estimate, and the maps' posteriors treat it as known.  With
    ``prior_uncertainty`` (the default) each voxel's std also carries the uncertainty of the components'
    means (Kass and Steffey's first-order correction, :mod:`~varmap.estimators.prior_uncertainty`): the
    information the voxels hold about each mean, from the linearised model's expected information at
    every voxel's posterior mean, inverted, and passed to each voxel in the measure its own data leave
    its posterior to the prior.  Where the data place a component firmly (tissue: thousands of voxels
    each informative) it adds almost nothing; where they place it loosely it widens the intervals of
    that component's voxels.  Free water at b >= 1000 s/mm² is the case: once its signal has decayed into
    the noise floor its D and K enter the data only through D - D²K/6, the refinement leaves the
    component wherever training put it along that ridge, and its voxels' posteriors are the component.
    The maps themselves (posterior means) do not change.
    """

    name = "gmvae"
    prior_class = GaussianMixturePrior

    def __init__(self, model: SignalModel, **options: Any) -> None:
        super().__init__(model, **options)
        # defaults resolved here, so that the config records the values used
        if self.component_correlations is None:
            self.component_correlations = model.component_correlations
        if self.refinement_proposal_scale is None:
            self.refinement_proposal_scale = widening_for_efficiency(REFINEMENT_EFFICIENCY, self.latent_size)
