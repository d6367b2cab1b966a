"""Simulated datasets: parameters drawn from a prior, signals predicted by a model, noise added."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import Protocol
from ..random_streams import numpy_stream
from ..signal_models import SignalModel
from .noise import add_noise, check_noise_kind
from .cluster_prior import ClusterPrior

__all__ = ["SimulatedData", "check_range", "check_noise_variation", "simulate"]


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
    sigma : float or ndarray, shape (n_voxels,)
        Noise standard deviation per channel, raw units: one float when every voxel has the same noise
        level (``noise_variation`` 1), else each voxel's own.
    snr : float
        mean(S0) / sigma (the distribution's mean S0 with ``S0_range``; with a per-voxel noise level,
        the sigma before the voxels' factors, that of the least noisy voxels).
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
    noise_variation : float
        Largest ratio between two voxels' noise levels (1: one noise level).
    S0_range : tuple of float, optional
        (low, high) of the uniform distribution the voxels' S0 were drawn from; ``None`` when S0 was
        given.
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
    noise_variation: float = 1.0
    S0_range: tuple[float, float] | None = None

    @property
    def n_voxels(self) -> int:
        """Number of simulated voxels."""
        return int(self.signals.shape[0])

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Support of the log-uniform distribution of the voxels' noise levels, raw units: mean(S0) / snr
        to ``noise_variation`` times that (one value twice with one noise level)."""
        low = (sum(self.S0_range) / 2 if self.S0_range is not None else float(np.mean(self.S0))) / self.snr
        return low, low * self.noise_variation


def simulate(
    model: SignalModel,
    prior: ClusterPrior,
    *,
    n_voxels: int,
    snr: float,
    noise: str = "rician",
    S0: float | np.ndarray | None = None,
    S0_range: tuple[float, float] | None = None,
    noise_variation: float = 1.0,
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
        Signal-to-noise ratio of the b=0 signal: sigma = mean(S0) / snr, the noise level of the least
        noisy voxels (all voxels when ``noise_variation`` is 1).
    noise : {"rician", "gaussian"}
        Noise distribution (:func:`~varmap.simulation.noise.add_noise`).
    S0 : float or ndarray, shape (n_voxels,), optional
        Non-diffusion-weighted signal, raw units; default 1 (unless ``S0_range`` is given).
    S0_range : (low, high), optional
        Draw each voxel's S0 uniformly on [low, high] (raw units, 0 < low <= high) instead of giving
        ``S0``; mean(S0) in the SNR is then the distribution's mean (low + high) / 2.
    noise_variation : float
        Largest ratio r >= 1 between voxels' noise levels: each voxel's noise standard deviation is
        sigma times a factor drawn log-uniformly on [1, r] (parallel imaging makes the noise level
        follow the coil sensitivity and g-factor).  1 gives every voxel the noise level sigma.
    seed : int
        Seeds ``np.random.default_rng``, which makes the parameters' draws, then the noise's.  The S0
        draws and the noise factors come from their own named streams of ``seed``
        (:mod:`varmap.random_streams`), so the parameters and the standard normal noise draws are the
        same with and without them.

    Returns
    -------
    SimulatedData

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`~varmap.signal_models.SignalModel`.
    ValueError
        On a non-positive ``snr``, ``S0`` or ``n_voxels``, a bad ``S0_range`` or one given with ``S0``,
        ``noise_variation`` < 1,
        or a prior whose parameter names or direction do not match the model.
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
    check_noise_variation(noise_variation)
    if S0_range is None:
        S0 = np.broadcast_to(np.asarray(1.0 if S0 is None else S0, dtype=np.float64), (n_voxels,)).copy()
        S0_mean = S0.mean()
    elif S0 is not None:
        raise ValueError("give S0 (known values) or S0_range (drawn uniformly), not both.")
    else:
        low, high = check_range(S0_range)
        S0 = numpy_stream(seed, "S0 of the voxels").uniform(low, high, n_voxels)
        S0_mean, S0_range = (low + high) / 2, (low, high)
    if not np.all(np.isfinite(S0) & (S0 > 0)):
        raise ValueError("S0 must be positive and finite (a float, or one value per voxel).")
    rng = np.random.default_rng(seed)
    params, labels = prior.sample(n_voxels, rng)
    sigma = float(S0_mean / snr)
    if noise_variation > 1:
        log_factors = numpy_stream(seed, "noise level of the voxels").uniform(0.0, np.log(noise_variation), n_voxels)
        sigma = sigma * np.exp(log_factors)
    noisy_sigma = sigma if np.ndim(sigma) == 0 else sigma[:, None]
    signals = add_noise(model.predict(params, S0=S0), sigma=noisy_sigma, kind=noise, rng=rng)
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
        noise_variation=float(noise_variation),
        S0_range=S0_range,
    )


def check_noise_variation(noise_variation: float) -> None:
    """Refuse a ratio of noise levels below 1.

    Parameters
    ----------
    noise_variation : float
        Largest ratio between two voxels' noise levels.

    Raises
    ------
    ValueError
        Unless it is a finite number >= 1.
    """
    if not (np.isfinite(noise_variation) and noise_variation >= 1):
        raise ValueError(
            f"noise_variation={noise_variation!r} must be a number >= 1 (largest ratio of two voxels' noise "
            "levels; 1 for one noise level)."
        )


def check_range(bounds: tuple[float, float], name: str = "S0_range") -> tuple[float, float]:
    """Validate the bounds of a distribution over a positive quantity (S0, a noise level).

    Parameters
    ----------
    bounds : (low, high)
        Bounds in raw signal units.
    name : str
        The argument's name, for the message.

    Returns
    -------
    low, high : float

    Raises
    ------
    ValueError
        Unless 0 < low <= high, both finite.
    """
    try:
        low, high = (float(value) for value in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={bounds!r} must be two numbers (low, high), raw signal units.") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
        raise ValueError(f"{name}=({low!r}, {high!r}) must satisfy 0 < low <= high (raw signal units).")
    return low, high
