"""Immutable description of a diffusion acquisition: b-values, gradient directions and shells.

b-values are stored in ms/µm² (1 ms/µm² = 1000 s/mm²) so that ``b * D`` is dimensionless with
diffusivities in µm²/ms.  Every factory converts and validates its input once; after that the
arrays are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike

import numpy as np

__all__ = ["Protocol", "ProtocolError", "BVALUE_UNITS", "BVALUE_MAX_RANGES"]

#: Factors converting each accepted b-value unit to ms/µm².
BVALUE_UNITS: dict[str, float] = {"s/mm2": 1e-3, "ms/um2": 1.0, "s/m2": 1e-9}

#: Largest b-value (in each unit) that ``units="auto"`` accepts as that unit, and that ``units="s/mm2"``
#: requires.  Ranges do not overlap: a maximum between them is ambiguous and refused.
BVALUE_MAX_RANGES: dict[str, tuple[float, float]] = {
    "ms/um2": (0.0, 25.0),
    "s/mm2": (100.0, 50_000.0),
    "s/m2": (1e8, 5e10),
}


class ProtocolError(ValueError):
    """An acquisition description that varmap cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Protocol:
    """Acquisition protocol of a diffusion MRI series.

    Build it with :meth:`from_bvals_bvecs` or :meth:`from_fsl`; the constructor expects arrays that
    are already validated and in ms/µm².

    Parameters
    ----------
    bvals : ndarray, shape (n_measurements,)
        b-values in ms/µm².
    bvecs : ndarray, shape (n_measurements, 3)
        Unit gradient directions; rows of b=0 measurements are zero.
    b0_threshold : float
        b-values at or below this (ms/µm²) count as b=0.
    shell_tolerance : float
        Non-zero b-values closer than this (ms/µm²) to their neighbour belong to one shell.
    echo_times : ndarray, shape (n_measurements,), optional
        Echo time of each measurement in ms (for relaxation-diffusion models).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    b0_threshold: float = 0.05
    shell_tolerance: float = 0.1
    echo_times: np.ndarray | None = None
    shell_index: np.ndarray = field(init=False, repr=False)
    shell_bvals: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bvals = np.array(self.bvals, dtype=np.float64)
        bvecs = np.array(self.bvecs, dtype=np.float64)
        if bvals.ndim != 1 or bvecs.shape != (bvals.size, 3):
            raise ProtocolError(
                f"bvals must have shape (N,) and bvecs (N, 3); got {bvals.shape} and {bvecs.shape}."
            )
        b0 = bvals <= self.b0_threshold
        bvecs[b0] = 0.0
        shell_index, shell_bvals = _group_shells(bvals, b0, self.shell_tolerance)
        object.__setattr__(self, "bvals", _readonly(bvals))
        object.__setattr__(self, "bvecs", _readonly(bvecs))
        object.__setattr__(self, "shell_index", _readonly(shell_index))
        object.__setattr__(self, "shell_bvals", _readonly(shell_bvals))
        if self.echo_times is not None:
            te = np.array(self.echo_times, dtype=np.float64)
            if te.shape != bvals.shape:
                raise ProtocolError(
                    f"echo_times has shape {te.shape} but there are {bvals.size} measurements."
                )
            object.__setattr__(self, "echo_times", _readonly(te))

    # ------------------------------------------------------------------ factories
    @classmethod
    def from_bvals_bvecs(
        cls,
        bvals: np.ndarray,
        bvecs: np.ndarray,
        *,
        units: str = "auto",
        b0_threshold: float = 50.0,
        shell_tolerance: float = 100.0,
        norm_tolerance: float = 0.1,
        echo_times: np.ndarray | None = None,
    ) -> "Protocol":
        """Build a protocol from b-values and gradient directions.

        Parameters
        ----------
        bvals : array_like, shape (N,)
            b-values, in ``units``.
        bvecs : array_like, shape (N, 3) or (3, N)
            Gradient directions (FSL files hold them as (3, N)).  Those of b=0 measurements are
            ignored (NaN there is read as no direction, as dipy does).
        units : {"auto", "s/mm2", "ms/um2", "s/m2"}
            Unit of ``bvals``.  ``"auto"`` infers it from the largest b-value and refuses a value that
            fits no unit's usual range.  ``"s/mm2"`` (the unit of FSL bvals files) refuses a largest
            non-zero b-value outside 100-50000 s/mm², naming the unit it looks like (ms/µm² below, s/m²
            above) and the fix.
        b0_threshold : float
            b-values at or below this count as b=0, in s/mm².
        shell_tolerance : float
            Non-zero b-values within this distance (s/mm²) of their neighbour form one shell, so
            b=995 and b=1005 are one shell.
        norm_tolerance : float
            Directions of diffusion-weighted measurements whose length differs from 1 by at most this
            are renormalised; longer or shorter ones are refused.
        echo_times : array_like, shape (N,), optional
            Echo times in ms.

        Returns
        -------
        Protocol

        Raises
        ------
        ProtocolError
            On wrong shapes, non-finite or negative values, unknown or implausible units, or non-unit
            directions.
        """
        bvals = np.asarray(bvals, dtype=np.float64).squeeze()
        if bvals.ndim != 1:
            raise ProtocolError(f"bvals must be one row of numbers; got an array of shape {bvals.shape}.")
        if not np.all(np.isfinite(bvals)):
            raise ProtocolError("bvals contains NaN or Inf; every measurement needs a finite b-value.")
        if np.any(bvals < 0):
            raise ProtocolError(f"bvals contains negative values (min {bvals.min():g}); b-values are >= 0.")
        to_ms_um2 = _unit_factor(bvals, units)
        bvecs = _as_rows(np.asarray(bvecs, dtype=np.float64), bvals.size)
        b0_ms = b0_threshold * 1e-3
        bvals_ms = bvals * to_ms_um2
        weighted = bvals_ms > b0_ms
        not_finite = ~np.all(np.isfinite(bvecs), axis=1)
        missing = not_finite & weighted
        if np.any(missing):
            first = int(np.flatnonzero(missing)[0])
            raise ProtocolError(
                f"bvecs contains NaN or Inf for {missing.sum()} diffusion-weighted "
                f"measurement(s) (first: measurement {first}, b = {bvals[first]:g}); every measurement with "
                "b > 0 needs a finite direction."
            )
        # a b=0 measurement has no direction: NaN there (some scanners' and dipy's files) means none; a new
        # array, normalised in place below
        bvecs = np.where(not_finite[:, None], 0.0, bvecs)
        norms = np.linalg.norm(bvecs, axis=1)
        undirected = weighted & (norms == 0.0)
        if np.any(undirected):
            first = int(np.flatnonzero(undirected)[0])
            cause = (
                f"a b=0 volume above the b=0 threshold ({b0_threshold:g} s/mm²): raise b0_threshold"
                if bvals_ms[first] < _LOW_B_MS_UM2
                else "usually the scanner's isotropic (trace) image, the mean of other measurements, which some "
                "scanners (Philips) append: remove that volume from the image, the bvals and the bvecs (dcm2niix "
                "does so by default)"
            )
            raise ProtocolError(
                f"{undirected.sum()} diffusion-weighted measurement(s) have no gradient direction (measurement "
                f"{first} has b = {bvals[first]:g} and bvec 0 0 0); that is {cause}."
            )
        bad = weighted & (np.abs(norms - 1.0) > norm_tolerance)
        if np.any(bad):
            first = int(np.flatnonzero(bad)[0])
            raise ProtocolError(
                f"{bad.sum()} gradient direction(s) of diffusion-weighted measurements are not unit "
                f"vectors (measurement {first} has length {norms[first]:.3f}); fix the bvecs file, or "
                f"rescale b-values by |g|^2 if the scanner encoded b in the vector length."
            )
        bvecs[weighted] /= norms[weighted, None]
        return cls(
            bvals=bvals_ms,
            bvecs=bvecs,
            b0_threshold=b0_ms,
            shell_tolerance=shell_tolerance * 1e-3,
            echo_times=echo_times,
        )

    @classmethod
    def from_fsl(cls, bvals_path: str | PathLike, bvecs_path: str | PathLike, **kwargs) -> "Protocol":
        """Read FSL-style ``bvals`` (one row) and ``bvecs`` (three rows) text files.

        The files are read by :func:`varmap.io.load_protocol`, whose errors name the file, what is
        wrong and the fix.

        Parameters
        ----------
        bvals_path, bvecs_path : path
            b-values in s/mm² (unless ``units`` says otherwise); directions as 3 rows (or N rows of 3).
        **kwargs
            Passed to :meth:`from_bvals_bvecs` (``units``, ``b0_threshold``...).

        Raises
        ------
        FileNotFoundError, ProtocolError
            ``varmap.io.InputError`` (a ``ValueError``) for a file that is not a table of the right
            shape.
        """
        from .io import load_protocol  # io reads files and depends on this module, not the reverse

        return load_protocol(bvals_path, bvecs_path, **kwargs)

    # ------------------------------------------------------------------ derived facts
    @property
    def n_measurements(self) -> int:
        """Number of measurements (volumes)."""
        return int(self.bvals.size)

    @property
    def b0_mask(self) -> np.ndarray:
        """Boolean mask of b=0 measurements, shape (n_measurements,)."""
        return self.bvals <= self.b0_threshold

    @property
    def n_b0(self) -> int:
        """Number of b=0 measurements."""
        return int(self.b0_mask.sum())

    @property
    def dw_shell_bvals(self) -> np.ndarray:
        """b-values (ms/µm²) of the non-zero shells, ascending."""
        return self.shell_bvals[self.shell_bvals > self.b0_threshold]

    @property
    def shell_counts(self) -> np.ndarray:
        """Number of measurements in each shell of :attr:`shell_bvals`."""
        return np.bincount(self.shell_index, minlength=self.shell_bvals.size)

    def powder_average(self, signals: np.ndarray) -> np.ndarray:
        """Direction-average signals within each shell.

        Parameters
        ----------
        signals : ndarray, shape (..., n_measurements)

        Returns
        -------
        ndarray, shape (..., n_shells)
            Mean signal per shell, in the order of :attr:`shell_bvals` (b=0 first when present).
        """
        signals = np.asarray(signals)
        if not np.issubdtype(signals.dtype, np.inexact):
            # integer images (int16 NIfTI) would make the 1/count weights below integer zeros
            signals = signals.astype(np.float64)
        if signals.ndim == 0 or signals.shape[-1] != self.n_measurements:
            raise ProtocolError(
                f"signals of shape {signals.shape} need {self.n_measurements} measurements on the last "
                f"axis, one per measurement of the protocol."
            )
        one_hot = np.zeros((self.n_measurements, self.shell_bvals.size), dtype=signals.dtype)
        one_hot[np.arange(self.n_measurements), self.shell_index] = 1.0 / self.shell_counts[self.shell_index]
        return signals @ one_hot

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Protocol):
            return NotImplemented
        same_te = (self.echo_times is None and other.echo_times is None) or (
            self.echo_times is not None
            and other.echo_times is not None
            and np.allclose(self.echo_times, other.echo_times)
        )
        return (
            self.n_measurements == other.n_measurements
            and np.allclose(self.bvals, other.bvals, atol=1e-6)
            and np.allclose(self.bvecs, other.bvecs, atol=1e-6)
            and same_te
        )

    def __hash__(self) -> int:
        return hash((self.n_measurements, np.round(self.bvals, 6).tobytes()))

    def __repr__(self) -> str:
        shells = ", ".join(f"{b * 1000:.0f}" for b in self.dw_shell_bvals)
        return (
            f"Protocol({self.n_measurements} measurements, {self.n_b0} b=0, "
            f"shells [{shells}] s/mm²)"
        )

    def to_dict(self) -> dict:
        """JSON-serialisable description (b-values in s/mm²)."""
        return {
            "bvals_s_per_mm2": (self.bvals * 1000).round(6).tolist(),
            "bvecs": self.bvecs.round(8).tolist(),
            "b0_threshold_s_per_mm2": self.b0_threshold * 1000,
            "shell_tolerance_s_per_mm2": self.shell_tolerance * 1000,
            "echo_times_ms": None if self.echo_times is None else self.echo_times.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Protocol":
        """Inverse of :meth:`to_dict`."""
        return cls.from_bvals_bvecs(
            data["bvals_s_per_mm2"],
            data["bvecs"],
            units="s/mm2",
            b0_threshold=data["b0_threshold_s_per_mm2"],
            shell_tolerance=data["shell_tolerance_s_per_mm2"],
            echo_times=data.get("echo_times_ms"),
        )


#: Below this b-value (ms/µm²) a measurement without direction is taken for a b=0 volume, not a trace image.
_LOW_B_MS_UM2 = 0.2


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _unit_factor(bvals: np.ndarray, units: str) -> float:
    b_max = float(bvals.max(initial=0.0))
    if units == "s/mm2":
        _check_s_per_mm2(b_max)
    if units != "auto":
        if units not in BVALUE_UNITS:
            raise ProtocolError(f"units={units!r} is not known; use one of {['auto', *BVALUE_UNITS]}.")
        return BVALUE_UNITS[units]
    if b_max == 0.0:
        return 1.0
    for unit, (low, high) in BVALUE_MAX_RANGES.items():
        if low < b_max <= high:
            return BVALUE_UNITS[unit]
    raise ProtocolError(
        f"cannot tell the unit of the b-values: the largest is {b_max:g}, which is not a usual maximum "
        f"in s/mm² (100-50000), ms/µm² (up to 25) or s/m² (1e8-5e10). Check the bvals file, or pass "
        f"units= explicitly."
    )


def _check_s_per_mm2(b_max: float) -> None:
    """Refuse b-values said to be in s/mm² whose largest (non-zero) value is implausible in that unit."""
    low, high = BVALUE_MAX_RANGES["s/mm2"]
    if b_max == 0.0 or low < b_max <= high:
        return
    if b_max <= BVALUE_MAX_RANGES["ms/um2"][1]:
        hint = "they look like ms/µm² (1 ms/µm² = 1000 s/mm²): multiply them by 1000"
    elif b_max > 1e6:
        hint = "they look like s/m² (1 s/mm² = 10⁶ s/m²): divide them by 10⁶"
    else:
        hint = "check the bvals file"
    raise ProtocolError(
        f"the b-values should be in s/mm² (the unit of FSL bvals files) but the largest is {b_max:g}, outside "
        f"the usual {low:g}-{high:g} s/mm²; {hint}. Fix the unit of the b-values, or pass the unit they are "
        f"in (units=)."
    )


def _as_rows(bvecs: np.ndarray, n_measurements: int) -> np.ndarray:
    if bvecs.ndim == 2 and bvecs.shape == (n_measurements, 3):
        return bvecs
    if bvecs.ndim == 2 and bvecs.shape == (3, n_measurements):
        return bvecs.T
    raise ProtocolError(
        f"bvecs must have shape ({n_measurements}, 3) or (3, {n_measurements}) to match "
        f"{n_measurements} b-values; got {bvecs.shape}."
    )


def _group_shells(bvals: np.ndarray, b0: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Cluster b-values into shells; b=0 measurements form shell 0 when present."""
    shell_index = np.zeros(bvals.size, dtype=np.int64)
    shell_bvals: list[float] = [0.0] if b0.any() else []
    weighted = np.flatnonzero(~b0)
    if weighted.size:
        order = weighted[np.argsort(bvals[weighted], kind="stable")]
        breaks = np.flatnonzero(np.diff(bvals[order]) > tolerance) + 1
        for group in np.split(order, breaks):
            shell_index[group] = len(shell_bvals)
            shell_bvals.append(float(bvals[group].mean()))
    return shell_index, np.asarray(shell_bvals)
