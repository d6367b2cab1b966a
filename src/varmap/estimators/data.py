"""From raw voxel signals to what estimators train on: S0, normalised observables, noise level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..signal_models import Parameter, SignalModel

__all__ = [
    "PreparedData",
    "ValidVoxels",
    "valid_voxels",
    "prepare_signals",
    "estimate_sigma_from_b0",
    "S0_SCALE",
    "decode_unconstrained",
    "initial_unconstrained",
    "S0_LEVEL",
]

#: Nuisance factor on the mean-b0 normalisation, fitted with the tissue parameters by voxelwise fits.
S0_SCALE = Parameter("S0_scale", "1", 0.5, 2.0, "S0 relative to the mean of the b=0 measurements", typical=1.0)

#: S0 relative to the dataset's median b=0 signal, decoded by the network estimators.  Modelling the
#: level across voxels (rather than each voxel's own normalisation) lets a learned prior use what all
#: voxels share about S0.
S0_LEVEL = Parameter("S0_level", "1", 0.0, 8.0, "S0 relative to the median b=0 signal of the data", typical=1.0)


@dataclass
class PreparedData:
    """Signals of the usable voxels, ready for an estimator.

    Attributes
    ----------
    valid : ndarray of bool, shape (n_voxels,)
        Voxels with finite signals and a positive mean b=0 signal.
    S0_mean : ndarray, shape (n_voxels,)
        Mean b=0 signal (raw units); 0 where not valid.
    observables : ndarray, shape (n_valid, n_observables)
        Model observables of the normalised signals (float32).
    sigma_normalised : ndarray, shape (n_valid,)
        Noise standard deviation of one measurement divided by the voxel's mean b=0 signal.
    S0_reference : float
        Median mean-b=0 signal of the valid voxels (raw units), the reference of :data:`S0_LEVEL`.
    """

    valid: np.ndarray
    S0_mean: np.ndarray
    observables: np.ndarray
    sigma_normalised: np.ndarray
    S0_reference: float

    @property
    def S0_relative(self) -> np.ndarray:
        """Mean b=0 signal of the valid voxels relative to :attr:`S0_reference`, shape (n_valid,)."""
        return (self.S0_mean[self.valid] / self.S0_reference).astype(np.float32)

    @property
    def n_excluded(self) -> int:
        """Number of voxels left out because of NaN/Inf values or a non-positive b=0 signal."""
        return int((~self.valid).sum())


@dataclass(frozen=True)
class ValidVoxels:
    """Which voxels can be fitted, and why the others cannot.

    Attributes
    ----------
    valid : ndarray of bool, shape (n_voxels,)
        Finite signals and a positive mean b=0 signal.
    S0_mean : ndarray, shape (n_voxels,)
        Mean b=0 signal (raw units, float64); 0 where not valid.
    n_nonfinite : int
        Voxels with a NaN or Inf value.
    n_nonpositive_b0 : int
        Voxels with finite values whose mean b=0 signal is not positive.
    """

    valid: np.ndarray
    S0_mean: np.ndarray
    n_nonfinite: int
    n_nonpositive_b0: int

    @property
    def n_excluded(self) -> int:
        """Voxels that are not fitted."""
        return self.n_nonfinite + self.n_nonpositive_b0


def valid_voxels(signals: np.ndarray, b0_mask: np.ndarray) -> ValidVoxels:
    """The rule of which voxels are fitted: finite signals and a positive mean b=0 signal.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    b0_mask : ndarray of bool, shape (n_measurements,)
        The b=0 measurements.

    Returns
    -------
    ValidVoxels
    """
    signals = np.asarray(signals)
    finite = np.empty(len(signals), dtype=bool)
    for start in range(0, len(signals), _PREPARE_CHUNK):
        finite[start : start + _PREPARE_CHUNK] = np.isfinite(signals[start : start + _PREPARE_CHUNK]).all(axis=1)
    S0_mean = np.where(finite, signals[:, b0_mask].mean(axis=1, dtype=np.float64), 0.0)
    valid = finite & (S0_mean > 0)
    return ValidVoxels(
        valid=valid,
        S0_mean=np.where(valid, S0_mean, 0.0),
        n_nonfinite=int((~finite).sum()),
        n_nonpositive_b0=int((finite & ~valid).sum()),
    )


def estimate_sigma_from_b0(signals: np.ndarray, b0_mask: np.ndarray) -> float | None:
    """Noise standard deviation from repeated b=0 measurements, pooled over voxels.

    The median of the per-voxel unbiased variances, divided by the median of a χ²_k/k variable
    (k = n_b0 - 1), is robust to voxels with motion or artefacts.  Returns ``None`` with fewer than
    two b=0 measurements.  At the b=0 SNR of brain tissue the Rician noise is close to Gaussian.
    """
    n_b0 = int(b0_mask.sum())
    if n_b0 < 2 or signals.shape[0] == 0:
        return None
    variances = np.var(signals[:, b0_mask], axis=1, ddof=1, dtype=np.float64)
    dof = n_b0 - 1
    return float(np.sqrt(np.median(variances) / (stats.chi2.median(dof) / dof)))


#: Voxels normalised at a time by :func:`prepare_signals`.
_PREPARE_CHUNK = 65536


def prepare_signals(signals: np.ndarray, model: SignalModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate raw signals and normalise them by each voxel's mean b=0 signal.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    model : SignalModel

    Returns
    -------
    valid : ndarray of bool, shape (n_voxels,)
    S0_mean : ndarray, shape (n_voxels,)
    observables : ndarray, shape (n_valid, n_observables), float32
    """
    signals = np.asarray(signals)
    protocol = model.protocol
    if signals.ndim != 2 or signals.shape[1] != protocol.n_measurements:
        raise ValueError(
            f"signals must have shape (n_voxels, {protocol.n_measurements}) to match the protocol; got "
            f"{signals.shape}. Reshape images to (n_voxels, n_volumes) or check bvals/bvecs."
        )
    voxels = valid_voxels(signals, protocol.b0_mask)
    valid, S0_mean = voxels.valid, voxels.S0_mean
    # float32 and in chunks: a whole-brain matrix is ~1 GB per copy, and its observables (shell
    # averages for MS-DKI) may be far smaller.
    valid_index = np.flatnonzero(valid)
    parts = []
    for start in range(0, valid_index.size, _PREPARE_CHUNK):
        index = valid_index[start : start + _PREPARE_CHUNK]
        normalised = signals[index].astype(np.float32, copy=False) / S0_mean[index, None].astype(np.float32)
        parts.append(model.observables(normalised).astype(np.float32, copy=False))
    observables = np.concatenate(parts) if parts else np.zeros((0, model.n_observables), dtype=np.float32)
    return valid, S0_mean, observables


def initial_unconstrained(model: SignalModel, s0_parameter: Parameter = S0_SCALE) -> torch.Tensor:
    """Unconstrained vector (n_packed + 1,) of the model's typical values and the typical S0 factor."""
    s0 = s0_parameter.to_unconstrained(torch.tensor(s0_parameter.start, dtype=torch.float64))
    return torch.cat([model.initial_unconstrained(), s0[None]])


def decode_unconstrained(
    model: SignalModel, unconstrained: torch.Tensor, s0_parameter: Parameter = S0_SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split unconstrained vectors (..., n_packed + 1) into packed parameters and the S0 factor.

    Returns
    -------
    packed : Tensor, shape (..., n_packed)
    S0_factor : Tensor, shape (..., 1)
        ``s0_parameter`` in its bounds (:data:`S0_SCALE` or :data:`S0_LEVEL`).
    """
    packed = model.constrain(unconstrained[..., :-1])
    return packed, s0_parameter.to_bounded(unconstrained[..., -1:])
