"""The MS-DKI posterior under a prior that is uniform over a box of (D, K): a continuum, not clusters.

Real brains do not come in a few Gaussian tissue clusters: partial volume fills the space between
white matter, grey matter and CSF, and free diffusion (D about 3 µm²/ms) is a hard edge of that
continuum.  :func:`in_box_support` defines such a population, every (D, K) of a box where the
kurtosis expansion decays monotonically up to the protocol's largest b-value, and
:func:`msdki_box_oracle` is the Bayes-optimal estimator for parameters drawn uniformly from it.
"""

from __future__ import annotations

from time import perf_counter

import numpy as np
import torch

from ...protocol import Protocol
from ...signal_models import msdki_signal
from .common import DTYPE, OracleResult, check_inputs, chunks, diffusion_shells
from .shell_likelihood import ShellLikelihood

__all__ = ["in_box_support", "sample_box", "msdki_box_oracle"]

#: Nats below a voxel's best coarse node that its fine window must hold.
_WINDOW_DEPTH = 25.0


def in_box_support(
    D: np.ndarray, K: np.ndarray, D_range: tuple[float, float], K_range: tuple[float, float], b_max: float
) -> np.ndarray:
    """Whether (D, K) lies in the box and keeps the signal decaying up to ``b_max`` (D·K·b_max < 3).

    Parameters
    ----------
    D, K : ndarray
        Diffusivity (µm²/ms) and kurtosis, broadcastable.
    D_range, K_range : (low, high)
        The box; D's low end must be positive, K's at least 0.
    b_max : float
        The protocol's largest b-value, ms/µm².

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        On an empty or reversed range, D_range reaching 0 or K_range below 0.
    """
    _check_box(D_range, K_range)
    (D_low, D_high), (K_low, K_high) = D_range, K_range
    return (D >= D_low) & (D <= D_high) & (K >= K_low) & (K <= K_high) & (D * K * b_max < 3.0)


def _check_box(D_range: tuple[float, float], K_range: tuple[float, float]) -> None:
    """Refuse an empty or reversed box, one whose D reaches 0 or whose K goes below 0."""
    (D_low, D_high), (K_low, K_high) = D_range, K_range
    if not (0.0 < D_low < D_high and 0.0 <= K_low < K_high):
        raise ValueError(
            f"the box needs 0 < D_low < D_high and 0 <= K_low < K_high; got D_range={D_range}, K_range={K_range}."
        )


