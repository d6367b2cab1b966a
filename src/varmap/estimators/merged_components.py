"""Prior components that no voxel's signals tell apart, and their repair by exact EM on a grid.

At low SNR on short protocols, training can end with two mixture components that each span two
tissues (white and grey matter, each component across both, with D and K strongly anticorrelated).
In the tissue parameters they lie apart (Bhattacharyya distance 0.35-1.03 in the unconstrained
parameters on the clinical protocol at SNR 5, seeds 0-4), so the restarts on duplicate components do
not see them; in what they predict a voxel measures they are one component: the distance between the
two components' distributions of one voxel's observables (noise included) is 0.010-0.053, where the
true white and grey matter of the same data lie 0.81 apart.  Such a prior ties K to D, and K's
intervals come out too narrow.  Training can also spend two components on what one describes (free
water, whose signal has decayed into the noise floor) and leave one component across two tissues.
:func:`signal_distributions` and :func:`closest_pair` find the pair that the signals tell apart least.

The refinement's EM on importance samples does not leave such a prior: its few effective samples per
voxel bias the fixed point, and it moves slowly along the directions that separate the tissues.  Where
the tissue parameters are at most two, each voxel's likelihood is computed once on a shared grid of them
(S0 integrated by quadrature, :func:`s0_quadrature`; σ taken as a point value), and EM of one or two
components alone (:func:`grid_em`, a partial EM as in Ueda et al.'s split-and-merge EM: every other
component and each voxel's share of the components refitted stay fixed) runs to convergence without
sampling error.  Two moves are scored by the log evidence they change (:func:`grid_log_evidence`): the
pair refitted, from itself and from a split of it (:func:`split_start`), and the pair merged into one
component while another is split in two, which keeps the number of components.

References
----------
Ueda N, Nakano R, Ghahramani Z, Hinton GE (2000) SMEM algorithm for mixture models. Neural Comput.
12:2109-2128.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from .priors import bhattacharyya_distance

__all__ = [
    "GridComponents", "GridFit", "GridProblem", "signal_distributions", "closest_pair", "grid_nodes", "pooled",
    "merged_start", "split_start", "grid_log_evidence", "grid_em", "s0_quadrature", "SPLIT_OFFSET",
]

#: Share of a component's principal spread by which a split places each half from the centre
#: (:func:`split_start`, and the re-seeding of unused components in training).
SPLIT_OFFSET = 0.8


class GridComponents(NamedTuple):
    """One or more Gaussian components over the grid's coordinates (C components).

    Attributes
    ----------
    weights : Tensor, shape (C,)
        Shares of the components, summing to one.
    means : Tensor, shape (C, T)
    covariances : Tensor, shape (C, T, T)
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor


class GridFit(NamedTuple):
    """The outcome of :func:`grid_em`: the components, their mean log evidence per voxel (up to the
    voxels' likelihood shifts) and the EM steps taken."""

    components: GridComponents
    log_evidence: float
    n_steps: int


@dataclass(frozen=True)
class GridProblem:
    """Some of a mixture prior's components, refitted alone on a grid of the tissue parameters.

    Attributes
    ----------
    likelihood : Tensor, shape (V, G)
        Each voxel's likelihood at the nodes, divided by its largest.
    voxel_weights : Tensor, shape (V,)
        Each voxel's share of the components.
    nodes : Tensor, shape (G, T)
    cell : float
    floor : Tensor, shape (T, T)
        See :func:`grid_nodes`.
    learned : GridComponents
        The components as the refinement left them, their weights relative to each other.
    prior_share : float
        Their total weight in the mixture.
    s0_mean, s0_variance : Tensor, shape (1,) and (1, 1)
        Their pooled moments of S0's coordinate, which every refitted component takes.
    diagonal : bool
        Covariances held diagonal.
    """

    likelihood: torch.Tensor
    voxel_weights: torch.Tensor
    nodes: torch.Tensor
    cell: float
    floor: torch.Tensor
    learned: GridComponents
    prior_share: float
    s0_mean: torch.Tensor
    s0_variance: torch.Tensor
    diagonal: bool

    def fit(self, start: GridComponents) -> GridFit:
        """:func:`grid_em` from ``start`` (which may hold another number of components than ``learned``)."""
        return grid_em(self.likelihood, self.voxel_weights, self.nodes, self.cell, start, self.floor,
                       diagonal=self.diagonal)

    @cached_property
    def learned_log_evidence(self) -> float:
        """:func:`grid_log_evidence` of ``learned``."""
        return grid_log_evidence(self.likelihood, self.voxel_weights, self.learned, self.nodes, self.cell)

    def gain(self, fit: GridFit) -> float:
        """Log evidence (nats, summed over the voxels by their weights) that ``fit`` adds to ``learned``'s."""
        return (fit.log_evidence - self.learned_log_evidence) * float(self.voxel_weights.sum())


