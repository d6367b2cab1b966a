"""Simulated acquisitions: protocols, tissue-cluster parameter priors, noise, and noisy signals.

Everything random takes a seed or a :class:`numpy.random.Generator`; nothing here touches a global
random state.  Units follow the rest of varmap: b in ms/µm² inside a :class:`~varmap.Protocol`,
diffusivities in µm²/ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from dipy.core.sphere import HemiSphere, disperse_charges
from scipy.integrate import quad
from scipy.special import logsumexp, ndtr

from .estimators.likelihood import rician_log_pdf
from .protocol import Protocol
from .signal_models import SignalModel

__all__ = [
    "NOISE_KINDS",
    "PRIORS",
    "ClusterPrior",
    "SimulatedData",
    "add_noise",
    "ball_stick_prior",
    "fibonacci_sphere",
    "get_prior",
    "hcp_protocol",
    "msdki_paper_prior",
    "msdki_physical_prior",
    "rician_log_pdf",
    "simulate",
]

#: Noise distributions :func:`add_noise` can draw from.
NOISE_KINDS = ("rician", "gaussian")

# Electrostatic repulsion settings for :func:`hcp_protocol`; with 90 directions per shell they give a
# smallest angle between any two lines of 12-15 degrees in about half a second per shell.
_REPULSION_ITERATIONS = 500
_REPULSION_STEP = 5.0

# Rejection sampling gives up after this many rounds (a prior whose support holds almost no mass).
_MAX_REJECTION_ROUNDS = 1000


# ---------------------------------------------------------------------------------------- protocol
def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors on the sphere (Fibonacci lattice, deterministic), shape (n, 3).

    Handy for quick test protocols; :func:`hcp_protocol` spreads directions more evenly.
    """
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def hcp_protocol(
    *,
    n_b0: int = 18,
    n_directions: int = 90,
    shells: tuple[float, ...] = (1000.0, 2000.0, 3000.0),
    seed: int = 0,
) -> Protocol:
    """An HCP-like multi-shell protocol with well-spread directions on every shell.

    Parameters
    ----------
    n_b0 : int
        Number of b=0 measurements (placed first).
    n_directions : int
        Number of gradient directions per shell.
    shells : tuple of float
        b-values of the diffusion-weighted shells, in s/mm².
    seed : int
        Seeds the random starting directions.

    Returns
    -------
    Protocol
        ``n_b0 + n_directions * len(shells)`` measurements (288 with the defaults, as in the Human
        Connectome Project).  Results are cached: equal arguments return the same object.

    Notes
    -----
    Each shell starts from its own set of random unit vectors (drawn one shell after the other from
    ``np.random.default_rng(seed)``), which :func:`dipy.core.sphere.disperse_charges` spreads over the
    hemisphere by antipodally symmetric electrostatic repulsion.  Shells therefore hold different
    direction sets, as in real acquisitions.
    """
    if n_b0 < 1:
        raise ValueError(f"n_b0={n_b0}: models normalise by the b=0 signal, so use at least 1.")
    if n_directions < 1:
        raise ValueError(f"n_directions={n_directions}: each shell needs at least one direction.")
    shells = tuple(float(b) for b in shells)
    if not shells or any(b <= 0 for b in shells):
        raise ValueError(f"shells={shells}: give one or more positive b-values in s/mm².")
    return _hcp_protocol(n_b0, n_directions, shells, seed)


@lru_cache(maxsize=16)
def _hcp_protocol(n_b0: int, n_directions: int, shells: tuple[float, ...], seed: int) -> Protocol:
    rng = np.random.default_rng(seed)
    bvals = [np.zeros(n_b0)]
    bvecs = [np.zeros((n_b0, 3))]
    for b in shells:
        start = rng.standard_normal((n_directions, 3))
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        spread, _ = disperse_charges(HemiSphere(xyz=start), _REPULSION_ITERATIONS, const=_REPULSION_STEP)
        bvals.append(np.full(n_directions, b))
        bvecs.append(spread.vertices)
    return Protocol.from_bvals_bvecs(np.concatenate(bvals), np.concatenate(bvecs), units="s/mm2")


