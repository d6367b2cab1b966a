"""The noise level of a scan from its voxel signals alone (no image geometry): repeated b=0
measurements when there are two or more, residuals of a voxelwise diffusion fit otherwise.

Image pipelines that know where voxels lie estimate a noise *map* instead (:mod:`varmap.pipeline`)
and pass it to the estimators as a per-voxel ``sigma``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..protocol import Protocol
from ..random_streams import numpy_stream

__all__ = ["estimate_sigma_from_b0", "estimate_sigma_from_residuals", "MAX_RESIDUAL_VOXELS"]

#: Most voxels the residual estimate fits (a random subset beyond that).
MAX_RESIDUAL_VOXELS = 20_000

#: Unknowns of dipy's kurtosis and tensor fits, S0 included.
_DKI_UNKNOWNS, _DTI_UNKNOWNS = 22, 7


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


def estimate_sigma_from_residuals(signals: np.ndarray, protocol: Protocol, *, seed: int = 0) -> float:
    """Noise standard deviation from the residuals of a voxelwise diffusion fit, pooled over voxels.

    dipy's kurtosis model (two or more non-zero shells) or tensor model (one shell), fitted by weighted
    least squares with S0, describes a voxel's signal as a smooth function of the gradient, so its
    residuals are noise: with ``k = n_measurements - n_unknowns`` degrees of freedom a voxel's residual
    sum of squares is σ² χ²_k.  σ² is the median over voxels of RSS/k, divided by the median of χ²_k/k,
    which is robust to voxels the model does not describe (artefacts, the noise floor of free water).

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw signals of valid voxels (finite, positive mean b=0).
    protocol : Protocol
    seed : int
        Picks the voxels when there are more than :data:`MAX_RESIDUAL_VOXELS`.

    Returns
    -------
    float
        σ in the units of the signals.

    Raises
    ------
    ValueError
        If the protocol has too few measurements for a residual (give ``sigma`` then).
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst import dki, dti

    kurtosis = protocol.dw_shell_bvals.size >= 2
    n_unknowns = _DKI_UNKNOWNS if kurtosis else _DTI_UNKNOWNS
    dof = protocol.n_measurements - n_unknowns
    if dof < 1:
        raise ValueError(
            f"cannot estimate the noise level: the protocol has {protocol.n_b0} b=0 measurement(s) and only "
            f"{protocol.n_measurements} measurements in all, too few for the residuals of a "
            f"{'kurtosis' if kurtosis else 'tensor'} fit ({n_unknowns} unknowns). Pass sigma= (noise "
            "standard deviation in signal units)."
        )
    if signals.shape[0] > MAX_RESIDUAL_VOXELS:
        rows = np.sort(numpy_stream(seed, "noise residual voxels").permutation(signals.shape[0])[:MAX_RESIDUAL_VOXELS])
        signals = signals[rows]
    signals = np.asarray(signals, dtype=np.float64)
    gtab = gradient_table(protocol.bvals * 1000.0, bvecs=protocol.bvecs)
    model_class = dki.DiffusionKurtosisModel if kurtosis else dti.TensorModel
    fit = model_class(gtab, fit_method="WLS", return_S0_hat=True).fit(signals)
    with np.errstate(invalid="ignore", over="ignore"):
        residual_ss = ((signals - fit.predict(gtab, S0=fit.S0_hat)) ** 2).sum(axis=1)
    residual_ss = residual_ss[np.isfinite(residual_ss)]
    if residual_ss.size == 0:
        raise ValueError("cannot estimate the noise level: the diffusion fit failed in every voxel. Pass sigma=.")
    return float(np.sqrt(np.median(residual_ss / dof) / (stats.chi2.median(dof) / dof)))
