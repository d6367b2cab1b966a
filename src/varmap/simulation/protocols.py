"""Acquisition protocols for simulation: a Fibonacci lattice, an HCP-like multi-shell scheme and a clinical
trace scheme."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from dipy.core.sphere import HemiSphere, disperse_charges

from ..protocol import Protocol

__all__ = ["fibonacci_sphere", "hcp_protocol", "trace_protocol", "STUDY_PROTOCOLS", "study_protocol"]

# Electrostatic repulsion settings for :func:`hcp_protocol`; with 90 directions per shell they give a
# smallest angle between any two lines of 12-15 degrees.
_REPULSION_ITERATIONS = 500
_REPULSION_STEP = 5.0


def fibonacci_sphere(n: int) -> np.ndarray:
    """Nearly uniform unit vectors on the sphere (Fibonacci lattice, deterministic).

    Handy for quick test protocols; :func:`hcp_protocol` spreads directions more evenly.

    Parameters
    ----------
    n : int
        Number of vectors.

    Returns
    -------
    ndarray, shape (n, 3)
        Unit vectors.
    """
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def hcp_protocol(
    *,
    n_b0: int = 18,
    n_directions: int | tuple[int, ...] = 90,
    shells: tuple[float, ...] = (1000.0, 2000.0, 3000.0),
    seed: int = 0,
) -> Protocol:
    """An HCP-like multi-shell protocol with well-spread directions on every shell.

    Parameters
    ----------
    n_b0 : int
        Number of b=0 measurements (placed first); 0 for none (the models then need one more shell).
    n_directions : int or tuple of int
        Number of gradient directions of every shell, or of each shell in the order of ``shells``.
    shells : tuple of float
        b-values of the diffusion-weighted shells, in s/mm².
    seed : int
        Seeds the random starting directions.

    Returns
    -------
    Protocol
        One measurement per b=0 and per direction of every shell (288 with the defaults, as in the
        Human Connectome Project).  Results are cached: equal arguments return the same object.

    Raises
    ------
    ValueError
        On a negative ``n_b0``, a number of directions below 1, no or non-positive shells, or a tuple of
        direction counts whose length is not that of ``shells``.

    Notes
    -----
    Each shell starts from its own set of random unit vectors (drawn one shell after the other from
    ``np.random.default_rng(seed)``), which :func:`dipy.core.sphere.disperse_charges` spreads over the
    hemisphere by antipodally symmetric electrostatic repulsion.  Shells therefore hold different
    direction sets, as in real acquisitions.
    """
    if n_b0 < 0:
        raise ValueError(f"n_b0={n_b0}: give the number of b=0 measurements, 0 or more.")
    shells = tuple(float(b) for b in shells)
    if not shells or any(b <= 0 for b in shells):
        raise ValueError(f"shells={shells}: give one or more positive b-values in s/mm².")
    counts = (n_directions,) * len(shells) if np.ndim(n_directions) == 0 else tuple(n_directions)
    counts = tuple(operator.index(n) for n in counts)  # numpy integers too; a fractional count is refused
    if len(counts) != len(shells):
        raise ValueError(f"n_directions={n_directions}: give one count, or one per shell ({len(shells)}).")
    if min(counts) < 1:
        raise ValueError(f"n_directions={n_directions}: each shell needs at least one direction.")
    return _hcp_protocol(n_b0, counts, shells, seed)


@lru_cache(maxsize=16)
def _hcp_protocol(n_b0: int, counts: tuple[int, ...], shells: tuple[float, ...], seed: int) -> Protocol:
    rng = np.random.default_rng(seed)
    bvals = [np.zeros(n_b0)]
    bvecs = [np.zeros((n_b0, 3))]
    for b, n_directions in zip(shells, counts):
        start = rng.standard_normal((n_directions, 3))
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        spread, _ = disperse_charges(HemiSphere(xyz=start), _REPULSION_ITERATIONS, const=_REPULSION_STEP)
        bvals.append(np.full(n_directions, b))
        bvecs.append(spread.vertices)
    return Protocol.from_bvals_bvecs(np.concatenate(bvals), np.concatenate(bvecs), units="s/mm2")


def trace_protocol(*, n_b0: int = 1, shells: tuple[float, ...] = (1000.0, 2000.0), seed: int = 0) -> Protocol:
    """A clinical "trace" protocol: ``n_b0`` b=0 measurements and the three axes on every shell.

    Parameters
    ----------
    n_b0 : int
        Number of b=0 measurements.
    shells : tuple of float
        Non-zero b-values in s/mm².
    seed : int
        Unused (the directions are fixed); taken so that every study protocol is built the same way.

    Returns
    -------
    Protocol
        ``n_b0 + 3 len(shells)`` measurements (7 with the defaults).
    """
    bvals = np.concatenate([np.zeros(n_b0), np.repeat(np.asarray(shells, dtype=float), 3)])
    bvecs = np.vstack([np.zeros((n_b0, 3)), *[np.eye(3)] * len(shells)])
    return Protocol.from_bvals_bvecs(bvals, bvecs, units="s/mm2")


#: Protocols of the simulation study by name: the function that builds one (called with ``seed=``), its
#: settings and a description.
STUDY_PROTOCOLS: dict[str, tuple[Callable[..., Protocol], dict, str]] = {
    "hcp": (hcp_protocol, {}, "HCP-like: 18 b=0 + 90 directions at 1000, 2000, 3000 s/mm²"),
    "clinical": (hcp_protocol, {"n_b0": 1, "n_directions": 30, "shells": (1000.0, 2000.0)},
                 "clinical: 1 b=0 + 30 directions at 1000, 2000 s/mm²"),
    "abcd": (hcp_protocol, {"n_b0": 7, "n_directions": (6, 15, 15, 60), "shells": (500.0, 1000.0, 2000.0, 3000.0)},
             "ABCD-like: 7 b=0 + 6, 15, 15, 60 directions at 500, 1000, 2000, 3000 s/mm²"),
    "hcp_no_b0": (hcp_protocol, {"n_b0": 0},
                  "HCP-like without its b=0 volumes: 90 directions at 1000, 2000, 3000 s/mm²"),
    "abcd_no_b0": (hcp_protocol, {"n_b0": 0, "n_directions": (6, 15, 15, 60), "shells": (500.0, 1000.0, 2000.0, 3000.0)},
                   "ABCD-like without its b=0 volumes: 6, 15, 15, 60 directions at 500, 1000, 2000, 3000 s/mm²"),
    "trace": (trace_protocol, {}, "clinical trace: 1 b=0 + the three axes at 1000, 2000 s/mm² (7 measurements)"),
}


def study_protocol(name: str, *, seed: int = 0) -> tuple[Protocol, str]:
    """The simulation study's protocol ``name`` (:data:`STUDY_PROTOCOLS`) and its description.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    if name not in STUDY_PROTOCOLS:
        raise ValueError(f"unknown study protocol {name!r}; choose one of {sorted(STUDY_PROTOCOLS)}.")
    builder, settings, description = STUDY_PROTOCOLS[name]
    return builder(seed=seed, **settings), description
