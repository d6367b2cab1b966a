"""The truth of a partial-volume voxel: the model's parameters fitted to its noiseless mixed signal.

A voxel that mixes tissues measures the fraction-weighted sum of their signals, which is in general
not the model's signal at any parameter value, and not at the fraction-weighted mean of the tissue
parameters either: for MS-DKI, a mixture's apparent kurtosis gains ``3 Var(D) / mean(D)²`` from the
spread of D between compartments, and with free water in the voxel a fit over b up to
3 ms/µm² does not return the mixture's mean diffusivity.  What an estimator of the model can be
asked to report there is the model fitted to the noiseless signal: the parameters whose prediction is
closest (least squares over every measurement) to what the voxel would measure without noise.  That
is what :func:`apparent_parameters` computes, with the classical voxelwise fit of
:class:`~varmap.estimators.nlls.NLLSEstimator`; it depends on the protocol (its b-values), as the
parameters any estimator reports do.
"""

from __future__ import annotations

import numpy as np

from ..signal_models import SignalModel

__all__ = ["TRUTH_DEFINITION", "apparent_parameters"]

#: The phantom's truth in words, for reports: what it is and why.
TRUTH_DEFINITION = (
    "pure voxels: their tissue's parameters; mixed voxels: the model fitted by least squares to the voxel's "
    "noiseless signal (what a correct estimator of the model converges to as the noise vanishes; the "
    "volume-fraction-weighted mean of the tissues' parameters is not the model's answer for a mixed signal, e.g. "
    "MS-DKI's apparent kurtosis gains the spread of D between compartments)"
)

#: Levenberg-Marquardt settings of the noiseless fit: enough iterations and a tight tolerance that the
#: truth is the least-squares optimum to float32 precision.
_MAX_ITER, _TOL = 300, 1e-14


def apparent_parameters(signal_model: SignalModel, clean_signals: np.ndarray) -> dict[str, np.ndarray]:
    """Least-squares fit of ``signal_model`` to noiseless signals.

    Parameters
    ----------
    signal_model : SignalModel
        Model and protocol of the signals.
    clean_signals : ndarray, shape (n_voxels, n_measurements)
        Noiseless signals, raw units (positive b=0 signal).

    Returns
    -------
    dict of ndarray
        Every scalar parameter of the model, shape (n_voxels,), float32; directional models add
        ``"n"``, shape (n_voxels, 3).  Values are inside the model's parameter bounds (a mixture whose
        best fit lies outside them gets the bound).
    """
    from ..estimators.nlls import NLLSEstimator

    estimator = NLLSEstimator(signal_model, sigma=1.0, device="cpu", max_iter=_MAX_ITER, tol=_TOL)
    result = estimator.fit(np.asarray(clean_signals, dtype=np.float64))
    return {name: np.asarray(value, dtype=np.float32) for name, value in result.params.items()}
