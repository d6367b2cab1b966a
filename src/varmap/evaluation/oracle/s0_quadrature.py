"""Quadrature over an unknown S0: nodes and weights of a one-dimensional integral per voxel.

An oracle that does not know S0 averages its known-S0 posterior over S0's posterior.  With a uniform
prior on [low, high], that posterior is the prior times the likelihood of every measurement; the b=0
measurements pin S0 down to about σ/√n_b0, so each voxel's nodes cover a window of that width around
its b=0 estimate, clipped to the prior's support, instead of the whole range.
"""

from __future__ import annotations

import numpy as np
import torch

from ...estimators.likelihood import rician_log_pdf
from .common import DTYPE, trapezoid_nodes

__all__ = ["S0_WINDOW", "S0_nodes", "window_edge_mass"]

#: Half-width of each voxel's S0 window, in units of σ/√n_b0 (the standard error of its b=0 estimate).
S0_WINDOW = 8.0


def S0_nodes(
    b0_signals: np.ndarray, sigma: np.ndarray, S0_range: tuple[float, float], n_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoidal nodes over each voxel's plausible S0 and their log weights times the b=0 likelihood.

    Parameters
    ----------
    b0_signals : ndarray, shape (n_voxels, n_b0)
        Magnitudes of the b=0 measurements, raw units (``n_b0`` may be 0).
    sigma : ndarray, shape (n_voxels,)
        Noise standard deviation per channel, raw units.
    S0_range : (low, high)
        Support of the uniform S0 prior, raw units, 0 < low <= high.
    n_nodes : int
        Nodes per voxel (>= 2).

    Returns
    -------
    nodes : ndarray, shape (n_voxels, n_nodes)
        S0 values, raw units, equally spaced over each voxel's window.
    log_weights : ndarray, shape (n_voxels, n_nodes)
        Log of the trapezoidal weight (up to a constant per voxel) plus the Rician log-likelihood of
        the b=0 measurements at the node; the known-S0 evidence of the other measurements is added by
        the oracle.

    Notes
    -----
    The window is ``c ± S0_WINDOW · σ/√n_b0`` clipped to [low, high], with ``c`` the voxel's b=0
    estimate :math:`\\sqrt{\\max(\\overline{m^2} - 2\\sigma^2, 0)}` (unbiased for ν² under Rician
    noise) clipped to [low, high]; without b=0 measurements it is the whole range.  Where
    low = high every node is that value and the quadrature returns the known-S0 result.
    """
    low, high = S0_range
    n_voxels, n_b0 = b0_signals.shape
    if n_b0 == 0:
        start, stop = np.full(n_voxels, low), np.full(n_voxels, high)
    else:
        estimate = np.sqrt(np.maximum(np.mean(b0_signals**2, axis=1) - 2.0 * sigma**2, 0.0))
        centre = np.clip(estimate, low, high)
        half = S0_WINDOW * sigma / np.sqrt(n_b0)
        start, stop = np.maximum(centre - half, low), np.minimum(centre + half, high)
    nodes, log_weights = trapezoid_nodes(start, stop, n_nodes)
    if n_b0 > 0:
        m = torch.as_tensor(b0_signals, dtype=DTYPE)[:, None, :]
        nu = torch.as_tensor(nodes, dtype=DTYPE)[:, :, None]
        s = torch.as_tensor(sigma, dtype=DTYPE)[:, None, None]
        log_weights += rician_log_pdf(m, nu, s).sum(-1).numpy()
    return nodes, log_weights


def window_edge_mass(nodes: np.ndarray, log_mass: torch.Tensor, S0_range: tuple[float, float]) -> float:
    """Largest posterior mass on a window's edge node where that edge cuts inside the prior's support.

    Parameters
    ----------
    nodes : ndarray, shape (n_voxels, n_nodes)
        From :func:`S0_nodes`.
    log_mass : Tensor, shape (n_voxels, n_nodes)
        Unnormalised log posterior mass of each node (its log weight plus the log evidence of the
        other measurements).
    S0_range : (low, high)

    Returns
    -------
    float
        0 when every window reaches the prior's bounds; a value well below ``1 / n_nodes`` means the
        windows held the posterior of S0.
    """
    mass = torch.softmax(log_mass, dim=1).numpy()
    low, high = S0_range
    cut = np.concatenate([mass[nodes[:, 0] > low, 0], mass[nodes[:, -1] < high, -1]])
    return float(cut.max()) if cut.size else 0.0
