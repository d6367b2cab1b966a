"""Magnitude-image noise: the one place where Rician (and Gaussian) noise is drawn.

Tests, benchmarks, the simulator and the phantom all call :func:`add_noise`; its density counterpart,
used by the oracles and the likelihoods, is :func:`varmap.estimators.likelihood.rician_log_pdf`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NOISE_KINDS", "add_noise", "check_noise_kind"]

#: Noise distributions :func:`add_noise` can draw from.
NOISE_KINDS = ("rician", "gaussian")


def check_noise_kind(kind: str) -> None:
    """Refuse a noise kind :func:`add_noise` cannot draw.

    Parameters
    ----------
    kind : str

    Raises
    ------
    ValueError
        Unless ``kind`` is in :data:`NOISE_KINDS`; the message lists them.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {list(NOISE_KINDS)}.")


def add_noise(
    signals: np.ndarray,
    *,
    sigma: float | np.ndarray,
    kind: str = "rician",
    rng: np.random.Generator | int,
) -> np.ndarray:
    """Add magnitude-image noise to noiseless signals.

    Parameters
    ----------
    signals : ndarray, shape (..., N)
        Noiseless signals ν, raw units.
    sigma : float or ndarray broadcastable to ``signals``
        Standard deviation of the Gaussian noise on each (real and imaginary) channel, raw units.
    kind : {"rician", "gaussian"}
        ``"rician"``: the magnitude of ν plus complex Gaussian noise; ``"gaussian"``: ν plus real
        Gaussian noise.
    rng : numpy.random.Generator or int
        Generator, or a seed for a new one.

    Returns
    -------
    ndarray, float64, same shape as ``signals``

    Raises
    ------
    ValueError
        On an unknown ``kind``, or a negative or non-finite ``sigma``.

    Notes
    -----
    Rician: :math:`m = |\\nu + \\sigma(\\epsilon_1 + i\\epsilon_2)|`, whose mean tends to the noise floor
    :math:`\\sigma\\sqrt{\\pi/2}` as ν → 0.  The real channel's draws come first, then the imaginary
    channel's, each ``rng.standard_normal(signals.shape)``; so the result equals
    ``np.hypot(signals + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))`` bit for bit.
    """
    check_noise_kind(kind)
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(~np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError(f"sigma must be finite and >= 0; got {sigma if sigma.size < 5 else '(array)'}.")
    rng = np.random.default_rng(rng)
    signals = np.asarray(signals, dtype=np.float64)
    real = signals + sigma * rng.standard_normal(signals.shape)
    if kind == "gaussian":
        return real
    return np.hypot(real, sigma * rng.standard_normal(signals.shape))
