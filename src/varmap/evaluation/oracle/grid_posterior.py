"""Posterior moments of a two-parameter model, cluster by cluster, on adaptively refined grids."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...simulation import ClusterPrior
from .common import DTYPE

__all__ = ["combine_clusters", "grid_posterior"]

# Grid points this many nats below a posterior's maximum carry no weight that matters (e^-25 ≈ 1e-11).
_DEPTH = 25.0

#: ``log_likelihood(theta, voxels)``: grids (n_rows, M, 2) and their voxels (n_rows,) -> (n_rows, M).
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grid_posterior(
    log_likelihood: LogLikelihood,
    prior: ClusterPrior,
    *,
    n_voxels: int,
    n_grid: int,
    max_refinements: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per-cluster posterior moments and log evidence of a two-parameter model on refined grids.

    Works on flat (voxel, cluster) pairs and refines only the pairs that have not converged; the
    refinement and convergence rules are described in :func:`~varmap.evaluation.msdki_oracle`.

    Parameters
    ----------
    log_likelihood : callable
        ``log_likelihood(theta, voxels)`` returns the log-likelihood, shape (n_rows, M), of grids
        ``theta`` (n_rows, M, 2) for the voxels ``voxels`` (n_rows,).
    prior : ClusterPrior
        Two-parameter prior; each cluster's term is integrated apart.
    n_voxels : int
        Number of voxels ``log_likelihood`` knows.
    n_grid : int
        Points per axis of every grid.
    max_refinements : int
        Largest number of refinement levels after the first grid.

    Returns
    -------
    mean : Tensor, shape (n_voxels, K, 2)
    cov : Tensor, shape (n_voxels, K, 2, 2)
    log_evidence : Tensor, shape (n_voxels, K)
        log ∫ p_k(θ) L(θ) dθ.
    n_refinements : int
        Refinement levels used.

    Raises
    ------
    RuntimeError
        If some pairs have not converged after ``max_refinements`` levels.
    """
    n_clusters = prior.n_clusters
    grid = _UnitGrid.make(n_grid)
    n_pairs = n_voxels * n_clusters
    centre, axes = _first_windows(prior, n_pairs)
    mean = torch.empty(n_pairs, 2, dtype=DTYPE)
    cov = torch.empty(n_pairs, 2, 2, dtype=DTYPE)
    log_z = torch.empty(n_pairs, dtype=DTYPE)
    growth = torch.ones(n_pairs, dtype=DTYPE)
    converged = torch.zeros(n_pairs, dtype=torch.bool)
    active = torch.arange(n_pairs)
    for level in range(max_refinements + 1):
        found = _evaluate(log_likelihood, prior, grid, active, centre[active], axes[active], growth[active])
        for store, value in zip((mean, cov, log_z, centre, axes, growth, converged), found):
            store[active] = value
        if level > 0:
            # Every pair refines to convergence: the evidence of an unresolved grid can be too low by
            # hundreds of nats, so it cannot tell which clusters are negligible.
            active = torch.nonzero(~converged)[:, 0]
            if active.numel() == 0:
                shape = (n_voxels, n_clusters)
                return mean.view(*shape, 2), cov.view(*shape, 2, 2), log_z.view(shape), level
    raise RuntimeError(
        f"the MS-DKI oracle's grids did not converge in {max_refinements} refinements for "
        f"{active.numel()} (voxel, cluster) pairs; raise max_refinements or n_grid."
    )


@dataclass(frozen=True)
class _UnitGrid:
    """The ``n_grid`` × ``n_grid`` grid on [-1, 1]² every window maps, with its edge and cell width."""

    points: torch.Tensor  # (n_grid², 2)
    edge: torch.Tensor  # (n_grid²,) bool: on the grid's border
    cell_width: float

    @classmethod
    def make(cls, n_grid: int) -> _UnitGrid:
        unit = torch.linspace(-1.0, 1.0, n_grid, dtype=DTYPE)
        points = torch.stack(torch.meshgrid(unit, unit, indexing="ij"), dim=-1).reshape(-1, 2)
        edge = torch.ones(n_grid, n_grid, dtype=torch.bool)
        edge[1:-1, 1:-1] = False
        return cls(points=points, edge=edge.reshape(-1), cell_width=2.0 / (n_grid - 1))


