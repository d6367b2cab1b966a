"""The result of a fit: named parameter maps, uncertainty, cluster probabilities and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the signal models load torch; a result only calls the model it holds
    from .signal_models import SignalModel

__all__ = ["FitResult"]


@dataclass
class FitResult:
    """Parameter estimates for every voxel of a fit.

    Attributes
    ----------
    model : SignalModel
        The physics model (with its protocol).
    method : str
        Name of the estimator.
    params : dict of ndarray
        Scalar maps of shape (n_voxels,) keyed by parameter name; directional models add ``"n"``,
        shape (n_voxels, 3), unit vectors.  NaN in excluded voxels.
    S0 : ndarray, shape (n_voxels,)
        Fitted non-diffusion-weighted signal, raw units.
    std : dict of ndarray or None
        Posterior standard deviation of each scalar parameter (variational methods); for ``"n"`` the
        angular spread in degrees.
    cluster_probs : ndarray, shape (n_voxels, n_components), or None
        Posterior probability of each mixture component (gmvae).
    effective_samples : ndarray, shape (n_voxels,), or None
        Effective sample size of the importance weights behind each voxel's posterior mean and
        standard deviation (variational methods): a small value means the summaries rest on few samples.
    valid : ndarray of bool, shape (n_voxels,)
        Voxels that were fitted (finite signals and a positive b=0 signal).
    sigma : ndarray, shape (n_voxels,)
        Noise standard deviation of one measurement that the fit used in each voxel, raw units (NaN
        where not fitted).
    sigma_source : str
        Where that noise level came from (given, per voxel, b=0 repeats, fit residuals).
    seed : int or None
    config : dict
        Resolved estimator settings.
    history : dict of list
        Training and validation loss per epoch (network methods).
    timings : dict of float
        Seconds spent in each stage.
    """

    model: SignalModel
    method: str
    params: dict[str, np.ndarray]
    S0: np.ndarray
    valid: np.ndarray
    sigma: np.ndarray
    sigma_source: str = ""
    std: dict[str, np.ndarray] | None = None
    cluster_probs: np.ndarray | None = None
    effective_samples: np.ndarray | None = None
    seed: int | None = None
    config: dict = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Number of voxels, fitted or not."""
        return int(self.valid.size)

    @property
    def clusters(self) -> np.ndarray | None:
        """Most probable component of each voxel (-1 where not fitted), or ``None``."""
        if self.cluster_probs is None:
            return None
        labels = np.argmax(np.nan_to_num(self.cluster_probs, nan=-1.0), axis=1)
        return np.where(self.valid, labels, -1)

    def predict(self) -> np.ndarray:
        """Predicted signal of every measurement, shape (n_voxels, n_measurements), raw units.

        Excluded voxels are NaN.
        """
        params = {name: np.nan_to_num(value) for name, value in self.params.items()}
        if "n" in params:
            params["n"] = np.where(self.valid[:, None], params["n"], np.array([1.0, 0.0, 0.0]))
        signals = self.model.predict(params, S0=self.S0)
        signals[~self.valid] = np.nan
        return signals

    def goodness_of_fit(self, signals: np.ndarray) -> np.ndarray:
        """RMSE between predicted and measured signals, both normalised by the fitted S0, per voxel."""
        residual = (self.predict() - np.asarray(signals, dtype=np.float64)) / self.S0[:, None]
        return np.sqrt(np.mean(residual**2, axis=1))
