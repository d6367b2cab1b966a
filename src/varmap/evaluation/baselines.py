"""Reference fits from other software that the studies compare varmap's estimators with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..protocol import Protocol

__all__ = ["DIPY_METHOD", "BASELINES", "fit_dipy_msdki"]

#: Name of dipy's MS-DKI fit in the tables.
DIPY_METHOD = "dipy_msdki"


def fit_dipy_msdki(signals: np.ndarray, protocol: Protocol) -> dict[str, np.ndarray]:
    """dipy's mean-signal DKI fit (weighted least squares on the log of the powder-averaged signals).

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
    protocol : Protocol

    Returns
    -------
    dict of ndarray
        ``"D"`` in µm²/ms (dipy's mm²/s × 1000, since dipy is given b in s/mm²) and ``"K"``, shape
        (n_voxels,); non-finite values of failed voxels are left as dipy returns them.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.msdki import MeanDiffusionKurtosisModel

    gtab = gradient_table(
        np.asarray(protocol.bvals) * 1000.0,
        bvecs=np.asarray(protocol.bvecs),
        b0_threshold=float(protocol.b0_threshold) * 1000.0,
    )
    fit = MeanDiffusionKurtosisModel(gtab).fit(np.asarray(signals))
    return {"D": np.asarray(fit.msd, dtype=np.float64) * 1000.0, "K": np.asarray(fit.msk, dtype=np.float64)}


#: Baseline of each signal model that has one: ``BASELINES[model] = (method name, fit(signals, protocol))``.
BASELINES: dict[str, tuple[str, Callable[[np.ndarray, Protocol], dict[str, np.ndarray]]]] = {
    "msdki": (DIPY_METHOD, fit_dipy_msdki),
}
