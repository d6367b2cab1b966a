"""Estimators behind one interface, and the ``varmap.fit`` entry point."""

from __future__ import annotations

import numpy as np

from ..protocol import Protocol
from ..results import FitResult
from ..signal_models import SignalModel, get_signal_model
from .base import Estimator
from .nlls import NLLSEstimator
from .gmvae import GMVAEEstimator
from .selfsup import SelfSupervisedEstimator
from .vae import VAEEstimator

__all__ = ["ESTIMATORS", "get_estimator", "fit", "Estimator"]

#: Registered estimators by name.
ESTIMATORS: dict[str, type[Estimator]] = {
    NLLSEstimator.name: NLLSEstimator,
    SelfSupervisedEstimator.name: SelfSupervisedEstimator,
    VAEEstimator.name: VAEEstimator,
    GMVAEEstimator.name: GMVAEEstimator,
}


def get_estimator(method: str, model: SignalModel, **options) -> Estimator:
    """Build the registered estimator ``method`` for ``model``.

    Raises
    ------
    ValueError
        If ``method`` is not registered; the message lists the valid names.
    """
    try:
        estimator_class = ESTIMATORS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ESTIMATORS)}.") from None
    return estimator_class(model, **options)


def fit(
    signals: np.ndarray,
    protocol: Protocol,
    *,
    model: str = "msdki",
    method: str = "gmvae",
    seed: int = 0,
    **options,
) -> FitResult:
    """Fit a signal model to voxel signals.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Raw magnitude signals; varmap divides each voxel by its mean b=0 signal.
    protocol : Protocol
        The acquisition.
    model : str
        Name of a registered signal model (``"msdki"``, ``"ball_stick"``).
    method : str
        Name of a registered estimator (``"nlls"``, ``"selfsup"``, ``"vae"``, ``"gmvae"``).
    seed : int
        Seed of every random draw.
    **options
        Keyword arguments of the estimator (see its class).

    Returns
    -------
    FitResult
    """
    signal_model = get_signal_model(model, protocol)
    return get_estimator(method, signal_model, seed=seed, **options).fit(signals)
