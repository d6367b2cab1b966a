"""Estimators behind one interface, and the ``varmap.fit`` entry point.

The estimator classes (and torch) load when first used: ``import varmap.estimators`` and the option
tables of :mod:`varmap.estimators.options` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .options import OPTIONS

if TYPE_CHECKING:
    from ..protocol import Protocol
    from ..results import FitResult
    from ..signal_models import SignalModel
    from .base import Estimator

__all__ = ["ESTIMATORS", "get_estimator", "fit", "Estimator"]

#: Module and class of every registered method.
_REGISTRY = {
    "nlls": ("nlls", "NLLSEstimator"),
    "selfsup": ("selfsup", "SelfSupervisedEstimator"),
    "vae": ("vae", "VAEEstimator"),
    "gmvae": ("gmvae", "GMVAEEstimator"),
}
assert set(_REGISTRY) == set(OPTIONS), "every registered method declares its options"


def _load(method: str) -> type["Estimator"]:
    module, name = _REGISTRY[method]
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __getattr__(name: str) -> Any:
    if name == "ESTIMATORS":
        # Registered estimators by name (their modules load on first access).
        return {method: _load(method) for method in _REGISTRY}
    if name == "Estimator":
        from .base import Estimator

        return Estimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_estimator(method: str, model: "SignalModel", **options: Any) -> "Estimator":
    """Build the registered estimator ``method`` for ``model``.

    Parameters
    ----------
    method : str
        ``"nlls"``, ``"selfsup"``, ``"vae"`` or ``"gmvae"``.
    model : SignalModel
    **options
        ``seed``, ``device``, ``progress`` and the method's options
        (:data:`varmap.estimators.options.OPTIONS`).

    Raises
    ------
    ValueError
        If ``method`` is not registered (the message lists the valid names), or for a bad option.
    """
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_REGISTRY)}.")
    return _load(method)(model, **options)


def fit(
    signals: np.ndarray,
    protocol: "Protocol",
    *,
    model: str = "msdki",
    method: str = "gmvae",
    seed: int = 0,
    **options: Any,
) -> "FitResult":
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
        ``device``, ``progress`` and the method's options (:data:`varmap.estimators.options.OPTIONS`).

    Returns
    -------
    FitResult
    """
    from ..signal_models import get_signal_model

    return get_estimator(method, get_signal_model(model, protocol), seed=seed, **options).fit(signals)
