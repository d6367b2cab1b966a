"""Quadrature over an unknown noise level: nodes and weights of a one-dimensional integral per voxel.

An oracle that does not know a voxel's σ averages its known-σ posterior over σ's posterior.  With a
log-uniform prior on [low, high] (how the simulation draws each voxel's noise level), that posterior is
the prior times the likelihood of every measurement.  The measurements pin log σ down to a few per
cent, so each voxel's nodes cover a window of :data:`SIGMA_WINDOW` in log σ around an estimate from
its own residuals, clipped to the prior's support, instead of the whole range.
"""

from __future__ import annotations

import numpy as np
import torch

from ...estimators.likelihood import rician_log_pdf
from ...estimators.noise_level import residual_variances
from ...protocol import Protocol
from .common import DTYPE, trapezoid_nodes

__all__ = ["SIGMA_WINDOW", "sigma_nodes"]

#: Half-width of each voxel's window in log σ.  A residual estimate from 288 measurements scatters by
#: 0.05-0.10 in log σ (b=0 SNR 1-50); 0.5 is five or more of those, and ``window_edge_mass`` reports
#: what a window cut off.
SIGMA_WINDOW = 0.5


def sigma_nodes(
    signals: np.ndarray, protocol: Protocol, S0: np.ndarray, sigma_range: tuple[float, float], n_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoidal nodes over each voxel's plausible σ and their log weights times the b=0 likelihood.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Magnitudes, raw units.
    protocol : Protocol
    S0 : ndarray, shape (n_voxels,)
        True non-diffusion-weighted signal, raw units (the b=0 measurements inform σ through it).
    sigma_range : (low, high)
        Support of the log-uniform σ prior, raw units, 0 < low <= high.
    n_nodes : int
        Nodes per voxel (>= 2).

    Returns
    -------
    nodes : ndarray, shape (n_voxels, n_nodes)
        σ values, raw units, equally spaced in log σ over each voxel's window.
    log_weights : ndarray, shape (n_voxels, n_nodes)
        Log of the trapezoidal weight in log σ (the prior's density there is constant) plus the Rician
        log-likelihood of the b=0 measurements at the node; the known-σ evidence of the other
        measurements is added by the oracle.

    Notes
    -----
    The window is ``log ŝ ± SIGMA_WINDOW`` clipped to [log low, log high], with ŝ the voxel's noise
    level from the residuals of its kurtosis (or tensor) fit
    (:func:`varmap.estimators.noise_level.residual_variances`, before any pooling between voxels),
    clipped to [low, high]; where that fit fails or the protocol leaves no residual, the whole range.
    Where low = high every node is that value and the quadrature returns the known-σ result.
    """
    low, high = sigma_range
    n_voxels = signals.shape[0]
    log_low, log_high = np.log(low), np.log(high)
    start, stop = np.full(n_voxels, log_low), np.full(n_voxels, log_high)
    try:
        variance = residual_variances(signals, protocol)[0]
    except ValueError:  # no residuals: the whole range
        variance = np.full(n_voxels, np.nan)
    found = np.isfinite(variance) & (variance > 0)
    centre = np.clip(0.5 * np.log(np.where(found, variance, 1.0)), log_low, log_high)
    start = np.where(found, np.maximum(centre - SIGMA_WINDOW, log_low), start)
    stop = np.where(found, np.minimum(centre + SIGMA_WINDOW, log_high), stop)
    log_nodes, log_weights = trapezoid_nodes(start, stop, n_nodes)
    nodes = np.exp(log_nodes)
    nodes[start == log_low, 0], nodes[stop == log_high, -1] = low, high  # exactly, for window_edge_mass
    if protocol.n_b0 > 0:
        m = torch.as_tensor(signals[:, protocol.b0_mask], dtype=DTYPE)[:, None, :]
        nu = torch.as_tensor(S0, dtype=DTYPE)[:, None, None]
        s = torch.as_tensor(nodes, dtype=DTYPE)[:, :, None]
        log_weights += rician_log_pdf(m, nu, s).sum(-1).numpy()
    return nodes, log_weights
