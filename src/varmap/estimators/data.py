"""From raw voxel signals to what estimators work on: the valid voxels, the noise level, the observables.

Every decision about the input is made here once: which voxels are fitted (:func:`valid_voxels`), which
noise level is used (:func:`prepare_signals`), and in which units the estimators see the signals.

Units.  Two scales, each used for one thing:

- a voxel's *observables* are its signals divided by its own mean b=0 signal (the usual S/S0 of
  diffusion MRI), so the physics model predicts them from the tissue parameters alone; a protocol
  without b=0 measurements divides by the signal extrapolated to b=0 instead
  (:func:`reference_intensity`), and the estimators' S0 absorbs what that extrapolation misses;
- intensities that differ between voxels -- the mean b=0 signal itself (``b0_mean``) and the S0 that
  estimators return -- are in *reference units*: raw intensities divided by one number per dataset, the
  ``signal_scale`` (the median over valid voxels of the mean b=0 signal).  Multiplying by
  ``signal_scale`` gives raw intensities back.

A voxel's noise level in the units of its observables is therefore ``sigma / (signal_scale · b0_mean)``.

Noise level.  One number for the whole scan, or one per voxel (a noise map: parallel imaging makes the
noise level vary over the image), in raw units.  When none is given each voxel's is estimated from its
own signals, the residuals of a voxelwise diffusion fit shrunk towards the median
(:mod:`varmap.estimators.noise_level`); a protocol too short for the kurtosis tensor's residuals falls back
to one level from the repeated b=0 measurements, or without them to the residuals of a tensor with one
isotropic kurtosis term, or, where that has none, of a signal that depends on b alone (each with a warning:
anisotropy reads as noise there).  Only a protocol with one measurement per b-value needs ``sigma``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..protocol import Protocol
from .noise_level import (
    ISOTROPIC_FIT,
    ISOTROPIC_KURTOSIS_FIT,
    estimate_sigma_from_b0,
    estimate_sigma_per_voxel,
    has_residuals,
)

__all__ = ["ValidVoxels", "valid_voxels", "reference_intensity", "reference_name", "PreparedData", "prepare_signals"]

#: Voxels handled at a time while checking and converting (a whole brain is ~1 GB per float32 copy).
_CHUNK = 65536

#: What a fit whose noise level comes from the residuals of the tensor with isotropic kurtosis is told
#: (measured: the note on ``_ISOTROPIC_KURTOSIS_LOG_SD`` in :mod:`varmap.estimators.noise_level`).
ISOTROPIC_KURTOSIS_WARNING = (
    "the protocol has no repeated b=0 measurements and too few measurements for the kurtosis tensor's residuals, so the "
    "noise level comes from the residuals of a diffusion tensor with one isotropic kurtosis term, in which "
    "anisotropy reads as noise: measured on simulated anisotropic voxels of 1 b=0 + 2 x 6 directions, it read "
    "6-10 % high at a b=0 SNR of 5-20 and 33 % high at 50. Pass sigma= (a noise map, or the level of a separate "
    "noise scan) if you have one."
)

#: What a fit whose noise level comes from the residuals of the isotropic signal (the last resort) is told
#: (measured: the note on ``_ISOTROPIC_LOG_SD`` in :mod:`varmap.estimators.noise_level`).
ISOTROPIC_WARNING = (
    "the protocol has no repeated b=0 measurements and too few measurements for any tensor's residuals, so the "
    "noise level comes from each voxel's scatter about a signal that depends on b alone, in which all anisotropy "
    "reads as noise: it is an upper bound, measured 1.4x high on simulated anisotropic voxels of 1 b=0 + 6 "
    "directions at a b=0 SNR of 5 and 7x high at 50. Pass sigma= (a noise map, or the level of a separate noise "
    "scan) if you have one."
)

#: The warning of each fallback residual fit.
_FALLBACK_WARNINGS = {ISOTROPIC_KURTOSIS_FIT: ISOTROPIC_KURTOSIS_WARNING, ISOTROPIC_FIT: ISOTROPIC_WARNING}

#: What a fit of a protocol without b=0 measurements is told (measured: benchmarks/results/README.md,
#: "Protocols without b=0 volumes").
NO_B0_WARNING = (
    "the protocol has no b=0 measurement, so S0 is fitted from the diffusion-weighted shells alone and trades off "
    "against D and K: measured on simulations with S0 varying between voxels, free water's D and K are not "
    "determined when the lowest shell is b = 500 s/mm², and with b = 1000 s/mm² the tissues' are biased too, with "
    "standard deviations far too narrow (gmvae's intervals held 5-77 % of the truths of a tissue, against about "
    "95 % with b=0 volumes). Add the scan's b=0 volumes if it has any."
)

#: Largest apparent diffusivity (µm²/ms, free water at body temperature) of the extrapolation to b=0 of a
#: protocol without b=0 measurements: where the higher shell sits in the noise floor, the ratio of the
#: two lowest shells would otherwise extrapolate without bound.
MAX_EXTRAPOLATION_DIFFUSIVITY = 3.0


@dataclass(frozen=True)
class ValidVoxels:
    """Which voxels can be fitted, and why the others cannot.

    Attributes
    ----------
    valid : ndarray of bool, shape (n_voxels,)
        Finite signals and a positive mean b=0 signal.
    b0_mean_raw : ndarray, shape (n_voxels,)
        Mean b=0 signal (raw units, float64; without b=0 measurements, :func:`reference_intensity`'s
        extrapolation); 0 where not valid.
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


