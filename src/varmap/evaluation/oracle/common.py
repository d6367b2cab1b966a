"""What the oracles share: their result, checks of their inputs, and voxel chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...protocol import Protocol
from ...simulation import ClusterPrior

__all__ = ["DTYPE", "OracleResult", "check_inputs", "check_prior", "chunks", "diffusion_shells", "trapezoid_nodes"]

#: Floating-point type of every oracle computation.
DTYPE = torch.float64


@dataclass
class OracleResult:
    """Posterior summaries of every voxel.

    Attributes
    ----------
    params : dict of ndarray
        Posterior means, shape (n_voxels,) per scalar; for a direction, ``"n"`` (n_voxels, 3): the
        principal eigenvector of the posterior mean of n nᵀ.
    std : dict of ndarray
        Posterior standard deviations; for ``"n"`` the angular spread in degrees,
        arccos(sqrt(λ_max)) with λ_max the largest eigenvalue of the posterior mean of n nᵀ (the RMS
        angle to the mean axis when the spread is small).
    cluster_probs : ndarray, shape (n_voxels, n_clusters)
        Posterior probability that the voxel was drawn from each prior cluster.
    method : str
        ``"grid"`` or ``"mcmc"``.
    diagnostics : dict
        Settings and convergence figures (grid sizes, acceptance rates, seconds).
    """

    params: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    cluster_probs: np.ndarray
    method: str
    diagnostics: dict = field(default_factory=dict)


def check_prior(prior: ClusterPrior, names: tuple[str, ...], has_direction: bool) -> None:
    """Refuse a prior over other parameters than the oracle's model.

    Parameters
    ----------
    prior : ClusterPrior
    names : tuple of str
        The model's scalar parameters, in order.
    has_direction : bool
        Whether the model has a fibre direction.

    Raises
    ------
    ValueError
        Naming both parameter sets.
    """
    if tuple(prior.names) != names or prior.has_direction != has_direction:
        raise ValueError(
            f"the oracle needs a prior over {names} (has_direction={has_direction}); got one over "
            f"{prior.names} (has_direction={prior.has_direction})."
        )


def check_inputs(
    signals: np.ndarray, protocol: Protocol, sigma: float | np.ndarray, S0: float | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate an oracle's data and return it as float64, one noise level and S0 per voxel.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Magnitudes, raw units.
    protocol : Protocol
    sigma : float or ndarray, shape (n_voxels,)
        Noise standard deviation per channel, raw units: one for all voxels or one per voxel.
    S0 : float or ndarray, shape (n_voxels,), or None
        True non-diffusion-weighted signal, raw units; ``None`` where the oracle does not know it.

    Returns
    -------
    signals : ndarray, float64, shape (n_voxels, n_measurements)
    sigma : ndarray, float64, shape (n_voxels,)
    S0 : ndarray, float64, shape (n_voxels,), or None

    Raises
    ------
    ValueError
        On a wrong shape, negative or non-finite signals, or a non-positive ``sigma`` or ``S0``.
    """
    signals = np.asarray(signals, dtype=np.float64)
    if signals.ndim != 2 or signals.shape[1] != protocol.n_measurements:
        raise ValueError(
            f"signals must have shape (n_voxels, {protocol.n_measurements}); got {signals.shape}."
        )
    if not np.all(np.isfinite(signals)) or np.any(signals < 0):
        raise ValueError("signals must be finite magnitudes >= 0.")
    sigma = _per_voxel(sigma, signals.shape[0], "sigma", "noise standard deviation per channel")
    if S0 is not None:
        S0 = _per_voxel(S0, signals.shape[0], "S0", "non-diffusion-weighted signal")
    return signals, sigma, S0


def _per_voxel(value: float | np.ndarray, n_voxels: int, name: str, meaning: str) -> np.ndarray:
    """One positive finite float64 per voxel from a number or an (n_voxels,) array."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != n_voxels):
        raise ValueError(
            f"{name} must be one number or one value per voxel, shape ({n_voxels},); got shape {array.shape}."
        )
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(
            f"{name} must be positive and finite: the {meaning}, raw units (a float, or one value per voxel)."
        )
    return np.broadcast_to(array, (n_voxels,)).copy()


def diffusion_shells(protocol: Protocol) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The protocol's diffusion-weighted shells, whose measurements the MS-DKI oracles tabulate per shell.

    Returns
    -------
    shell_bvals : Tensor, shape (n_shells,)
        Their b-values, ms/µm² (``DTYPE``).
    masks : list of Tensor
        For each shell, which of the protocol's measurements belong to it (bool, shape (n_measurements,)).
    """
    shells = [s for s, b in enumerate(protocol.shell_bvals) if b > protocol.b0_threshold]
    return (torch.tensor(protocol.shell_bvals[shells], dtype=DTYPE),
            [torch.as_tensor(protocol.shell_index == s) for s in shells])


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n)``.

    Parameters
    ----------
    n : int
        Number of items (voxels).
    size : int
        Largest chunk (an oracle's ``chunk_size``).

    Returns
    -------
    list of slice

    Raises
    ------
    ValueError
        If ``size`` is below 1.
    """
    if size < 1:
        raise ValueError(f"chunk_size={size} must be >= 1.")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def trapezoid_nodes(start: np.ndarray, stop: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Equally spaced nodes over each voxel's window and the log of their trapezoidal weights.

    Parameters
    ----------
    start, stop : ndarray, shape (n_voxels,)
        Each voxel's window (``start == stop`` gives ``n_nodes`` equal nodes).
    n_nodes : int
        Nodes per voxel (>= 2).

    Returns
    -------
    nodes : ndarray, shape (n_voxels, n_nodes)
    log_weights : ndarray, shape (n_voxels, n_nodes)
        log 1/2 at the ends, 0 inside (up to each voxel's spacing, a constant per voxel that a
        posterior normalised per voxel does not see).
    """
    nodes = start[:, None] + (stop - start)[:, None] * np.linspace(0.0, 1.0, n_nodes)
    trapezoid = np.ones(n_nodes)
    trapezoid[[0, -1]] = 0.5
    return nodes, np.broadcast_to(np.log(trapezoid), nodes.shape).copy()
