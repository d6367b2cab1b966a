"""Simulated datasets: parameters drawn from a prior, signals predicted by a model, noise added."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import Protocol
from ..signal_models import SignalModel
from .noise import add_noise, check_noise_kind
from .cluster_prior import ClusterPrior

__all__ = ["SimulatedData", "simulate"]


@dataclass
class SimulatedData:
    """Noisy signals with the parameters that generated them.

    Attributes
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Noisy magnitudes, raw units (not normalised by S0).
    params : dict of ndarray
        True parameters, shape (n_voxels,) each; ``"n"`` (n_voxels, 3) for directional models.
    labels : ndarray of int, shape (n_voxels,)
        Prior cluster of each voxel.
    S0 : ndarray, shape (n_voxels,)
        True non-diffusion-weighted signal, raw units.
    sigma : float
        Noise standard deviation per channel, raw units.
    snr : float
        mean(S0) / sigma.
    protocol : Protocol
        The acquisition the signals follow.
    model : str
        Registered name of the signal model.
    prior : ClusterPrior
        The prior the parameters were drawn from.
    noise : str
        ``"rician"`` or ``"gaussian"``.
    seed : int
        Seed of every draw (see :func:`simulate`).
    """

    signals: np.ndarray
    params: dict[str, np.ndarray]
    labels: np.ndarray
    S0: np.ndarray
    sigma: float
    snr: float
    protocol: Protocol
    model: str
    prior: ClusterPrior
    noise: str
    seed: int

    @property
    def n_voxels(self) -> int:
        """Number of simulated voxels."""
        return int(self.signals.shape[0])


def simulate(
    model: SignalModel,
    prior: ClusterPrior,
    *,
    n_voxels: int,
    snr: float,
    noise: str = "rician",
    S0: float | np.ndarray = 1.0,
    seed: int = 0,
) -> SimulatedData:
    """Draw parameters from a prior, predict the signals and add noise.

    Parameters
    ----------
    model : SignalModel
        Forward model bound to the protocol (``get_signal_model(name, protocol)``).
    prior : ClusterPrior
        Prior over the model's scalar parameters (names in the model's order).
    n_voxels : int
        Number of voxels to simulate.
    snr : float
        Signal-to-noise ratio of the b=0 signal: sigma = mean(S0) / snr.
    noise : {"rician", "gaussian"}
        Noise distribution (:func:`~varmap.simulation.noise.add_noise`).
    S0 : float or ndarray, shape (n_voxels,)
        Non-diffusion-weighted signal, raw units.
    seed : int
        Seeds ``np.random.default_rng``, which makes every draw (parameters, then noise).

    Returns
    -------
    SimulatedData

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`~varmap.signal_models.SignalModel`.
    ValueError
        On a non-positive ``snr``, ``S0`` or ``n_voxels``, or a prior whose parameter names or direction
        do not match the model.
    """
    check_noise_kind(noise)
    if not isinstance(model, SignalModel):
        raise TypeError(f"model must be a SignalModel (see get_signal_model); got {type(model).__name__}.")
    if tuple(prior.names) != model.parameter_names:
        raise ValueError(
            f"the prior has parameters {prior.names} but {model.name} needs {model.parameter_names}; "
            f"use a prior from get_prior({model.name!r}, ...)."
        )
    if prior.has_direction != model.has_direction:
        raise ValueError(
            f"{model.name} {'has' if model.has_direction else 'has no'} fibre direction but the prior has "
            f"has_direction={prior.has_direction}."
        )
    if isinstance(n_voxels, bool) or not isinstance(n_voxels, (int, np.integer)) or n_voxels < 1:
        raise ValueError(f"n_voxels={n_voxels!r} must be an integer >= 1.")
    if not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"snr={snr!r} must be a positive finite number (mean S0 / sigma).")
    S0 = np.broadcast_to(np.asarray(S0, dtype=np.float64), (n_voxels,)).copy()
    if not np.all(np.isfinite(S0) & (S0 > 0)):
        raise ValueError("S0 must be positive and finite (a float, or one value per voxel).")
    rng = np.random.default_rng(seed)
    params, labels = prior.sample(n_voxels, rng)
    sigma = float(S0.mean() / snr)
    signals = add_noise(model.predict(params, S0=S0), sigma=sigma, kind=noise, rng=rng)
    return SimulatedData(
        signals=signals,
        params=params,
        labels=labels,
        S0=S0,
        sigma=sigma,
        snr=float(snr),
        protocol=model.protocol,
        model=model.name,
        prior=prior,
        noise=noise,
        seed=seed,
    )
