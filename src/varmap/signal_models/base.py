"""The contract every physics model follows: named bounded parameters and one pure forward function."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..protocol import Protocol, ProtocolError

__all__ = ["Parameter", "SignalModel"]


@dataclass(frozen=True)
class Parameter:
    """A scalar tissue parameter with its unit and physical range.

    Parameters
    ----------
    name : str
        Symbol as physicists write it (``"D"``, ``"K"``, ``"f"``).
    unit : str
        Unit of the value (``"µm²/ms"``, ``"1"`` for dimensionless).
    low, high : float
        Physical range; estimators reach it through a smooth sigmoid, never a clamp.
    description : str
        One line for tables and sidecars.
    typical : float, optional
        A typical tissue value, used as the starting point of fits; default the middle of the range.
    """

    name: str
    unit: str
    low: float
    high: float
    description: str
    typical: float | None = None

    @property
    def start(self) -> float:
        """Starting value of fits: :attr:`typical`, or the middle of the range."""
        return 0.5 * (self.low + self.high) if self.typical is None else self.typical

    def edge_fraction(self, dtype: torch.dtype = torch.float64) -> float:
        """Fraction of the range that :meth:`to_bounded` leaves free at each end.

        A plain scaled sigmoid saturates to exactly ``low`` or ``high`` in floating point
        (``sigmoid(40) == 1.0`` in float64, ``sigmoid(17) == 1.0`` in float32), so the open interval
        is shrunk by this small fraction, large enough to stay strict in ``dtype``.
        """
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        scale = max(abs(self.low), abs(self.high)) / (self.high - self.low)
        return max(1e-6, 8.0 * torch.finfo(dtype).eps * scale)

    def bounded_affine(self, dtype: torch.dtype = torch.float64) -> tuple[float, float]:
        """``(offset, scale)`` of :meth:`to_bounded`, ``offset + scale · sigmoid(u)``."""
        edge, width = self.edge_fraction(dtype), self.high - self.low
        return self.low + width * edge, width * (1.0 - 2.0 * edge)

    def to_bounded(self, unconstrained: torch.Tensor) -> torch.Tensor:
        """Map an unconstrained value strictly into ``(low, high)`` by a scaled sigmoid.

        Notes
        -----
        ``low + (high - low) * (e + (1 - 2e) * sigmoid(u))`` with ``e`` from :meth:`edge_fraction`, so
        even saturated inputs (``u = ±50``) stay strictly inside the bounds (the margin is several
        roundings wide); ``u = 0`` maps to the middle.  Evaluated as :meth:`bounded_affine`.
        """
        offset, scale = self.bounded_affine(unconstrained.dtype)
        return offset + scale * torch.sigmoid(unconstrained)

    def to_unconstrained(self, value: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
        """Inverse of :meth:`to_bounded`; values at or beyond the bounds are pulled inside by ``margin``."""
        edge = self.edge_fraction(value.dtype)
        unit = ((value - self.low) / (self.high - self.low) - edge) / (1.0 - 2.0 * edge)
        return torch.logit(unit.clamp(margin, 1.0 - margin))


class SignalModel(ABC):
    """A physics forward model bound to an acquisition protocol.

    A model predicts *observables* from packed parameter vectors.  Observables are what the estimators
    compare with the data: individual normalised measurements, or (for direction-averaged models) the
    normalised mean signal of each shell.  Packed parameters hold the scalar parameters in the order of
    :attr:`parameters`, followed by the three components of a unit fibre direction when
    :attr:`has_direction` is true.

    Parameters
    ----------
    protocol : Protocol
        The acquisition; a model refuses one it cannot fit.
    """

    name: ClassVar[str]
    parameters: ClassVar[tuple[Parameter, ...]]
    has_direction: ClassVar[bool] = False
    #: Whether a learned prior's tissue components may correlate the model's parameters (``"tissue"``)
    #: or hold each of them uncorrelated (``"none"``): the default of gmvae's ``component_correlations``.
    component_correlations: ClassVar[str] = "tissue"

    #: Non-zero shells the model needs where the protocol has no b=0 measurement: the signals are then
    #: normalised by their extrapolation to b=0 (:func:`varmap.estimators.data.reference_intensity`) and
    #: S0 is one more unknown that the shells must determine besides the tissue parameters.
    min_shells_without_b0: ClassVar[int] = 2

    def __init__(self, protocol: Protocol) -> None:
        n_shells = protocol.dw_shell_bvals.size
        if protocol.n_b0 == 0 and n_shells < self.min_shells_without_b0:
            raise ProtocolError(
                f"{self.name} without a b=0 measurement needs at least {self.min_shells_without_b0} non-zero "
                f"shells, to determine S0 beside the tissue parameters; the protocol has no b=0 and {n_shells} "
                f"shell(s) (smallest b-value {protocol.bvals.min() * 1000:g} s/mm²). Add the b=0 volumes of "
                "the scan."
            )
        self.check_protocol(protocol)
        self.protocol = protocol

    # -------------------------------------------------------------- to implement
    @abstractmethod
    def check_protocol(self, protocol: Protocol) -> None:
        """Raise :class:`ProtocolError` naming what is missing if the model cannot be fitted."""

    @abstractmethod
    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """Predict normalised observables, shape (..., n_observables), from packed parameters."""

    @abstractmethod
    def observables(self, normalised_signals: np.ndarray) -> np.ndarray:
        """Turn normalised signals (..., n_measurements) into observables (..., n_observables)."""

    @property
    @abstractmethod
    def observation_counts(self) -> np.ndarray:
        """Number of measurements averaged into each observable, shape (n_observables,)."""

    # -------------------------------------------------------------- shared
    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the scalar parameters, in packed order."""
        return tuple(p.name for p in self.parameters)

    @property
    def n_scalars(self) -> int:
        """Number of scalar parameters."""
        return len(self.parameters)

    @property
    def n_packed(self) -> int:
        """Length of a packed parameter vector (scalars plus 3 direction components)."""
        return self.n_scalars + 3 * self.has_direction

    @property
    def n_observables(self) -> int:
        """Number of observables the model predicts."""
        return int(self.observation_counts.size)

    def units(self) -> dict[str, str]:
        """Unit of every output, direction included."""
        units = {p.name: p.unit for p in self.parameters}
        if self.has_direction:
            units["n"] = "unit vector"
        return units

    def constrain(self, unconstrained: torch.Tensor) -> torch.Tensor:
        """Map unconstrained vectors (..., n_packed) to packed parameters inside the physical bounds.

        Scalars pass through scaled sigmoids; the direction part is normalised to unit length.
        """
        # every scalar's Parameter.to_bounded at once (the same float operations, a few instead of a few per
        # parameter: on a small batch, each operation's overhead is what a training step costs)
        offset, scale = _bounded_affines(self.parameters, unconstrained.dtype, unconstrained.device)
        packed = offset + scale * torch.sigmoid(unconstrained[..., : self.n_scalars])
        if self.has_direction:
            vector = unconstrained[..., self.n_scalars : self.n_scalars + 3]
            direction = vector / vector.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            packed = torch.cat([packed, direction], dim=-1)
        return packed

    def unconstrain(self, packed: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`constrain` (directions are kept as unit vectors)."""
        scalars = [p.to_unconstrained(packed[..., i]) for i, p in enumerate(self.parameters)]
        out = torch.stack(scalars, dim=-1)
        if self.has_direction:
            out = torch.cat([out, packed[..., self.n_scalars :]], dim=-1)
        return out

    def initial_unconstrained(self) -> torch.Tensor:
        """Unconstrained vector (n_packed,) of the typical starting values (direction part zero)."""
        start = torch.tensor([p.start for p in self.parameters], dtype=torch.float64)
        scalars = torch.stack([p.to_unconstrained(start[i]) for i, p in enumerate(self.parameters)])
        return torch.cat([scalars, torch.zeros(3 * self.has_direction, dtype=torch.float64)])

    def pack(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """Stack a dict of parameter arrays into packed vectors (..., n_packed)."""
        missing = [name for name in self.parameter_names if name not in params]
        if self.has_direction and "n" not in params:
            missing.append("n")
        if missing:
            raise KeyError(f"{self.name} needs parameters {missing}; got {sorted(params)}.")
        columns = [np.asarray(params[name], dtype=np.float64)[..., None] for name in self.parameter_names]
        if self.has_direction:
            columns.append(np.asarray(params["n"], dtype=np.float64))
        return np.concatenate(columns, axis=-1)

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """Split packed vectors into a dict of named arrays (direction under ``"n"``)."""
        out = {name: packed[..., i] for i, name in enumerate(self.parameter_names)}
        if self.has_direction:
            out["n"] = packed[..., self.n_scalars : self.n_scalars + 3]
        return out

    def predict(self, params: dict[str, np.ndarray], *, S0: np.ndarray | float = 1.0) -> np.ndarray:
        """Predict every measurement (not observables) for named parameters, as numpy.

        Parameters
        ----------
        params : dict of ndarray
            Scalar parameters of shape (...,) and, for directional models, ``"n"`` of shape (..., 3).
        S0 : float or ndarray, shape (...,)
            Non-diffusion-weighted signal.

        Returns
        -------
        ndarray, shape (..., n_measurements)
        """
        packed = torch.as_tensor(self.pack(params))
        with torch.no_grad():
            signal = self.measurement_forward(packed).numpy()
        return np.asarray(S0, dtype=np.float64)[..., None] * signal

    def measurement_forward(self, packed: torch.Tensor) -> torch.Tensor:
        """Predict every normalised measurement (..., n_measurements); used by simulation.

        Models whose observables are the measurements themselves return :meth:`forward`.
        """
        return self.forward(packed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.protocol!r})"


@functools.lru_cache(maxsize=64)
def _bounded_affines(
    parameters: tuple[Parameter, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets and scales of :meth:`Parameter.bounded_affine` of ``parameters``, as two tensors."""
    offsets, scales = zip(*(p.bounded_affine(dtype) for p in parameters))
    return torch.tensor(offsets, dtype=dtype, device=device), torch.tensor(scales, dtype=dtype, device=device)