def sample_box(
    n_voxels: int, D_range: tuple[float, float], K_range: tuple[float, float], b_max: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(D, K) of ``n_voxels`` voxels drawn uniformly on :func:`in_box_support` (by rejection).

    Returns
    -------
    D, K : ndarray, shape (n_voxels,)
    """
    D, K = np.empty(0), np.empty(0)
    while D.size < n_voxels:
        D_try, K_try = rng.uniform(*D_range, 2 * n_voxels), rng.uniform(*K_range, 2 * n_voxels)
        keep = in_box_support(D_try, K_try, D_range, K_range, b_max)
        D, K = np.concatenate([D, D_try[keep]]), np.concatenate([K, K_try[keep]])
    return D[:n_voxels], K[:n_voxels]


def msdki_box_oracle(
    signals: np.ndarray,
    protocol: Protocol,
    *,
    D_range: tuple[float, float],
    K_range: tuple[float, float],
    sigma: float | np.ndarray,
    S0: float | np.ndarray,
    n_coarse: int = 101,
    n_fine: int = 81,
    chunk_size: int = 64,
) -> OracleResult:
    r"""Posterior mean and standard deviation of D and K when (D, K) is uniform on :func:`in_box_support`.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Rician magnitudes, raw units.
    protocol : Protocol
        The acquisition (with S0 known, its b=0 measurements carry no information on (D, K)).
    D_range, K_range : (low, high)
        The box (D in µm²/ms); the support is cut by D·K·b_max < 3 as :func:`in_box_support` says.
    sigma : float or ndarray, shape (n_voxels,)
        Noise standard deviation per channel, raw units, known.
    S0 : float or ndarray, shape (n_voxels,)
        Non-diffusion-weighted signal, raw units, known.
    n_coarse : int
        Nodes per axis of the first grid, over the whole box.
    n_fine : int
        Nodes per axis of each voxel's second grid.
    chunk_size : int
        Voxels processed together.

    Returns
    -------
    OracleResult
        ``params`` and ``std`` hold ``"D"`` and ``"K"``; ``cluster_probs`` is one column of ones.
        ``diagnostics["fine_steps_per_std"]`` is the smallest ratio, over voxels and both axes, of the
        posterior standard deviation to the fine grid's spacing (the sums are accurate when it is
        well above 1).

    Notes
    -----
    The likelihood of every measurement is Rician with ν = S0 φ(b; D, K) (as in
    :func:`~varmap.evaluation.msdki_oracle`, tabulated per shell by ``ShellLikelihood``).  A coarse
    grid over the box finds each voxel's region within 25 nats of its best node; a fine
    ``n_fine`` × ``n_fine`` grid over that region, widened by one coarse cell on every side and clipped
    to the box, gives the posterior moments, every node inside the support weighted equally (the
    prior is flat there and zero outside, so the edges are resolved to a fine cell).
    """
    signals, sigma_v, S0_v = check_inputs(signals, protocol, sigma, S0)
    _check_box(D_range, K_range)
    lows = torch.tensor([D_range[0], K_range[0]], dtype=DTYPE)
    highs = torch.tensor([D_range[1], K_range[1]], dtype=DTYPE)
    b_max = float(protocol.bvals.max())
    shell_bvals, masks = diffusion_shells(protocol)
    unit = torch.linspace(0.0, 1.0, n_coarse, dtype=DTYPE)
    coarse = torch.stack(torch.meshgrid(lows[0] + (highs[0] - lows[0]) * unit,
                                        lows[1] + (highs[1] - lows[1]) * unit, indexing="ij"), -1).reshape(-1, 2)
    coarse_cell = (highs - lows) / (n_coarse - 1)
    fine_unit = torch.linspace(0.0, 1.0, n_fine, dtype=DTYPE)
    start = perf_counter()
    mean = np.zeros((signals.shape[0], 2))
    std = np.zeros((signals.shape[0], 2))
    steps_per_std = np.inf
    for chunk in chunks(signals.shape[0], chunk_size):
        m = torch.as_tensor(signals[chunk], dtype=DTYPE)
        tables = [ShellLikelihood(m[:, mask], torch.as_tensor(sigma_v[chunk])) for mask in masks]
        s0 = torch.as_tensor(S0_v[chunk], dtype=DTYPE)
        rows = torch.arange(m.shape[0])

        def log_posterior(theta: torch.Tensor) -> torch.Tensor:
            """Unnormalised log posterior at nodes theta (B, N, 2): -inf outside the support."""
            nu = s0[:, None, None] * msdki_signal(shell_bvals, theta[..., 0], theta[..., 1])
            value = sum(table(nu[..., i], rows) for i, table in enumerate(tables))
            D, K = theta[..., 0].numpy(), theta[..., 1].numpy()
            inside = torch.as_tensor(in_box_support(D, K, D_range, K_range, b_max))
            return torch.where(inside, value, -torch.inf)

        points = coarse.expand(m.shape[0], -1, -1)
        first = log_posterior(points)
        held = first >= first.max(1, keepdim=True).values - _WINDOW_DEPTH
        far = torch.where(held[..., None], points, torch.inf).amin(1) - coarse_cell
        near = torch.where(held[..., None], points, -torch.inf).amax(1) + coarse_cell
        low, high = torch.maximum(far, lows), torch.minimum(near, highs)
        axes = low[:, None, :] + (high - low)[:, None, :] * fine_unit[None, :, None]  # (B, n_fine, 2)
        pairs = torch.cartesian_prod(torch.arange(n_fine), torch.arange(n_fine))  # (n_fine², 2), row-major
        nodes = torch.stack([axes[:, pairs[:, 0], 0], axes[:, pairs[:, 1], 1]], -1)  # (B, n_fine², 2)
        weights = torch.softmax(log_posterior(nodes), dim=1)
        mu = (weights[..., None] * nodes).sum(1)
        var = (weights[..., None] * (nodes - mu[:, None]) ** 2).sum(1)
        mean[chunk], std[chunk] = mu.numpy(), var.clamp_min(0.0).sqrt().numpy()
        spacing = ((high - low) / (n_fine - 1)).numpy()
        steps_per_std = min(steps_per_std, float(np.min(std[chunk] / np.maximum(spacing, 1e-300))))
    return OracleResult(
        params={"D": mean[:, 0], "K": mean[:, 1]},
        std={"D": std[:, 0], "K": std[:, 1]},
        cluster_probs=np.ones((signals.shape[0], 1)),
        method="grid",
        diagnostics={"seconds": perf_counter() - start, "n_coarse": n_coarse, "n_fine": n_fine,
                     "fine_steps_per_std": steps_per_std},
    )
