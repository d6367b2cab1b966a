"""The interface every estimator follows: settings in the constructor, work in ``fit``."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..results import FitResult
from ..signal_models import SignalModel
from .data import PreparedData, estimate_sigma_from_b0, prepare_signals
from .likelihood import check_likelihood

__all__ = ["Estimator", "Estimates", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` gives CUDA when available, else CPU; anything else is passed to torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Estimates:
    """What an estimator's inference returns for the valid voxels."""

    packed: np.ndarray
    S0_scale: np.ndarray
    std: dict[str, np.ndarray] | None = None
    cluster_probs: np.ndarray | None = None


class Estimator(ABC):
    """Base class of the voxelwise and latent-variable estimators.

    Parameters
    ----------
    model : SignalModel
        Physics model bound to the acquisition protocol.
    sigma : float, optional
        Noise standard deviation of one measurement in raw signal units.  Estimated from repeated b=0
        measurements when not given; with fewer than two it must be given.
    likelihood : {"rician", "gaussian"}
        Noise model of the reconstruction term (network methods).
    seed : int
        Seed of every random draw; fitting twice with one seed gives the same result.
    device : str or torch.device, optional
        ``None``/``"auto"``: CUDA if available, else CPU.
    progress : bool
        Show tqdm progress bars.
    """

    name: ClassVar[str]

    def __init__(
        self,
        model: SignalModel,
        *,
        sigma: float | None = None,
        likelihood: str = "rician",
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.sigma = sigma
        self.likelihood = check_likelihood(likelihood)
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ public
    def fit(self, signals: np.ndarray) -> FitResult:
        """Estimate parameters for every voxel.

        Parameters
        ----------
        signals : ndarray, shape (n_voxels, n_measurements)
            Raw magnitude signals (not normalised).  Voxels with NaN/Inf values or a non-positive mean
            b=0 signal are excluded and get NaN parameters.

        Returns
        -------
        FitResult
        """
        start = time.perf_counter()
        data = self._prepare(signals)
        self.device_ = resolve_device(self.device)
        prepared = time.perf_counter()
        self.history_ = self._train(data)
        trained = time.perf_counter()
        estimates = self._infer(data)
        done = time.perf_counter()
        timings = {"prepare_s": prepared - start, "train_s": trained - prepared, "infer_s": done - trained}
        return self._result(data, estimates, timings)

    def transform(self, signals: np.ndarray) -> FitResult:
        """Apply an already fitted estimator to new signals of the same protocol, without training."""
        if not hasattr(self, "sigma_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first.")
        self.device_ = getattr(self, "device_", resolve_device(self.device))
        start = time.perf_counter()
        data = self._prepare(signals, sigma=self.sigma_)
        estimates = self._infer(data)
        return self._result(data, estimates, {"infer_s": time.perf_counter() - start})

    def get_state(self) -> dict:
        """Everything needed to apply this fitted estimator to new data: settings, noise level, weights.

        Returns
        -------
        dict
            ``method``, ``config`` (constructor settings), ``sigma`` (raw units) and the learned tensors
            (CPU); save it with ``torch.save`` and restore it with :meth:`from_state`.
        """
        if not hasattr(self, "sigma_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first.")
        return {"method": self.name, "config": self.get_config(), "sigma": self.sigma_, **self._state()}

    @classmethod
    def from_state(cls, model: SignalModel, state: dict, *, device: str | torch.device | None = None) -> "Estimator":
        """Rebuild a fitted estimator from :meth:`get_state` for ``model`` (same protocol as the fit).

        Parameters
        ----------
        model : SignalModel
        state : dict
            As returned by :meth:`get_state` (tensors may come from ``torch.load(..., map_location=...)``).
        device : str or torch.device, optional
            Where to run inference; overrides the device of the fit.
        """
        config = {k: v for k, v in state["config"].items() if k not in ("method", "model")}
        config["device"] = device
        if isinstance(config.get("temperature"), list):
            config["temperature"] = tuple(config["temperature"])
        estimator = cls(model, **config)
        estimator.sigma_ = float(state["sigma"])
        estimator._load_state(state)
        return estimator

    def _state(self) -> dict:
        """Learned tensors; voxelwise methods have none."""
        return {}

    def _load_state(self, state: dict) -> None:
        """Restore what :meth:`_state` saved."""
        self.device_ = resolve_device(self.device)

    def get_config(self) -> dict:
        """Settings of this estimator as a JSON-serialisable dict."""
        config = {key: value for key, value in vars(self).items() if not key.endswith("_") and key != "model"}
        config["device"] = None if self.device is None else str(self.device)
        config["method"] = self.name
        config["model"] = self.model.name
        return config

    # ------------------------------------------------------------------ hooks
    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        """Learn from the data; voxelwise methods learn nothing and return an empty history."""
        return {}

    @abstractmethod
    def _infer(self, data: PreparedData) -> Estimates:
        """Estimate the parameters of ``data``'s voxels."""

    # ------------------------------------------------------------------ helpers
    def _prepare(self, signals: np.ndarray, sigma: float | None = None) -> PreparedData:
        valid, S0_mean, observables = prepare_signals(signals, self.model)
        if not valid.any():
            raise ValueError(
                "no voxel has finite signals and a positive mean b=0 signal; check the data and mask."
            )
        sigma = self.sigma if sigma is None else sigma
        if sigma is None:
            b0_signals = np.asarray(signals)[:, self.model.protocol.b0_mask][valid]
            sigma = estimate_sigma_from_b0(b0_signals, np.ones(b0_signals.shape[1], dtype=bool))
        if sigma is None:
            raise ValueError(
                "cannot estimate the noise level: the protocol has fewer than two b=0 measurements. "
                "Pass sigma= (noise standard deviation in signal units); varmap.fit_image estimates it "
                "from the b=0 image."
            )
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive noise standard deviation; got {sigma!r}.")
        self.sigma_ = float(sigma)
        return PreparedData(
            valid=valid,
            S0_mean=S0_mean,
            observables=observables,
            sigma_normalised=(self.sigma_ / S0_mean[valid]).astype(np.float32),
            S0_reference=float(np.median(S0_mean[valid])),
        )

    def _result(self, data: PreparedData, estimates: Estimates, timings: dict[str, float]) -> FitResult:
        n_voxels = data.valid.size
        packed = np.full((n_voxels, self.model.n_packed), np.nan)
        packed[data.valid] = estimates.packed
        S0 = np.full(n_voxels, np.nan)
        S0[data.valid] = data.S0_mean[data.valid] * estimates.S0_scale
        std = None
        if estimates.std is not None:
            std = {}
            for name, values in estimates.std.items():
                full = np.full(n_voxels, np.nan)
                full[data.valid] = values
                std[name] = full
        probs = None
        if estimates.cluster_probs is not None:
            probs = np.full((n_voxels, estimates.cluster_probs.shape[1]), np.nan)
            probs[data.valid] = estimates.cluster_probs
        return FitResult(
            model=self.model,
            method=self.name,
            params=self.model.unpack(packed),
            S0=S0,
            valid=data.valid,
            sigma=self.sigma_,
            std=std,
            cluster_probs=probs,
            seed=self.seed,
            config=self.get_config(),
            history=getattr(self, "history_", {}),
            timings=timings,
        )
