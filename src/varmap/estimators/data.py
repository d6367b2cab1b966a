"""From raw voxel signals to what estimators work on: the valid voxels, the noise level, the observables.

Every decision about the input is made here once: which voxels are fitted (:func:`valid_voxels`), which
noise level is used (:func:`prepare_signals`), and in which units the estimators see the signals.

Units.  Two scales, each used for one thing:

- a voxel's *observables* are its signals divided by its own mean b=0 signal (the usual S/S0 of
  diffusion MRI), so the physics model predicts them from the tissue parameters alone;
- intensities that differ between voxels -- the mean b=0 signal itself (``b0_mean``) and the S0 that
  estimators return -- are in *reference units*: raw intensities divided by one number per dataset, the
  ``signal_scale`` (the median over valid voxels of the mean b=0 signal).  Multiplying by
  ``signal_scale`` gives raw intensities back.

A voxel's noise level in the units of its observables is therefore ``sigma / (signal_scale · b0_mean)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["ValidVoxels", "valid_voxels", "estimate_sigma_from_b0", "PreparedData", "prepare_signals"]

#: Voxels handled at a time while checking and converting (a whole brain is ~1 GB per float32 copy).
_CHUNK = 65536


@dataclass(frozen=True)
class ValidVoxels:
    """Which voxels can be fitted, and why the others cannot.

    Attributes
    ----------
    valid : ndarray of bool, shape (n_voxels,)
        Finite signals and a positive mean b=0 signal.
    b0_mean_raw : ndarray, shape (n_voxels,)
        Mean b=0 signal (raw units, float64); 0 where not valid.
    n_nonfinite : int
        Voxels with a NaN or Inf value.
    n_nonpositive_b0 : int
        Voxels with finite values whose mean b=0 signal is not positive.
    """

    valid: np.ndarray
    b0_mean_raw: np.ndarray
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
    for start in range(0, len(signals), _CHUNK):
        finite[start : start + _CHUNK] = np.isfinite(signals[start : start + _CHUNK]).all(axis=1)
    b0_mean_raw = np.where(finite, signals[:, b0_mask].mean(axis=1, dtype=np.float64), 0.0)
    valid = finite & (b0_mean_raw > 0)
    return ValidVoxels(
        valid=valid,
        b0_mean_raw=np.where(valid, b0_mean_raw, 0.0),
        n_nonfinite=int((~finite).sum()),
        n_nonpositive_b0=int((finite & ~valid).sum()),
    )


def estimate_sigma_from_b0(b0_signals: np.ndarray) -> float | None:
    """Noise standard deviation from repeated b=0 measurements, pooled over voxels.

    The median of the per-voxel unbiased variances, divided by the median of a χ²_k/k variable
    (k = n_b0 - 1), is robust to voxels with motion or artefacts.  At the b=0 SNR of brain tissue the
    Rician noise is close to Gaussian.

    Parameters
    ----------
    b0_signals : ndarray, shape (n_voxels, n_b0)
        The b=0 measurements of valid voxels (raw units).

    Returns
    -------
    float or None
        σ in the units of the signals; ``None`` with fewer than two b=0 measurements or no voxel.
    """
    n_voxels, n_b0 = b0_signals.shape
    if n_b0 < 2 or n_voxels == 0:
        return None
    variances = np.var(b0_signals, axis=1, ddof=1, dtype=np.float64)
    dof = n_b0 - 1
    return float(np.sqrt(np.median(variances) / (stats.chi2.median(dof) / dof)))


@dataclass
class PreparedData:
    """The valid voxels of a scan, in reference units (see the module's notes).

    Attributes
    ----------
    valid : ndarray of bool, shape (n_voxels,)
        Voxels with finite signals and a positive mean b=0 signal (:func:`valid_voxels`).
    signal_scale : float
        Raw intensity of one reference unit: the median mean-b=0 signal of the valid voxels.
    b0_mean : ndarray, shape (n_valid,)
        Mean b=0 signal of each valid voxel, reference units (float64).
    observables : ndarray, shape (n_valid, n_observables), float32
        The model's observables of each valid voxel's signals divided by its mean b=0 signal.
    sigma : float
        Noise standard deviation of one measurement, raw units.
    sigma_source : str
        Where ``sigma`` came from.
    """

    valid: np.ndarray
    signal_scale: float
    b0_mean: np.ndarray
    observables: np.ndarray
    sigma: float
    sigma_source: str

    @property
    def sigma_normalised(self) -> np.ndarray:
        """Noise standard deviation of one measurement in the units of each voxel's observables, shape
        (n_valid,), float32."""
        return (self.sigma / (self.signal_scale * self.b0_mean)).astype(np.float32)

    @property
    def n_valid(self) -> int:
        """Voxels to fit."""
        return int(self.observables.shape[0])


def prepare_signals(signals: np.ndarray, model, *, sigma: float | None = None) -> PreparedData:
    """Check raw signals, choose the noise level and convert the valid voxels to reference units.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    model : SignalModel
        Its protocol fixes the measurements; its ``observables`` turns normalised signals into what is
        fitted (shell averages for MS-DKI, the measurements themselves for ball-and-stick).
    sigma : float, optional
        Noise standard deviation of one measurement in raw units.  Default: estimated from the
        repeated b=0 measurements of the valid voxels (:func:`estimate_sigma_from_b0`).

    Returns
    -------
    PreparedData

    Raises
    ------
    ValueError
        For signals of the wrong shape, no valid voxel, a non-positive ``sigma``, or no ``sigma`` with
        fewer than two b=0 measurements.
    """
    signals = np.asarray(signals)
    protocol = model.protocol
    if signals.ndim != 2 or signals.shape[1] != protocol.n_measurements:
        raise ValueError(
            f"signals must have shape (n_voxels, {protocol.n_measurements}) to match the protocol; got "
            f"{signals.shape}. Reshape images to (n_voxels, n_volumes) or check bvals/bvecs."
        )
    voxels = valid_voxels(signals, protocol.b0_mask)
    if not voxels.valid.any():
        raise ValueError("no voxel has finite signals and a positive mean b=0 signal; check the data and mask.")
    valid_index = np.flatnonzero(voxels.valid)
    source = "given"
    if sigma is None:
        sigma = estimate_sigma_from_b0(signals[valid_index][:, protocol.b0_mask])
        source = f"pooled variance of the {protocol.n_b0} b=0 measurements"
    if sigma is None:
        raise ValueError(
            "cannot estimate the noise level: the protocol has fewer than two b=0 measurements. "
            "Pass sigma= (noise standard deviation in signal units); varmap.fit_image estimates it "
            "from the b=0 image."
        )
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive noise standard deviation; got {sigma!r}.")
    b0_mean_raw = voxels.b0_mean_raw[valid_index]
    signal_scale = float(np.median(b0_mean_raw))
    parts = []
    for start in range(0, valid_index.size, _CHUNK):
        index = valid_index[start : start + _CHUNK]
        normalised = signals[index].astype(np.float32, copy=False) / voxels.b0_mean_raw[index, None].astype(np.float32)
        parts.append(model.observables(normalised).astype(np.float32, copy=False))
    return PreparedData(
        valid=voxels.valid,
        signal_scale=signal_scale,
        b0_mean=b0_mean_raw / signal_scale,
        observables=np.concatenate(parts),
        sigma=float(sigma),
        sigma_source=source,
    )