def _first_windows(prior: ClusterPrior, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (n_pairs, 2) and axes (n_pairs, 2, 2) of every pair's first grid.

    The box spanning all clusters' means +- 6 prior standard deviations (within the prior's bounds)
    holds both the likelihood's peak (the data came from one of the clusters) and every cluster's
    prior, so also each cluster's posterior.
    """
    box_low = np.maximum((prior.means - 6 * prior.stds).min(0), prior.lower)
    box_high = np.minimum((prior.means + 6 * prior.stds).max(0), prior.upper)
    centre = torch.as_tensor((box_high + box_low) / 2).repeat(n_pairs, 1)
    axes = torch.diag(torch.as_tensor((box_high - box_low) / 2)).repeat(n_pairs, 1, 1)
    return centre, axes


def _evaluate(
    log_likelihood: LogLikelihood,
    prior: ClusterPrior,
    grid: _UnitGrid,
    pairs: torch.Tensor,
    centre: torch.Tensor,
    axes: torch.Tensor,
    growth: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Moments on the grids θ = centre + axes · unit grid of (voxel, cluster) ``pairs``.

    Returns the mean, covariance and log evidence of each pair's term, its next window (centre, axes,
    growth) and whether the grid has converged (covered and resolved the posterior).
    """
    n_clusters = prior.n_clusters
    voxels, clusters = pairs // n_clusters, pairs % n_clusters
    theta = centre[:, None, :] + grid.points @ axes.transpose(-1, -2)
    log_prior = prior.cluster_log_density(theta.numpy(), clusters.numpy()[:, None])
    log_w = torch.as_tensor(log_prior) + log_likelihood(theta, voxels)
    top = log_w.max(dim=-1, keepdim=True).values
    w = torch.exp(log_w - top)
    total = w.sum(dim=-1)
    w = w / total[:, None]
    mean = (w[..., None] * theta).sum(dim=-2)
    centred = theta - mean[:, None, :]
    cov = torch.einsum("pm,pmi,pmj->pij", w, centred, centred)
    log_z = top[:, 0] + torch.log(total * torch.linalg.det(axes).abs() * grid.cell_width**2)
    above = (log_w >= top - _DEPTH)[..., None]
    covered = ~(above[..., 0] & grid.edge).any(dim=-1)
    span = (torch.where(above, grid.points, -2.0).max(dim=-2).values
            - torch.where(above, grid.points, 2.0).min(dim=-2).values)
    resolved = (span >= 0.5).all(dim=-1)
    # When the region was cut by this grid's edge it may reach far beyond: the window grows by 2, 4,
    # 8, ... on successive cuts.
    growth = torch.where(covered, 1.0, 2.0 * growth)
    next_centre, next_axes = _next_window(mean, cov, centred, above, axes, growth, grid.cell_width)
    return mean, cov, log_z, next_centre, next_axes, growth, covered & resolved


def _next_window(
    mean: torch.Tensor,
    cov: torch.Tensor,
    centred: torch.Tensor,
    above: torch.Tensor,
    axes: torch.Tensor,
    growth: torch.Tensor,
    cell_width: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and axes of the next grid of each pair.

    The principal-axis bounding box of the points within ``_DEPTH`` nats of the maximum (``above``),
    widened by one cell of the current grid on each side, times ``growth``.
    """
    _, principal = torch.linalg.eigh(cov)
    projected = centred @ principal
    low = torch.where(above, projected, math.inf).min(dim=-2).values
    high = torch.where(above, projected, -math.inf).max(dim=-2).values
    margin = (principal.transpose(-1, -2) @ axes).abs().sum(-1) * cell_width
    half = ((high - low) / 2 + margin) * growth[:, None]
    next_centre = mean + (principal @ ((low + high) / 2)[..., None])[..., 0]
    next_axes = principal * half[:, None, :]
    return next_centre, next_axes


def combine_clusters(
    means: torch.Tensor, covs: torch.Tensor, log_evidence: torch.Tensor, weights: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture posterior mean, variance and cluster probabilities from per-cluster moments.

    Parameters
    ----------
    means : Tensor, shape (n_voxels, K, P)
        Posterior mean of each cluster's term.
    covs : Tensor, shape (n_voxels, K, P, P)
        Posterior covariance of each cluster's term.
    log_evidence : Tensor, shape (n_voxels, K)
        log ∫ p_k(θ) L(θ) dθ.
    weights : ndarray, shape (K,)
        Prior cluster weights.

    Returns
    -------
    mean, variance : Tensor, shape (n_voxels, P)
        Laws of total expectation and variance over the clusters.
    probs : Tensor, shape (n_voxels, K)
        Posterior cluster probabilities.
    """
    log_joint = log_evidence + torch.as_tensor(np.log(weights))
    probs = torch.softmax(log_joint, dim=1)
    safe_means = torch.where(probs[..., None] > 0, means, 0.0)
    mean = (probs[..., None] * safe_means).sum(1)
    second = covs.diagonal(dim1=2, dim2=3) + safe_means**2
    variance = (probs[..., None] * torch.where(probs[..., None] > 0, second, 0.0)).sum(1) - mean**2
    return mean, variance, probs
