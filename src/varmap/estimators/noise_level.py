"""The noise level of every voxel from its own signals (no image geometry).

A voxelwise diffusion fit -- the kurtosis tensor with two or more non-zero shells, the diffusion tensor
with one, both weighted least squares on the log signal as dipy fits them; where two or more shells have
too few measurements for the kurtosis tensor's 22 unknowns, the diffusion tensor with one isotropic
kurtosis term (8 unknowns); where that leaves no residual either, the log signal as a function of b alone
(3 unknowns, 2 with one shell; anisotropy then reads as noise) -- describes a voxel's signal as
a smooth function of the gradient, so what it leaves over is noise.  Unknowns are counted as the rank of
the fit's design: three directions repeated on two shells inform three of the tensor's six elements, and
the tensor with isotropic kurtosis then has 5 unknowns, not 8.  Three corrections make the residuals
a noise level:

- degrees of freedom: the fit absorbs ``n_unknowns`` of the ``n_measurements`` residual dimensions,
  most of them from the measurements it weights most (each measurement's leverage in the weighted fit);
- Rician noise: the log fit predicts each measurement's geometric mean exp E[log M], which near the
  noise floor lies below its mean E[M] (1.06 σ against 1.25 σ where no signal is left), and a
  magnitude near the floor varies less than σ (0.43 σ² with no signal).  The Rician signal whose
  geometric mean is the prediction (E[log M/σ] = log(ν/σ) + E₁(ν²/2σ²)/2) gives each measurement's
  mean, about which its residual is taken, and its variance ratio, which it is counted with; every
  measurement is used, those at the floor included, where the fit has at least 6 measurements per
  unknown; with fewer, the fit follows the noise at the floor, and only measurements predicted 2 σ
  above zero count (about the prediction, with the variance ratio of a Rician variable of that mean);
- sampling noise: a voxel's estimate from ``k`` residual degrees of freedom scatters by about
  ``sqrt(1 / 2k)`` in log σ, so the log variances are shrunk towards their median by empirical Bayes
  (the spread between voxels beyond the sampling noise, estimated robustly, decides how far).  Noise
  that is the same everywhere gives nearly one level; noise that varies between voxels (parallel
  imaging) keeps its variation.

Image pipelines that know where voxels lie estimate a noise *map* from neighbourhoods instead
(:mod:`varmap.pipeline.noise_maps`) and pass it as a per-voxel ``sigma``.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from ..protocol import Protocol

__all__ = [
    "VoxelNoise", "ISOTROPIC_KURTOSIS_FIT", "ISOTROPIC_FIT", "estimate_sigma_from_b0", "estimate_sigma_per_voxel",
    "has_residuals", "residual_variances", "residual_unknowns",
]

#: Unknowns of the full kurtosis and tensor fits, S0 included (:func:`has_residuals`).
_DKI_UNKNOWNS, _DTI_UNKNOWNS = 22, 7

#: Names of the fallback residual fits (:func:`residual_unknowns`): the tensor with one isotropic kurtosis
#: term, and the log signal as a function of b alone (no direction), the last resort.
ISOTROPIC_KURTOSIS_FIT = "tensor with isotropic kurtosis"
ISOTROPIC_FIT = "isotropic signal"

#: Singular values of a design below this share of its largest count as zero (the design's rank).
_RANK_TOLERANCE = 1e-8

#: Voxels fitted at once (a chunk holds a few chunk x measurements float64 arrays).
_CHUNK = 4096

#: Chunks fitted at once, in threads (numpy releases the GIL in its array loops; measured on 40,000
#: voxels x 288 measurements with 2 cores: 1.9x faster than one chunk at a time).
_MAX_WORKERS = 2

#: Spacing of the tabulated Rician moments in E[log(M/σ)] (interpolation error below 1e-4 relative).
_RICIAN_TABLE_STEP = 5e-4

#: Fixed-point iterations of each voxel's Rician-corrected estimate.
_N_ITERATIONS = 6

#: Step in log σ of the central difference in the sandwich uncertainty of each voxel's estimate.
_SANDWICH_STEP = 0.01

#: Systematic uncertainty of log σ added to each voxel's sampling uncertainty: the largest mean error
#: per tissue cluster measured on simulated MS-DKI data (1-4x noise variation, SNR 5-50, Rician) was
#: 0.04; half of that is taken as the standard deviation of what the corrections leave over.  (With
#: the noise floor counted, one noise level, HCP-like protocol: tissue within 0.03 at b=0 SNR 2-10,
#: free water 0.04-0.065 low.)
_SYSTEMATIC_LOG_SD = 0.02

#: The same for the residuals of the tensor with isotropic kurtosis, where anisotropy the fit cannot follow
#: reads as noise: on 1 b=0 + 2 x 6 directions (b = 1000, 2000 s/mm²), ball-and-stick voxels' log σ read
#: +0.06 to +0.10 high at b=0 SNR 5-20 and +0.28 at SNR 50 (MS-DKI's isotropic signal: within 0.03 at SNR
#: 10-50); 2 x 10 directions +0.03 to +0.07 and +0.30.
_ISOTROPIC_KURTOSIS_LOG_SD = 0.1

#: The same for the residuals of the isotropic signal, the last resort, where all of the anisotropy reads as
#: noise (the estimate is an upper bound): ball-and-stick voxels on 1 b=0 + 6 directions read +0.33 / +0.57 /
#: +1.09 / +1.96 high in log σ at b=0 SNR 5 / 10 / 20 / 50, on 1 b=0 + 2 x 3 directions (not repeated)
#: +0.46 / +0.88 / +1.45 / +2.32; MS-DKI's isotropic signal on 1 b=0 + 2 x 3 within 0.04 at SNR 10-50
#: (4,000 voxels, seed 3).  No single uncertainty describes
#: that; this one marks the estimate as rough.
_ISOTROPIC_LOG_SD = 0.3

#: Systematic uncertainty of each residual fit's estimate.
_SYSTEMATIC_LOG_SD_OF_FIT = {ISOTROPIC_KURTOSIS_FIT: _ISOTROPIC_KURTOSIS_LOG_SD, ISOTROPIC_FIT: _ISOTROPIC_LOG_SD}

#: Measurements per unknown of the residual fit from which measurements at the noise floor count.  With
#: fewer, the fit follows the noise at the floor and its prediction is no longer a geometric mean
#: (measured: 1 b=0 + 2 x 30 directions, 2.8 per unknown, b=0 SNR 5: log-σ error +0.05 +- 0.09 with the
#: floor, -0.004 +- 0.027 without; 18 b=0 + 3 x 90, 13 per unknown: the floor halves the error).
_FLOOR_MEASUREMENTS_PER_UNKNOWN = 6.0

#: Without the floor, measurements count where their predicted signal is at least this many σ above zero.
_MIN_SIGNAL_TO_NOISE = 2.0

#: Fewest such measurements a voxel needs; with fewer it uses all its measurements.
_MIN_MEASUREMENTS = 10

#: The systematic uncertainty of those voxels' estimate, which rests on the fit at the floor (measured
#: spread of log σ̂/σ there 0.16 against 0.07 from the degrees of freedom alone).
_FLOOR_LOG_SD = 0.15


@dataclass(frozen=True)
class VoxelNoise:
    """Noise level of every voxel estimated from its own signals.

    Attributes
    ----------
    sigma : ndarray, shape (n_voxels,)
        Noise standard deviation of one measurement, in the units of the signals (float64).
    log_sd : ndarray, shape (n_voxels,)
        Uncertainty of each voxel's estimate: the standard deviation of log σ (its posterior under the
        shrinkage prior, plus a systematic part), which the likelihoods of averaged observables
        marginalise (:func:`varmap.estimators.likelihood.rician_nll`).
    shared_log_sd : float
        The part of that uncertainty that is one error for all voxels (the estimator's systematic error),
        which moves the learned prior's means (:mod:`varmap.estimators.prior_uncertainty`).
    typical : float
        The median noise level over voxels.
    spread : float
        Standard deviation of log σ between voxels beyond the sampling noise (0: one level fits all).
    shrinkage : float
        Median weight of a voxel's own estimate against the median (0: all at the median, 1: as measured).
    dof : float
        Median residual degrees of freedom of a voxel's estimate.
    fit : str
        The voxelwise fit whose residuals gave it (:func:`residual_unknowns`).
    """

    sigma: np.ndarray
    log_sd: np.ndarray
    shared_log_sd: float
    typical: float
    spread: float
    shrinkage: float
    dof: float
    fit: str

    def describe(self) -> str:
        """One line for ``sigma_source``: how the levels were estimated and how much they vary."""
        return (
            f"per voxel from the residuals of a voxelwise {self.fit} fit (Rician-corrected, shrunk to the median "
            f"by empirical Bayes: median {self.typical:.4g}, spread {self.spread:.3f} in log sigma, "
            f"shrinkage weight {self.shrinkage:.2f}, {self.dof:.0f} residual degrees of freedom; median "
            f"uncertainty {float(np.median(self.log_sd)):.3f} in log sigma, marginalised by the likelihood)"
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


def residual_unknowns(protocol: Protocol) -> tuple[str, int]:
    """The voxelwise fit whose residuals give the noise level and its number of unknowns: the richest
    fit that leaves residuals, its unknowns counted as the rank of its design (directions that repeat
    between shells, or lie along the axes, inform fewer of a tensor's elements).  With two or more
    non-zero shells ``"kurtosis"``, then :data:`ISOTROPIC_KURTOSIS_FIT`; with one ``"tensor"``; in both
    cases :data:`ISOTROPIC_FIT` last.  Where even that leaves no residual (one measurement per b-value)
    it is returned with as many unknowns as measurements."""
    richer = ("kurtosis", ISOTROPIC_KURTOSIS_FIT) if protocol.dw_shell_bvals.size >= 2 else ("tensor",)
    for fit in (*richer, ISOTROPIC_FIT):
        n_unknowns = _design_rank(protocol, fit)
        if protocol.n_measurements > n_unknowns:
            break
    return fit, n_unknowns


def has_residuals(protocol: Protocol) -> bool:
    """Whether the protocol has more measurements than the full voxelwise fit (the kurtosis tensor with two
    or more shells, the diffusion tensor with one) has unknowns.  Where it has not, callers prefer one
    noise level from repeated b=0 measurements, or neighbourhoods' pseudo-residuals, to the residuals of
    the tensor with isotropic kurtosis (:func:`residual_unknowns`), in which anisotropic kurtosis reads as
    noise."""
    return protocol.n_measurements > (_DKI_UNKNOWNS if protocol.dw_shell_bvals.size >= 2 else _DTI_UNKNOWNS)


def estimate_sigma_per_voxel(signals: np.ndarray, protocol: Protocol) -> VoxelNoise:
    """Noise standard deviation of every voxel from the residuals of a voxelwise diffusion fit, each
    voxel's estimate shrunk towards the median by empirical Bayes.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals of valid voxels (finite, positive mean b=0).
    protocol : Protocol

    Returns
    -------
    VoxelNoise

    Raises
    ------
    ValueError
        If the protocol has too few measurements for a residual (give ``sigma`` then), or the fit
        failed in every voxel.
    """
    fit, n_unknowns = residual_unknowns(protocol)
    variance, dof, at_floor, sampling_log_sd = _residual_fit(signals, protocol, fit, n_unknowns, uncertainty=True)
    good = np.isfinite(variance) & (variance > 0)
    if not good.any():
        raise ValueError("cannot estimate the noise level: the diffusion fit failed in every voxel. Pass sigma=.")
    systematic = _SYSTEMATIC_LOG_SD_OF_FIT.get(fit, _SYSTEMATIC_LOG_SD)
    return _shrink(variance, dof, sampling_log_sd, good, np.where(at_floor, max(_FLOOR_LOG_SD, systematic), systematic),
                   systematic, fit)


def residual_variances(signals: np.ndarray, protocol: Protocol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each voxel's noise variance from the residuals of its own diffusion fit, before any pooling.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals.
    protocol : Protocol

    Returns
    -------
    variance : ndarray, shape (n_voxels,)
        σ² in squared signal units (NaN where the fit failed).
    dof : ndarray, shape (n_voxels,)
        Its effective residual degrees of freedom (what the variance of the estimate scales with).
    at_floor : ndarray of bool, shape (n_voxels,)
        Voxels of a protocol too short to count the noise floor (fewer than
        ``_FLOOR_MEASUREMENTS_PER_UNKNOWN`` measurements per unknown) with fewer than 10 measurements 2σ
        above zero, whose estimate rests on the fit at the floor (less certain than its dof say).

    Raises
    ------
    ValueError
        If the protocol has too few measurements for a residual.
    """
    return _residual_fit(signals, protocol, *residual_unknowns(protocol), uncertainty=False)[:3]


def _residual_fit(
    signals: np.ndarray, protocol: Protocol, fit: str, n_unknowns: int, *, uncertainty: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`residual_variances` by ``fit`` of ``n_unknowns`` (:func:`residual_unknowns`) and, with
    ``uncertainty``, each voxel's sampling uncertainty of log σ (the sandwich of
    :func:`_rician_residual_variance`; else NaN)."""
    if protocol.n_measurements <= n_unknowns:
        raise ValueError(
            f"cannot estimate the noise level: the protocol has {protocol.n_measurements} measurements, one per "
            "b-value, so no voxelwise fit leaves a residual. Pass sigma= (noise standard deviation in signal units, "
            "for example from a noise map or a separate noise scan)."
        )
    design = _design_matrix(protocol, fit)
    ordinary = np.linalg.pinv(design).T  # the ordinary least-squares solve, the same for every chunk
    count_floor = protocol.n_measurements >= _FLOOR_MEASUREMENTS_PER_UNKNOWN * n_unknowns

    def fit_chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        chunk = np.asarray(signals[start : start + _CHUNK], dtype=np.float64)
        return _rician_residual_variance(chunk, *_weighted_log_fit(chunk, design, ordinary), count_floor, uncertainty)

    starts = range(0, signals.shape[0], _CHUNK)
    with ThreadPoolExecutor(max(1, min(_MAX_WORKERS, os.cpu_count() or 1, len(starts)))) as pool:
        parts = list(pool.map(fit_chunk, starts))
    variance, dof, at_floor, sampling_log_sd = (np.concatenate(columns) for columns in zip(*parts))
    return variance, dof, at_floor, sampling_log_sd


@functools.cache
def _rician_moment_table() -> tuple[float, np.ndarray, np.ndarray]:
    """Mean / σ and variance / σ² of a Rician variable on a uniform grid of its log geometric mean
    E[log(M/σ)], from no signal (E[log(M/σ)] = (log 2 - γ)/2) to ν = 60 σ: (first grid value, means,
    variance ratios); the grid step is :data:`_RICIAN_TABLE_STEP`.

    Notes
    -----
    M²/σ² is non-central χ² with 2 degrees of freedom and non-centrality a² = ν²/σ², whose mean log is
    log a² + E₁(a²/2), so :math:`E[\\log(M/σ)] = \\log a + E_1(a^2/2)/2`, increasing in a.
    """
    a = np.concatenate([np.linspace(0.0, 10.0, 20001), np.linspace(10.0005, 60.0, 20000)])
    with np.errstate(divide="ignore", invalid="ignore"):  # at a = 0: log 0 + E₁(0) = -inf + inf, the limit set below
        log_mean = np.log(a) + 0.5 * special.exp1(0.5 * a * a)
    log_mean[0] = 0.5 * (np.log(2.0) - np.euler_gamma)
    t = a * a / 4.0
    mean = np.sqrt(np.pi / 2.0) * ((1.0 + 2.0 * t) * special.ive(0, t) + 2.0 * t * special.ive(1, t))
    grid = np.arange(log_mean[0], log_mean[-1], _RICIAN_TABLE_STEP)
    return float(log_mean[0]), np.interp(grid, log_mean, mean), np.interp(grid, log_mean, 2.0 + a * a - mean * mean)


@functools.cache
def _rician_moment_steps() -> tuple[np.ndarray, np.ndarray]:
    """The differences between neighbouring entries of :func:`_rician_moment_table`'s means and variance
    ratios (the linear interpolation's slopes per grid step)."""
    _, means, ratios = _rician_moment_table()
    return np.diff(means), np.diff(ratios)


def _rician_moments(log_geometric_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean / σ and variance / σ² of the Rician variables whose E[log(M/σ)] is ``log_geometric_mean``
    (linear interpolation in :func:`_rician_moment_table`).  Below the table (no signal) they are the noise
    floor's, √(π/2) and 2 - π/2; beyond it (ν > 60 σ) the mean is the geometric mean and the variance
    ratio 1; NaN stays NaN."""
    start, means, ratios = _rician_moment_table()
    mean_steps, ratio_steps = _rician_moment_steps()
    last = (means.size - 1) * _RICIAN_TABLE_STEP
    offset = np.nan_to_num(log_geometric_mean - start, nan=0.0, posinf=last, neginf=0.0)
    position = np.clip(offset, 0.0, last) / _RICIAN_TABLE_STEP
    index = np.minimum(position.astype(np.intp), means.size - 2)
    fraction = position - index
    mean = means[index] + fraction * mean_steps[index]
    ratio = ratios[index] + fraction * ratio_steps[index]
    beyond = offset > last
    if beyond.any():  # the fixed point calls this on every measurement several times: skip what is not needed
        with np.errstate(over="ignore"):
            mean = np.where(beyond, np.exp(np.minimum(log_geometric_mean, 700.0)), mean)
        ratio = np.where(beyond, 1.0, ratio)
    missing = np.isnan(log_geometric_mean)
    if missing.any():
        mean, ratio = np.where(missing, np.nan, mean), np.where(missing, np.nan, ratio)
    return mean, ratio


def _design_matrix(protocol: Protocol, fit: str) -> np.ndarray:
    """The design matrix of the log signal for ``fit``, shape (n_measurements, n_unknowns): dipy's for the
    kurtosis and the tensor fits, each column scaled to unit norm (b and b² columns differ by orders of
    magnitude; the predictions do not change).  A design of lower rank than it has columns (directions
    that repeat between shells or lie along the axes) is replaced by an orthonormal basis of its columns:
    the same fit, with :func:`_design_rank` unknowns."""
    design = _scaled_design(protocol, fit)
    rank = _rank(design)
    if rank == design.shape[1]:
        return design
    return np.linalg.svd(design, full_matrices=False)[0][:, :rank]


def _design_rank(protocol: Protocol, fit: str) -> int:
    """The unknowns ``fit`` can determine from ``protocol``: the rank of its design."""
    return _rank(_scaled_design(protocol, fit))


def _rank(design: np.ndarray) -> int:
    """Singular values of ``design`` above :data:`_RANK_TOLERANCE` times its largest."""
    singular = np.linalg.svd(design, compute_uv=False)
    return int((singular > _RANK_TOLERANCE * singular[0]).sum())


def _scaled_design(protocol: Protocol, fit: str) -> np.ndarray:
    """``fit``'s design with every non-zero column scaled to unit norm (:func:`_design_matrix`)."""
    if fit == ISOTROPIC_FIT:  # log S = log S0 - b D + b² D² K / 6, whatever the direction
        design = np.column_stack([np.ones_like(protocol.bvals), -protocol.bvals, protocol.bvals**2])
    else:
        from dipy.core.gradients import gradient_table
        from dipy.reconst import dki, dti

        gtab = gradient_table(protocol.bvals * 1000.0, bvecs=protocol.bvecs)
        if fit == "kurtosis":
            design = dki.design_matrix(gtab)
        else:
            design = dti.design_matrix(gtab)
            if fit == ISOTROPIC_KURTOSIS_FIT:  # log S gains MD² K b² / 6, one unknown for every direction
                design = np.column_stack([design, protocol.bvals**2])
    design = design.astype(np.float64)
    norms = np.linalg.norm(design, axis=0)
    return design / np.where(norms > 0.0, norms, 1.0)


def _weighted_log_fit(signals: np.ndarray, design: np.ndarray, ordinary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted signals of a weighted least-squares fit of the log signals (weights: the squared
    signals predicted by an ordinary least-squares fit, ``log signals @ ordinary``, as dipy's WLS),
    batched over voxels, and each measurement's leverage in that fit (the share of its residual's
    variance the fit absorbs).

    The voxels' normal matrices and leverages are two matrix products over the whole chunk with
    ``outer``, every measurement's design row times itself, (n_measurements, n_unknowns²).
    """
    (n_voxels, n_measurements), n_unknowns = signals.shape, design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(n_measurements, -1)
    floor = 1e-3 * np.maximum(np.abs(signals).max(axis=1, keepdims=True), 1e-30)
    log_signal = np.log(np.maximum(signals, floor))
    with np.errstate(over="ignore", invalid="ignore"):
        ols = log_signal @ ordinary
        weights = np.exp(np.minimum(2.0 * ols @ design.T, 700.0))
        weights /= weights.max(axis=1, keepdims=True)
        normal = (weights @ outer).reshape(n_voxels, n_unknowns, n_unknowns)
        normal += 1e-10 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(n_unknowns)
        inverse = np.linalg.inv(normal)
        coefficients = (inverse @ ((weights * log_signal) @ design)[:, :, None])[..., 0]
        # leverage of measurement m: w_m d_mᵀ (DᵀWD)⁻¹ d_m
        leverage = weights * (inverse.reshape(n_voxels, -1) @ outer.T)
        return np.exp(np.minimum(coefficients @ design.T, 700.0)), leverage


def _rician_variance_ratio_of_mean(mean_to_sigma: np.ndarray) -> np.ndarray:
    """Variance / σ² of Rician variables of mean ``mean_to_sigma`` · σ (interpolated in
    :func:`_rician_moment_table`; the floor's below it, 1 beyond it, NaN kept)."""
    _, means, ratios = _rician_moment_table()
    return np.interp(mean_to_sigma, means, ratios, left=ratios[0], right=1.0)


def _rician_residual_variance(
    signals: np.ndarray, predicted: np.ndarray, leverage: np.ndarray, count_floor: bool, uncertainty: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """σ² of every voxel from its Rician-corrected residuals, its effective degrees of freedom, whether
    it had to fall back on measurements at the floor, and the sampling uncertainty of its log σ.  A
    fixed point in σ.

    ``count_floor``: ``predicted``, the log fit's prediction, is a geometric mean; given the current σ
    it names the Rician variable of each measurement (:func:`_rician_moments`), whose mean the residual
    is taken about and whose variance ratio (times the share of the residual the fit leaves) the squared
    residual is expected to be; every measurement counts.  Otherwise only measurements predicted
    ``_MIN_SIGNAL_TO_NOISE`` σ or more above zero count (all of them where a voxel has fewer than
    ``_MIN_MEASUREMENTS``), where the prediction is close to the mean: residuals about the prediction,
    with the variance ratio of a Rician variable of that mean.

    ``uncertainty`` and ``count_floor``: also the sampling uncertainty of log σ (else NaN), the sandwich
    of the estimating equation :math:`F(s) = \\sum_i \\psi_i(s) = 0`, ψ_i the squared residual minus
    its expectation at s = log σ: sd(ŝ) = √(Σ ψ_i²) / |F'(s)|, with F' by central differences.  The
    degrees of freedom alone (√(1/2k)) describe Gaussian residuals about a known mean; at the floor the
    mean moves with σ and the residuals are not Gaussian, and they understate the scatter of ŝ
    (measured on the study's data, noise levels 1-4x: 0.055 against 0.089 at b=0 SNR 5; the sandwich
    0.080).  Without the floor (short protocols) a voxel has too few measurements for the sandwich (on
    1 b=0 + 2 x 30 directions it scattered so much that the shrinkage saw a spread between voxels that
    was not there); the degrees of freedom stand.
    """
    residual_share = np.clip(1.0 - leverage, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_predicted = np.log(predicted)

        def terms(log_sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Squared residuals and their expected values / σ² (0 where a measurement does not count),
            and which voxels fell back on all their measurements, at log σ, shape (n_voxels, 1)."""
            if count_floor:  # every measurement counts (and a protocol this long has more than _MIN_MEASUREMENTS)
                mean_ratio, variance_ratio = _rician_moments(log_predicted - log_sigma)
                squared = (signals - mean_ratio * np.exp(log_sigma)) ** 2
                return squared, variance_ratio * residual_share, np.zeros(len(signals), dtype=bool)
            variance_ratio = _rician_variance_ratio_of_mean(np.exp(log_predicted - log_sigma))
            squared = (signals - predicted) ** 2
            used = log_predicted - log_sigma >= np.log(_MIN_SIGNAL_TO_NOISE)
            at_floor = used.sum(axis=1) < _MIN_MEASUREMENTS
            used[at_floor] = True
            return np.where(used, squared, 0.0), np.where(used, variance_ratio * residual_share, 0.0), at_floor

        variance = ((signals - predicted) ** 2).sum(axis=1) / residual_share.sum(axis=1)
        for _ in range(_N_ITERATIONS):
            squared, expected, at_floor = terms(0.5 * np.log(variance)[:, None])
            variance = squared.sum(axis=1) / expected.sum(axis=1)
        sampling_log_sd = np.full(variance.shape, np.nan)
        if uncertainty and count_floor:
            log_sigma = 0.5 * np.log(variance)[:, None]

            def estimating_terms(shift: float) -> np.ndarray:
                squared, expected, _ = terms(log_sigma + shift)
                return squared - expected * np.exp(2.0 * (log_sigma + shift))

            slope = (estimating_terms(_SANDWICH_STEP).sum(axis=1) - estimating_terms(-_SANDWICH_STEP).sum(axis=1)) / (
                2.0 * _SANDWICH_STEP
            )
            psi = estimating_terms(0.0)
            sampling_log_sd = np.sqrt((psi * psi).sum(axis=1)) / np.abs(slope)
    return variance, expected.sum(axis=1), at_floor, sampling_log_sd


def _shrink(
    variance: np.ndarray, dof: np.ndarray, sampling_log_sd: np.ndarray, good: np.ndarray, systematic_log_sd: np.ndarray,
    shared_log_sd: float, fit: str,
) -> VoxelNoise:
    """Empirical-Bayes shrinkage of the log variances towards their median (a normal prior on log σ²
    whose spread is what the voxels show beyond their sampling noise).  ``sampling_log_sd``: each
    estimate's sampling uncertainty of log σ (the sandwich; where it is not finite, that of a
    chi-square with ``dof`` degrees of freedom).  ``systematic_log_sd``: each estimate's systematic
    uncertainty, added to its posterior's; ``shared_log_sd``: the part of it common to all voxels; ``fit``: the
    residual fit they came from."""
    dof = np.maximum(dof, 1.0)
    # unbiased log variance (as for a chi-square with dof degrees of freedom) and its sampling variance
    log_variance = np.log(np.where(good, variance, 1.0)) - (special.digamma(dof / 2.0) - np.log(dof / 2.0))
    sandwich = 4.0 * sampling_log_sd**2
    sampling = np.where(np.isfinite(sandwich) & (sandwich > 0), sandwich, special.polygamma(1, dof / 2.0))
    # the centre: a median, so each voxel's log variance is taken less the median of its sampling
    # distribution's offset (log χ²_k/k is skewed; its median lies above its mean by up to 0.07 at k = 5)
    median_offset = np.log(stats.chi2.median(dof) / dof) - (special.digamma(dof / 2.0) - np.log(dof / 2.0))
    centre = float(np.median((log_variance - median_offset)[good]))
    robust_variance = (1.4826 * np.median(np.abs(log_variance[good] - centre))) ** 2
    between = max(robust_variance - float(np.median(sampling[good])), 0.0)
    weight = between / (between + sampling)
    shrunk = np.where(good, centre + weight * (log_variance - centre), centre)
    # posterior variance of log σ² under the normal prior: weight · sampling (the centre's own is negligible)
    posterior_sd = 0.5 * np.sqrt(np.where(good, weight * sampling, between))
    return VoxelNoise(
        sigma=np.exp(0.5 * shrunk),
        log_sd=np.sqrt(posterior_sd**2 + systematic_log_sd**2),
        shared_log_sd=shared_log_sd,
        typical=float(np.exp(0.5 * centre)),
        spread=float(0.5 * np.sqrt(between)),
        shrinkage=float(np.median(weight[good])),
        dof=float(np.median(dof[good])),
        fit=fit,
    )