# ---------------------------------------------------------------------------------------- priors
@dataclass(frozen=True, eq=False)
class ClusterPrior:
    """A mixture of diagonal Gaussians over a model's scalar parameters, one component per tissue.

    Every cluster k is drawn with probability ``weights[k]``; its parameters are independent Gaussians
    with ``means[k]`` and ``variances[k]``, optionally truncated to ``[lower, upper]`` and to
    ``a * b < max_product[2]``.  A truncated cluster keeps its weight: values outside the support are
    re-drawn within the same cluster.

    Parameters
    ----------
    names : tuple of str
        Scalar parameter names, in the order of the model's ``parameter_names``.
    weights : array_like, shape (K,)
        Cluster probabilities (normalised to sum to one).
    means, variances : array_like, shape (K, P)
        Mean and variance of each parameter in each cluster, in the parameter's unit.
    lower, upper : sequence of float or None, length P, optional
        Truncation bounds per parameter (closed interval; the boundary itself has probability zero).
        ``None`` entries, or ``None`` for the whole sequence, leave that side untruncated, as the
        paper's simulation does.
    max_product : (str, str, float), optional
        ``(a, b, c)`` keeps only draws with ``a * b < c``; ``a`` must have a lower bound >= 0.  Used for
        the MS-DKI validity condition D·K·b_max < 3.
    has_direction : bool
        Whether the model also has a fibre direction, drawn uniformly on the sphere (so antipodally
        symmetric) and independently of the scalars.
    cluster_names : tuple of str, optional
        Label of each cluster for tables and plots; defaults to ``"cluster 0"``, ...

    Notes
    -----
    Cluster k's density is the product of normal densities on the support, divided by the cluster's
    mass there, so :meth:`log_density` is the exact density of :meth:`sample`.  Without
    ``max_product`` the mass is a product of normal CDF differences; with it, a one-dimensional
    integral over ``a`` (adaptive quadrature, relative error < 1e-10).
    """

    names: tuple[str, ...]
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    lower: Sequence[float | None] | None = None
    upper: Sequence[float | None] | None = None
    max_product: tuple[str, str, float] | None = None
    has_direction: bool = False
    cluster_names: tuple[str, ...] = ()
    log_mass: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(self.names)
        weights = np.array(self.weights, dtype=np.float64)
        means = np.array(self.means, dtype=np.float64)
        variances = np.array(self.variances, dtype=np.float64)
        n_clusters, n_params = weights.size, len(names)
        if weights.ndim != 1 or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError(f"weights must be a non-negative vector with a positive sum; got {weights}.")
        for label, array in (("means", means), ("variances", variances)):
            if array.shape != (n_clusters, n_params):
                raise ValueError(
                    f"{label} must have shape (n_clusters, n_params) = ({n_clusters}, {n_params}) for "
                    f"{n_clusters} weights and parameters {names}; got {array.shape}."
                )
        if np.any(variances <= 0):
            raise ValueError(f"variances must be positive; got {variances.tolist()}.")
        lower = _bounds(self.lower, n_params, -np.inf, "lower")
        upper = _bounds(self.upper, n_params, np.inf, "upper")
        if np.any(lower >= upper):
            raise ValueError(f"every lower bound must be below its upper bound; got {lower} and {upper}.")
        cluster_names = tuple(self.cluster_names) or tuple(f"cluster {k}" for k in range(n_clusters))
        if len(cluster_names) != n_clusters:
            raise ValueError(f"cluster_names has {len(cluster_names)} entries for {n_clusters} clusters.")
        if self.max_product is not None:
            a, b, c = self.max_product
            if a not in names or b not in names:
                raise ValueError(f"max_product names {a!r} and {b!r} must be among {names}.")
            if lower[names.index(a)] < 0:
                raise ValueError(
                    f"max_product needs {a!r} >= 0 (so that a*b < c reads b < c/a); set its lower bound "
                    f"to 0 or more."
                )
            object.__setattr__(self, "max_product", (a, b, float(c)))
        for name, value in (
            ("names", names),
            ("weights", _readonly(weights / weights.sum())),
            ("means", _readonly(means)),
            ("variances", _readonly(variances)),
            ("lower", _readonly(lower)),
            ("upper", _readonly(upper)),
            ("cluster_names", cluster_names),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "log_mass", _readonly(self._cluster_log_mass()))

    @property
    def n_clusters(self) -> int:
        """Number of mixture components K."""
        return int(self.weights.size)

    @property
    def n_params(self) -> int:
        """Number of scalar parameters P."""
        return len(self.names)

    @property
    def stds(self) -> np.ndarray:
        """Standard deviations, shape (K, P), before truncation."""
        return np.sqrt(self.variances)

    def in_support(self, values: np.ndarray) -> np.ndarray:
        """Whether scalar parameter vectors lie inside the truncation region.

        Parameters
        ----------
        values : ndarray, shape (..., P)

        Returns
        -------
        ndarray of bool, shape (...)
        """
        values = np.asarray(values, dtype=np.float64)
        inside = np.all((values >= self.lower) & (values <= self.upper), axis=-1)
        if self.max_product is not None:
            a, b, c = self.max_product
            inside &= values[..., self.names.index(a)] * values[..., self.names.index(b)] < c
        return inside

    def cluster_log_density(self, values: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
        """Log density of each cluster (not weighted) at scalar parameter vectors.

        Parameters
        ----------
        values : ndarray, shape (..., P)
        clusters : ndarray of int, broadcastable to shape (...), optional
            Evaluate only this cluster at each vector.

        Returns
        -------
        ndarray, shape (..., K), or (...) when ``clusters`` is given
            ``log p(values | cluster k)``; ``-inf`` outside the support.
        """
        values = np.asarray(values, dtype=np.float64)
        inside = self.in_support(values)
        if clusters is None:
            means, variances, log_mass = self.means, self.variances, self.log_mass
            values, inside = values[..., None, :], inside[..., None]
        else:
            clusters = np.asarray(clusters)
            means, variances = self.means[clusters], self.variances[clusters]
            log_mass = self.log_mass[clusters]
        z2 = (values - means) ** 2 / variances
        log_normal = -0.5 * (z2 + np.log(2.0 * math.pi * variances)).sum(-1)
        return np.where(inside, log_normal - log_mass, -np.inf)

    def log_density(self, values: np.ndarray) -> np.ndarray:
        """Log density of the scalar mixture (the direction's uniform density is not included).

        Parameters
        ----------
        values : ndarray, shape (..., P)

        Returns
        -------
        ndarray, shape (...)
        """
        return logsumexp(self.cluster_log_density(values) + np.log(self.weights), axis=-1)

    def responsibilities(self, values: np.ndarray) -> np.ndarray:
        """Probability of each cluster given the parameter values, shape (..., K)."""
        joint = self.cluster_log_density(values) + np.log(self.weights)
        return np.exp(joint - logsumexp(joint, axis=-1, keepdims=True))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Draw parameters of ``n`` voxels.

        Parameters
        ----------
        n : int
            Number of draws.
        rng : numpy.random.Generator

        Returns
        -------
        params : dict of ndarray
            One array of shape (n,) per scalar name; ``"n"`` of shape (n, 3), unit vectors, when
            :attr:`has_direction`.
        labels : ndarray of int, shape (n,)
            Cluster of each draw.
        """
        labels = rng.choice(self.n_clusters, size=n, p=self.weights)
        values = np.empty((n, self.n_params))
        todo = np.arange(n)
        for _ in range(_MAX_REJECTION_ROUNDS):
            noise = rng.standard_normal((todo.size, self.n_params))
            draws = self.means[labels[todo]] + self.stds[labels[todo]] * noise
            values[todo] = draws
            todo = todo[~self.in_support(draws)]
            if todo.size == 0:
                break
        else:
            raise RuntimeError(
                f"rejection sampling left {todo.size} of {n} draws outside the support after "
                f"{_MAX_REJECTION_ROUNDS} rounds; the truncation keeps almost none of a cluster's mass."
            )
        params = {name: values[:, i] for i, name in enumerate(self.names)}
        if self.has_direction:
            direction = rng.standard_normal((n, 3))
            params["n"] = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        return params, labels

    def _cluster_log_mass(self) -> np.ndarray:
        """Log of each cluster's Gaussian mass inside the support, shape (K,)."""
        std = self.stds
        low = (self.lower - self.means) / std
        high = (self.upper - self.means) / std
        box = ndtr(high) - ndtr(low)
        if self.max_product is None:
            return np.log(box).sum(-1)
        a, b, c = self.max_product
        ia, ib = self.names.index(a), self.names.index(b)
        others = np.log(np.delete(box, [ia, ib], axis=1)).sum(-1)
        log_mass = np.empty(self.n_clusters)
        for k in range(self.n_clusters):
            mu_a, sd_a, mu_b, sd_b = self.means[k, ia], std[k, ia], self.means[k, ib], std[k, ib]

            def density(x: float) -> float:
                top = min(self.upper[ib], c / x) if x > 0 else self.upper[ib]
                inner = max(ndtr((top - mu_b) / sd_b) - ndtr((self.lower[ib] - mu_b) / sd_b), 0.0)
                return math.exp(-0.5 * ((x - mu_a) / sd_a) ** 2) / (sd_a * math.sqrt(2 * math.pi)) * inner

            # Integrate over mu_a +- 12 sd (beyond that the Gaussian holds < 1e-32 of the mass).
            start = max(self.lower[ia], mu_a - 12 * sd_a)
            stop = min(self.upper[ia], mu_a + 12 * sd_a)
            kink = c / self.upper[ib]  # where c/a meets b's upper bound (0 when unbounded)
            kinks = [kink] if start < kink < stop else None
            mass, _ = quad(density, start, stop, points=kinks, epsabs=0.0, epsrel=1e-12, limit=200)
            log_mass[k] = math.log(mass) + others[k]
        return log_mass


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

    Notes
    -----
    The means are typical powder-averaged values in adult brain (mean diffusivity 0.7-0.9 µm²/ms and
    mean kurtosis about 1 in white matter, higher diffusivity and lower kurtosis in grey matter, free
    diffusion of water at body temperature).  The condition D·K·b_max < 3 keeps every shell before the
    turning point b = 3/(D·K), so the signal decays monotonically with b.  It removes about a quarter
    of the white-matter cluster's Gaussian mass at b_max = 3; the remaining draws keep the cluster's
    weight (re-drawn within the cluster).
    """
    if not b_max > 0:
        raise ValueError(f"b_max={b_max} must be a positive b-value in ms/µm² (3.0 for b = 3000 s/mm²).")
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

    Keyword arguments go to the factory (``b_max`` for ``("msdki", "physical")``).

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


# ---------------------------------------------------------------------------------------- noise
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
    ndarray, same shape as ``signals``

    Notes
    -----
    Rician: :math:`m = |\\nu + \\sigma(\\epsilon_1 + i\\epsilon_2)|`, whose mean tends to the noise floor
    :math:`\\sigma\\sqrt{\\pi/2}` as ν → 0.
    """
    _check_noise_kind(kind)
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(~np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError(f"sigma must be finite and >= 0; got {sigma if sigma.size < 5 else '(array)'}.")
    rng = np.random.default_rng(rng)
    signals = np.asarray(signals, dtype=np.float64)
    real = signals + sigma * rng.standard_normal(signals.shape)
    if kind == "gaussian":
        return real
    return np.hypot(real, sigma * rng.standard_normal(signals.shape))


# ---------------------------------------------------------------------------------------- simulate
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
    model : str
        Registered name of the signal model.
    prior : ClusterPrior
    noise : str
        ``"rician"`` or ``"gaussian"``.
    seed : int
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
    S0 : float or ndarray, shape (n_voxels,)
        Non-diffusion-weighted signal, raw units.
    seed : int
        Seeds ``np.random.default_rng``, which makes every draw (parameters, then noise).

    Returns
    -------
    SimulatedData

    Raises
    ------
    ValueError
        On a non-positive ``snr``, ``S0`` or ``n_voxels``, or a prior whose parameter names or direction
        do not match the model.
    """
    _check_noise_kind(noise)
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


# ---------------------------------------------------------------------------------------- helpers
def _bounds(values: Sequence[float | None] | None, n_params: int, default: float, label: str) -> np.ndarray:
    if values is None:
        return np.full(n_params, default)
    values = list(np.asarray(values, dtype=object).ravel())
    if len(values) != n_params:
        raise ValueError(f"{label} has {len(values)} entries for {n_params} parameters.")
    return np.array([default if v is None else float(v) for v in values], dtype=np.float64)


def _check_noise_kind(kind: str) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {list(NOISE_KINDS)}.")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
