"""A mixture of (optionally truncated) diagonal Gaussians over a model's parameters: the tissue-cluster prior."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import quad
from scipy.special import logsumexp, ndtr

__all__ = ["ClusterPrior"]

# Rejection sampling gives up after this many rounds (a prior whose support holds almost no mass).
_MAX_REJECTION_ROUNDS = 1000


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
        """Probability of each cluster given the parameter values.

        Parameters
        ----------
        values : ndarray, shape (..., P)

        Returns
        -------
        ndarray, shape (..., K)
            Posterior cluster probabilities under the prior; they sum to one over the last axis.
        """
        joint = self.cluster_log_density(values) + np.log(self.weights)
        return np.exp(joint - logsumexp(joint, axis=-1, keepdims=True))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Draw parameters of ``n`` voxels.

        Parameters
        ----------
        n : int
            Number of draws.
        rng : numpy.random.Generator
            Draws the clusters, then the scalars (re-drawing those outside the support), then the
            directions.

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


def _bounds(values: Sequence[float | None] | None, n_params: int, default: float, label: str) -> np.ndarray:
    if values is None:
        return np.full(n_params, default)
    values = list(np.asarray(values, dtype=object).ravel())
    if len(values) != n_params:
        raise ValueError(f"{label} has {len(values)} entries for {n_params} parameters.")
    return np.array([default if v is None else float(v) for v in values], dtype=np.float64)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
