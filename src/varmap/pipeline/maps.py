"""Per-voxel fit results back into image space: parameter, uncertainty, cluster and goodness-of-fit maps."""

from __future__ import annotations

import numpy as np

from ..io import to_image_space
from ..results import FitResult

__all__ = ["image_maps", "goodness_of_fit"]

#: Voxels per chunk when computing the goodness of fit.
_GOF_CHUNK = 8_192


def image_maps(fit: FitResult, signals: np.ndarray, mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every output map in image space, with its unit.

    Parameters
    ----------
    fit : FitResult
        Per-voxel result, voxels in ``np.nonzero(mask)`` order.
    signals : ndarray, shape (n_voxels, n_measurements)
        The fitted signals (for the goodness of fit), raw units.
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    maps : dict of ndarray
        float32, shape (X, Y, Z) or (X, Y, Z, k): the parameters, ``S0``, ``<name>_std`` and ``ess``
        (variational methods: posterior spread, effective sample size), ``cluster_probs`` and ``clusters`` (gmvae), ``rmse``, ``sigma`` (the noise level the
        fit used) and ``mask``; 0 outside the mask and in excluded voxels.
    units : dict of str
        Unit of every map.
    """
    maps: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    model_units = fit.model.units()
    for name, values in fit.params.items():
        maps[name] = to_image_space(values, mask)
        units[name] = model_units.get(name, "")
    maps["S0"] = to_image_space(fit.S0, mask)
    units["S0"] = "a.u. (input intensity)"
    if fit.std is not None:
        for name, values in fit.std.items():
            maps[f"{name}_std"] = to_image_space(values, mask)
            units[f"{name}_std"] = "degrees" if name == "n" else model_units.get(name, "")
    if fit.effective_samples is not None:
        maps["ess"] = to_image_space(fit.effective_samples, mask)
        units["ess"] = "samples (effective sample size of the importance weights behind the posterior maps)"
    if fit.cluster_probs is not None:
        maps["cluster_probs"] = to_image_space(fit.cluster_probs, mask)
        units["cluster_probs"] = "probability"
        labels = fit.clusters
        maps["clusters"] = to_image_space(np.where(labels >= 0, labels + 1, 0), mask)
        units["clusters"] = "label (component k is k+1; 0 outside the mask or not fitted)"
    maps["rmse"] = to_image_space(goodness_of_fit(fit, signals), mask)
    units["rmse"] = "1 (RMSE of predicted vs measured S/S0)"
    maps["sigma"] = to_image_space(fit.sigma, mask)
    units["sigma"] = "a.u. (input intensity; noise standard deviation of one measurement)"
    maps["mask"] = mask.astype(np.float32)
    units["mask"] = "1 (1 = in the mask)"
    return maps, units


def goodness_of_fit(fit: FitResult, signals: np.ndarray) -> np.ndarray:
    """:meth:`FitResult.goodness_of_fit` in chunks of voxels (the full prediction would be float64).

    Returns
    -------
    ndarray, shape (n_voxels,)
        RMSE of the predicted vs measured S/S0; NaN in excluded voxels.
    """
    out = np.full(fit.n_voxels, np.nan)
    for start in range(0, fit.n_voxels, _GOF_CHUNK):
        part = slice(start, start + _GOF_CHUNK)
        valid = fit.valid[part]
        if not valid.any():
            continue
        chunk = FitResult(
            model=fit.model, method=fit.method, params={k: v[part] for k, v in fit.params.items()},
            S0=fit.S0[part], valid=valid, sigma=fit.sigma[part],
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[part] = chunk.goodness_of_fit(signals[part])
    return out