def valid_voxels(signals: np.ndarray, protocol: Protocol) -> ValidVoxels:
    """The rule of which voxels are fitted: finite signals and a positive mean b=0 signal (without b=0
    measurements, a positive extrapolation to b=0, :func:`reference_intensity`).

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    protocol : Protocol

    Returns
    -------
    ValidVoxels
    """
    signals = np.asarray(signals)
    finite = np.empty(len(signals), dtype=bool)
    for start in range(0, len(signals), _CHUNK):
        finite[start : start + _CHUNK] = np.isfinite(signals[start : start + _CHUNK]).all(axis=1)
    with np.errstate(invalid="ignore"):
        b0_mean_raw = np.where(finite, reference_intensity(signals, protocol), 0.0)
    valid = finite & (b0_mean_raw > 0)
    return ValidVoxels(
        valid=valid,
        b0_mean_raw=np.where(valid, b0_mean_raw, 0.0),
        n_nonfinite=int((~finite).sum()),
        n_nonpositive_b0=int((finite & ~valid).sum()),
    )


def reference_intensity(signals: np.ndarray, protocol: Protocol) -> np.ndarray:
    """The intensity each voxel's signals are normalised by: its mean b=0 signal, or, for a protocol
    without b=0 measurements, its signal extrapolated to b=0.

    The extrapolation is mono-exponential through the direction-averaged signals S1, S2 of the two
    lowest shells b1 < b2: S1 · exp(b1 · d), with the apparent diffusivity d = ln(S1 / S2) / (b2 - b1)
    kept within 0-3 µm²/ms (noise can make S2 exceed S1, or put S2 in the noise floor).  Positive
    kurtosis makes it fall short of the true S0 (by about 30 % in white matter from b = 1000 and
    2000 s/mm²); the estimators fit S0 relative to it.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals, one column per measurement of ``protocol``.
    protocol : Protocol

    Returns
    -------
    ndarray, shape (n_voxels,), float64
        Not finite or not positive where the voxel's signals do not give one.
    """
    if protocol.n_b0:
        return signals[:, protocol.b0_mask].mean(axis=1, dtype=np.float64)
    b1, b2 = protocol.shell_bvals[:2]  # shells are in ascending order of b
    lowest, second = (signals[:, protocol.shell_index == shell].mean(axis=1, dtype=np.float64) for shell in (0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        diffusivity = np.clip(np.log(lowest / second) / (b2 - b1), 0.0, MAX_EXTRAPOLATION_DIFFUSIVITY)
    return lowest * np.exp(b1 * np.nan_to_num(diffusivity))


def reference_name(protocol: Protocol) -> str:
    """What :func:`reference_intensity` is for ``protocol``, in words (for messages about unusable voxels)."""
    return "mean b=0 signal" if protocol.n_b0 else "signal extrapolated to b=0 (there is no b=0 measurement)"


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
    sigma : ndarray, shape (n_valid,)
        Noise standard deviation of one measurement in each valid voxel, raw units (float64).
    sigma_log_sd : ndarray, shape (n_valid,)
        Uncertainty of that noise level, the standard deviation of log σ (0 where it was given).
    sigma_shared_log_sd : float
        The part of it that is one error shared by every voxel (0 where the level was given or pooled).
    sigma_source : str
        Where ``sigma`` came from.
    """

    valid: np.ndarray
    signal_scale: float
    b0_mean: np.ndarray
    observables: np.ndarray
    sigma: np.ndarray
    sigma_log_sd: np.ndarray
    sigma_shared_log_sd: float
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


def prepare_signals(signals: np.ndarray, model, *, sigma: float | np.ndarray | None = None) -> PreparedData:
    """Check raw signals, choose the noise level and convert the valid voxels to the estimators' units.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    model : SignalModel
        Its protocol fixes the measurements; its ``observables`` turns normalised signals into what is
        fitted (shell averages for MS-DKI, the measurements themselves for ball-and-stick).
    sigma : float or ndarray of shape (n_voxels,), optional
        Noise standard deviation of one measurement in raw units, for the scan or for each voxel.
        Default: each valid voxel's from the residuals of a voxelwise diffusion fit
        (:func:`~varmap.estimators.noise_level.estimate_sigma_per_voxel`); where the protocol is too
        short for the kurtosis tensor's residuals, one level from the repeated b=0 measurements, or
        without repeats the residuals of a tensor with isotropic kurtosis (warns).

    Returns
    -------
    PreparedData

    Raises
    ------
    ValueError
        For signals of the wrong shape, no valid voxel, or a ``sigma`` of the wrong shape or with values
        that are not positive and finite in valid voxels.
    """
    signals = np.asarray(signals)
    protocol = model.protocol
    if signals.ndim != 2 or signals.shape[1] != protocol.n_measurements:
        raise ValueError(
            f"signals must have shape (n_voxels, {protocol.n_measurements}) to match the protocol; got "
            f"{signals.shape}. Reshape images to (n_voxels, n_volumes) or check bvals/bvecs."
        )
    if not protocol.n_b0:
        warnings.warn(NO_B0_WARNING, UserWarning, stacklevel=2)
    voxels = valid_voxels(signals, protocol)
    if not voxels.valid.any():
        raise ValueError(
            f"no voxel has finite signals and a positive {reference_name(protocol)}; check the data and mask.")
    valid_index = np.flatnonzero(voxels.valid)
    sigma_valid, sigma_log_sd, shared_log_sd, source = _noise_level(signals, valid_index, protocol, sigma)
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
        sigma=sigma_valid,
        sigma_log_sd=sigma_log_sd,
        sigma_shared_log_sd=shared_log_sd,
        sigma_source=source,
    )


def _noise_level(
    signals: np.ndarray, valid_index: np.ndarray, protocol, sigma: float | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """The noise level of every valid voxel (raw units), its uncertainty (standard deviation of log σ),
    the part of that shared by all voxels, and where it came from."""
    n_valid = valid_index.size
    exact = np.zeros(n_valid)
    if sigma is None:
        valid_signals = signals[valid_index]
        if not has_residuals(protocol):
            pooled = estimate_sigma_from_b0(valid_signals[:, protocol.b0_mask])
            if pooled is not None:  # pooled over every voxel: its uncertainty is negligible
                return np.full(n_valid, pooled), exact, 0.0, f"pooled variance of the {protocol.n_b0} b=0 measurements"
        estimate = estimate_sigma_per_voxel(valid_signals, protocol)  # refuses a protocol too short
        if estimate.fit in _FALLBACK_WARNINGS:
            warnings.warn(_FALLBACK_WARNINGS[estimate.fit], UserWarning, stacklevel=3)
        return estimate.sigma, estimate.log_sd, estimate.shared_log_sd, estimate.describe()
    values = np.asarray(sigma, dtype=np.float64)
    if values.ndim == 0:
        if not (np.isfinite(values) and values > 0):
            raise ValueError(f"sigma must be a positive noise standard deviation; got {sigma!r}.")
        return np.full(n_valid, float(values)), exact, 0.0, "given"
    if values.shape != (signals.shape[0],):
        raise ValueError(
            f"sigma must be one number or one value per voxel, shape ({signals.shape[0]},); got shape "
            f"{values.shape}. Give the noise map's values in the order of the signals' voxels."
        )
    values = values[valid_index]
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise ValueError(
            f"sigma is not a positive finite noise level in {int(bad.sum())} of the {n_valid} fitted voxels; "
            "check the noise map (it must cover every voxel of the mask)."
        )
    return values, exact, 0.0, "given per voxel"
