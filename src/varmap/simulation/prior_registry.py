"""The registered simulation priors: tissue clusters of each signal model, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..protocol import BVALUE_MAX_RANGES, BVALUE_UNITS
from .cluster_prior import ClusterPrior

__all__ = ["PRIORS", "ball_stick_prior", "get_prior", "msdki_paper_prior", "msdki_physical_prior"]

#: Largest b-values, ms/µm², that a protocol may have (those :mod:`varmap.protocol` accepts in s/mm²): a
#: ``b_max`` outside them is a unit mistake that would silently move the truncation (3000 cuts every
#: cluster to D·K < 0.001; 0.003 leaves the prior untruncated).
_PROTOCOL_B_MAX_MS_PER_UM2 = tuple(b * BVALUE_UNITS["s/mm2"] for b in BVALUE_MAX_RANGES["s/mm2"])


def msdki_paper_prior() -> ClusterPrior:
    """The MS-DKI simulation prior of the paper: three untruncated Gaussian clusters over (D, K).

    Returns
    -------
    ClusterPrior
        Weights (0.5, 0.4, 0.1); means (D [µm²/ms], K) = (1.0, 1.25), (1.5, 1.0), (3.0, 0.0); variance
        0.015 on both parameters of the first two clusters and 0.2 × 0.015 for the third.

    Notes
    -----
    With the first two clusters' means, b = 3 ms/µm² lies beyond the turning point b = 3/(D·K) of the
    kurtosis expansion, so the simulated signal rises again between the two outer shells in most of
    those voxels; :func:`msdki_physical_prior` avoids that.
    """
    variance = 0.015
    return ClusterPrior(
        names=("D", "K"),
        weights=np.array([0.5, 0.4, 0.1]),
        means=np.array([[1.0, 1.25], [1.5, 1.0], [3.0, 0.0]]),
        variances=np.array([[variance, variance], [variance, variance], [0.2 * variance, 0.2 * variance]]),
        cluster_names=("tissue 1", "tissue 2", "free water"),
    )


def msdki_physical_prior(b_max: float = 3.0) -> ClusterPrior:
    """A physically valid MS-DKI prior: clusters like white matter, grey matter and free water.

    Parameters
    ----------
    b_max : float
        Largest b-value of the protocol, ms/µm²; draws must keep the kurtosis expansion valid there.

    Returns
    -------
    ClusterPrior
        Weights (0.5, 0.4, 0.1); means (D [µm²/ms], K) = (0.8, 1.1) white matter, (1.1, 0.75) grey
        matter, (3.0, 0.0) free water; the paper's variances (0.015, and 0.2 × 0.015 for free water).
        Truncated to D > 0, K >= 0 and D·K·b_max < 3.

    Raises
    ------
    ValueError
        If ``b_max`` is not a protocol's largest b-value in ms/µm² (0.1-50), naming the unit it looks like.

    Notes
    -----
    The means are typical powder-averaged values in adult brain (mean diffusivity 0.7-0.9 µm²/ms and
    mean kurtosis about 1 in white matter, higher diffusivity and lower kurtosis in grey matter, free
    diffusion of water at body temperature).  The condition D·K·b_max < 3 keeps every shell before the
    turning point b = 3/(D·K), so the signal decays monotonically with b.  It removes about a quarter
    of the white-matter cluster's Gaussian mass at b_max = 3; the remaining draws keep the cluster's
    weight (re-drawn within the cluster).
    """
    low, high = _PROTOCOL_B_MAX_MS_PER_UM2
    if not low <= b_max <= high:
        hint = ""
        if b_max > high:
            hint = f"; {b_max:g} looks like s/mm² (divide by 1000)"
        elif b_max > 0:
            hint = f"; {b_max:g} looks like ms/µm² divided by 1000 once more (multiply by 1000)"
        raise ValueError(
            f"b_max={b_max:g} must be the protocol's largest b-value in ms/µm², {low:g}-{high:g} (3.0 for "
            f"b = 3000 s/mm²){hint}."
        )
    variance = 0.015
    return ClusterPrior(
        names=("D", "K"),
        weights=np.array([0.5, 0.4, 0.1]),
        means=np.array([[0.8, 1.1], [1.1, 0.75], [3.0, 0.0]]),
        variances=np.array([[variance, variance], [variance, variance], [0.2 * variance, 0.2 * variance]]),
        lower=(0.0, 0.0),
        max_product=("D", "K", 3.0 / b_max),
        cluster_names=("white matter", "grey matter", "free water"),
    )


def ball_stick_prior() -> ClusterPrior:
    """Ball-and-stick prior with clusters standing for white matter, grey matter and CSF.

    Returns
    -------
    ClusterPrior
        Parameters (f, d_par [µm²/ms], d_iso [µm²/ms]); weights (0.5, 0.4, 0.1); means (0.6, 1.7, 0.8)
        white matter, (0.3, 1.5, 1.0) grey matter, (0.05, 2.5, 3.0) CSF; standard deviations (0.1, 0.2,
        0.15), (0.1, 0.2, 0.15) and (0.03, 0.3, 0.1).  Truncated to f in [0, 1] and diffusivities in
        (0, 4]; the fibre direction is uniform on the sphere.
    """
    std = np.array([[0.1, 0.2, 0.15], [0.1, 0.2, 0.15], [0.03, 0.3, 0.1]])
    return ClusterPrior(
        names=("f", "d_par", "d_iso"),
        weights=np.array([0.5, 0.4, 0.1]),
        means=np.array([[0.6, 1.7, 0.8], [0.3, 1.5, 1.0], [0.05, 2.5, 3.0]]),
        variances=std**2,
        lower=(0.0, 0.0, 0.0),
        upper=(1.0, 4.0, 4.0),
        has_direction=True,
        cluster_names=("white matter", "grey matter", "CSF"),
    )


#: Registered priors: ``PRIORS[model_name][prior_name]`` is a factory returning a :class:`ClusterPrior`.
PRIORS: dict[str, dict[str, Callable[..., ClusterPrior]]] = {
    "msdki": {"paper": msdki_paper_prior, "physical": msdki_physical_prior},
    "ball_stick": {"default": ball_stick_prior},
}


def get_prior(model_name: str, name: str, **kwargs) -> ClusterPrior:
    """Build the registered prior ``name`` for the signal model ``model_name``.

    Parameters
    ----------
    model_name : str
        Registered signal model (a key of :data:`PRIORS`).
    name : str
        Prior of that model (a key of ``PRIORS[model_name]``).
    **kwargs
        Passed to the factory (``b_max`` for ``("msdki", "physical")``).

    Returns
    -------
    ClusterPrior

    Raises
    ------
    ValueError
        For an unknown model or prior name; the message lists the valid ones.
    """
    if model_name not in PRIORS:
        raise ValueError(f"no priors for signal model {model_name!r}; choose one of {sorted(PRIORS)}.")
    factories = PRIORS[model_name]
    if name not in factories:
        raise ValueError(f"unknown prior {name!r} for {model_name!r}; choose one of {sorted(factories)}.")
    return factories[name](**kwargs)