def signal_distributions(
    moments: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    means: torch.Tensor,
    scale_tril: torch.Tensor,
    n_draws: int,
    generator: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and covariance of one voxel's observables under each prior component.

    Parameters
    ----------
    moments : callable
        Maps latent codes (N, L) to the mean and variance (N, n_observables) of a typical voxel's
        observables (noise included).
    means, scale_tril : Tensor, shape (K, L) and (K, L, L)
        The components' means and Cholesky factors.
    n_draws : int
        Draws per component.
    generator : torch.Generator

    Returns
    -------
    list of (mean, covariance)
        Per component: the observables' mean (n_observables,) and covariance, the spread of the mean over
        the component plus the average noise variance.
    """
    out = []
    for mean, tril in zip(means, scale_tril):
        noise = torch.randn(n_draws, mean.shape[0], generator=generator, dtype=mean.dtype, device=mean.device)
        observed, variance = moments(mean + noise @ tril.T)
        out.append((observed.mean(0), torch.cov(observed.T) + torch.diag(variance.mean(0))))
    return out


def closest_pair(distributions: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int, int]:
    """The smallest Bhattacharyya distance between two of :func:`signal_distributions`' Gaussians, and
    the two components' indices (i < j)."""
    return min(
        (bhattacharyya_distance(*distributions[i], *distributions[j]), i, j)
        for j in range(len(distributions)) for i in range(j)
    )


def grid_nodes(
    components: GridComponents, n_per_axis: int, half_width: float
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """A regular grid over the components' moment-matched Gaussian, ``half_width`` standard deviations either
    side of its mean along every axis.

    Returns
    -------
    nodes : Tensor, shape (n_per_axis**T, T)
    cell : float
        Volume of one grid cell.
    floor : Tensor, shape (T, T)
        The variance of a uniform spread over one cell (h²/12 per axis), added to every covariance the
        grid EM estimates so that a component cannot shrink onto one node.
    """
    mean, covariance = pooled(components)
    half = half_width * covariance.diagonal().sqrt()
    axes = [torch.linspace(float(m - h), float(m + h), n_per_axis, dtype=mean.dtype, device=mean.device)
            for m, h in zip(mean, half)]
    steps = torch.stack([axis[1] - axis[0] for axis in axes])
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    return nodes, float(steps.prod()), torch.diag(steps**2 / 12.0)


def pooled(components: GridComponents) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (T,) and covariance (T, T) of the components' mixture."""
    mean = components.weights @ components.means
    offsets = components.means - mean
    covariance = torch.einsum("c,cij->ij", components.weights,
                              components.covariances + offsets[:, :, None] * offsets[:, None, :])
    return mean, covariance


def merged_start(components: GridComponents) -> GridComponents:
    """One component: the components' moment-matched Gaussian."""
    mean, covariance = pooled(components)
    return GridComponents(torch.ones(1, dtype=mean.dtype, device=mean.device), mean[None], covariance[None])


def split_start(components: GridComponents) -> GridComponents:
    """Two halves of the components' mixture, ∓ 0.8 standard deviations along its principal axis, each
    with the mixture's covariance less the part that the split's offset explains."""
    mean, covariance = pooled(components)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    offset = SPLIT_OFFSET * eigenvalues[-1].sqrt() * eigenvectors[:, -1]
    within = covariance - torch.outer(offset, offset)
    half = torch.tensor([0.5, 0.5], dtype=mean.dtype, device=mean.device)
    return GridComponents(half, torch.stack([mean - offset, mean + offset]), torch.stack([within, within]))


def _prior_on_grid(components: GridComponents, nodes: torch.Tensor, cell: float) -> torch.Tensor:
    """Each component's probability mass at every node, weight included, shape (C, G)."""
    difference = nodes[None] - components.means[:, None, :]  # (C, G, T)
    solved = torch.linalg.solve(components.covariances[:, None], difference[..., None])[..., 0]
    log_density = -0.5 * ((difference * solved).sum(-1)
                          + torch.logdet(2.0 * math.pi * components.covariances)[:, None])
    return components.weights[:, None] * torch.exp(log_density) * cell


def grid_log_evidence(
    likelihood: torch.Tensor, voxel_weights: torch.Tensor, components: GridComponents, nodes: torch.Tensor,
    cell: float,
) -> float:
    """Mean over voxels (weighted) of log Σ_g L_vg p(g) under the components, with ``likelihood`` (V, G) each
    voxel's likelihood at the nodes relative to its largest."""
    prior = _prior_on_grid(components, nodes, cell).sum(0).to(likelihood.dtype)
    evidence = torch.log((likelihood @ prior).double().clamp_min(1e-300))
    return float((voxel_weights * evidence).sum() / voxel_weights.sum())


def grid_em(
    likelihood: torch.Tensor,
    voxel_weights: torch.Tensor,
    nodes: torch.Tensor,
    cell: float,
    start: GridComponents,
    floor: torch.Tensor,
    *,
    diagonal: bool = False,
    max_steps: int = 2000,
    tolerance: float = 1e-7,
) -> GridFit:
    """EM of Gaussian components (as many as ``start`` holds) whose voxels' likelihoods are held on a grid.

    Parameters
    ----------
    likelihood : Tensor, shape (V, G)
        Each voxel's likelihood at every node, divided by its largest (float32 suffices).
    voxel_weights : Tensor, shape (V,)
        Each voxel's share of the components (its posterior probability of belonging to any of them).
    nodes : Tensor, shape (G, T)
    cell : float
        Volume of one grid cell.
    start : GridComponents
    floor : Tensor, shape (T, T)
        Added to every estimated covariance (:func:`grid_nodes`).
    diagonal : bool
        Keep the covariances diagonal (components whose coordinates are held uncorrelated).
    max_steps : int
    tolerance : float
        Stop once a step raises the mean log evidence per voxel by less than this.

    Returns
    -------
    GridFit
    """
    components, previous = start, -math.inf
    weights = voxel_weights.to(likelihood.dtype)
    total = float(voxel_weights.sum())
    for step in range(1, max_steps + 1):
        prior = _prior_on_grid(components, nodes, cell)  # (C, G)
        evidence = likelihood @ prior.sum(0).to(likelihood.dtype)
        log_evidence = float((voxel_weights * torch.log(evidence.double().clamp_min(1e-300))).sum()) / total
        # node masses of each component, summed over voxels: p_c(g) Σ_v w_v L_vg / Z_v
        mass = prior * (likelihood.T @ (weights / evidence.clamp_min(1e-30))).to(prior.dtype)
        totals = mass.sum(-1)
        means = (mass @ nodes) / totals[:, None]
        offsets = nodes[None] - means[:, None, :]
        covariances = torch.einsum("cg,cgi,cgj->cij", mass, offsets, offsets) / totals[:, None, None] + floor
        if diagonal:
            covariances = torch.diag_embed(covariances.diagonal(dim1=-2, dim2=-1))
        components = GridComponents(totals / totals.sum(), means, covariances)
        if log_evidence - previous < tolerance:
            break
        previous = log_evidence
    return GridFit(components, grid_log_evidence(likelihood, voxel_weights, components, nodes, cell), step)


def s0_quadrature(
    posterior_mean: torch.Tensor, posterior_sd: torch.Tensor, prior_mean: torch.Tensor, prior_variance: torch.Tensor,
    n_nodes: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and log weights that integrate a voxel's likelihood over its S0 coordinate against the
    prior N(prior_mean, prior_variance): Gauss-Hermite nodes of the voxel's posterior widened 1.5-fold,
    weighted by prior over proposal density.

    Parameters
    ----------
    posterior_mean, posterior_sd : Tensor, shape (V,)
    prior_mean, prior_variance : Tensor, shape ()

    Returns
    -------
    nodes, log_weights : Tensor, shape (V, n_nodes)
    """
    unit_nodes, unit_weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    unit = torch.as_tensor(unit_nodes, dtype=posterior_mean.dtype, device=posterior_mean.device)
    spread = 1.5 * posterior_sd.clamp_min(1e-3)[:, None]
    nodes = posterior_mean[:, None] + spread * unit
    log_proposal = -0.5 * unit**2 - torch.log(spread) - 0.5 * math.log(2.0 * math.pi)
    log_prior = -0.5 * (nodes - prior_mean) ** 2 / prior_variance - 0.5 * torch.log(2.0 * math.pi * prior_variance)
    log_unit = torch.log(torch.as_tensor(unit_weights / unit_weights.sum(), dtype=nodes.dtype, device=nodes.device))
    return nodes, log_unit + log_prior - log_proposal
