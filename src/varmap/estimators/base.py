"""The interface every estimator follows: settings in the constructor, work in ``fit``."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..results import FitResult
from ..signal_models import SignalModel
from .data import PreparedData, prepare_signals
from .options import check_options, method_options

__all__ = ["Estimator", "Estimates"]


@dataclass
class Estimates:
    """What an estimator's inference returns for the valid voxels.

    Attributes
    ----------
    packed : ndarray, shape (n_valid, n_packed)
        Packed parameters (:meth:`SignalModel.pack` layout).
    S0 : ndarray, shape (n_valid,)
        S0 in reference units (:mod:`varmap.estimators.data`).
    std : dict of ndarray, optional
        Posterior standard deviation of each parameter (``"n"``: angular spread in degrees).
    cluster_probs : ndarray, shape (n_valid, K), optional
        Posterior probability of each mixture component.
    effective_samples : ndarray, shape (n_valid,), optional
        Effective sample size of the importance weights behind each voxel's posterior summaries.
    """

    packed: np.ndarray
    S0: np.ndarray
    std: dict[str, np.ndarray] | None = None
    cluster_probs: np.ndarray | None = None
    effective_samples: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: list["Estimates"]) -> "Estimates":
        """The estimates of consecutive chunks of voxels, joined."""
        first = parts[0]

        def joined(name: str) -> np.ndarray | None:
            return None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])

        return cls(
            packed=joined("packed"),
            S0=joined("S0"),
            std=None if first.std is None else {k: np.concatenate([p.std[k] for p in parts]) for k in first.std},
            cluster_probs=joined("cluster_probs"),
            effective_samples=joined("effective_samples"),
        )

    def with_rows(self, rows: np.ndarray, other: "Estimates") -> "Estimates":
        """These estimates with those of voxels ``rows`` replaced by ``other``'s (one voxel of ``other``
        per row, in order)."""

        def replaced(mine: np.ndarray | None, theirs: np.ndarray | None) -> np.ndarray | None:
            if mine is None:
                return None
            mine = mine.copy()
            mine[rows] = theirs
            return mine

        return Estimates(
            packed=replaced(self.packed, other.packed),
            S0=replaced(self.S0, other.S0),
            std=None if self.std is None else {k: replaced(v, other.std[k]) for k, v in self.std.items()},
            cluster_probs=replaced(self.cluster_probs, other.cluster_probs),
            effective_samples=replaced(self.effective_samples, other.effective_samples),
        )


class Estimator(ABC):
    """Base class of every estimator.

    Parameters
    ----------
    model : SignalModel
        Physics model bound to the acquisition protocol.
    seed : int
        Seed of every random draw; fitting twice with one seed gives the same result.
    device : str or torch.device, optional
        ``None``/``"auto"``: CUDA if available, else CPU (:func:`varmap.devices.resolve_device`).
    progress : bool
        Show tqdm progress bars.
    **options
        The method's options, declared in :data:`varmap.estimators.options.OPTIONS` (name, type,
        default, range); each becomes an attribute of the same name.  ``sigma`` is the noise standard
        deviation of one measurement in raw signal units, one number or one per voxel (each voxel's
        estimated from its fit residuals when not given: :mod:`varmap.estimators.noise_level`);
        ``likelihood`` the noise model of the reconstruction term.

    Raises
    ------
    ValueError
        For an option the method does not have, or a value out of its range.
    """

    name: ClassVar[str]

    def __init__(
        self,
        model: SignalModel,
        *,
        seed: int = 0,
        device: Any = None,
        progress: bool = False,
        **options: Any,
    ) -> None:
        self.model = model
        self.seed = int(seed)
        self.device = device
        self.progress = progress
        for key, value in check_options(self.name, options).items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ public
    def fit(self, signals: np.ndarray) -> FitResult:
        """Learn from the signals (:meth:`train`) and estimate parameters for every voxel.

        Parameters
        ----------
        signals : ndarray, shape (n_voxels, n_measurements)
            Raw magnitude signals (not normalised).  Voxels with NaN/Inf values or a non-positive mean
            b=0 signal are excluded and get NaN parameters.

        Returns
        -------
        FitResult
        """
        data = self._learn(signals)
        start = time.perf_counter()
        estimates = self._infer(data)
        timings = {**self.timings_, "infer_s": time.perf_counter() - start}
        return self._result(data, estimates, timings)

    def train(self, signals: np.ndarray) -> "Estimator":
        """Learn from the signals without mapping them (what :meth:`fit` does before its inference).

        For a model trained on many scans and applied to each with :meth:`transform` later.  The
        training history is in ``history_``, the seconds of each stage in ``timings_``.

        Returns
        -------
        Estimator
            ``self``, fitted.
        """
        self._learn(signals)
        return self

    def transform(self, signals: np.ndarray, *, sigma: float | np.ndarray | None = None) -> FitResult:
        """Apply an already fitted estimator to new signals of the same protocol, without training.

        Parameters
        ----------
        signals : ndarray, shape (n_voxels, n_measurements)
            Raw magnitude signals of a scan.
        sigma : float or ndarray of shape (n_voxels,), optional
            The scan's noise level (raw units), one number or one per voxel; default: estimated from
            these signals as :meth:`fit` does (a new scan has its own noise level).
        """
        self._check_fitted()
        start = time.perf_counter()
        data = prepare_signals(signals, self.model, sigma=sigma)
        estimates = self._infer(data)
        return self._result(data, estimates, {"infer_s": time.perf_counter() - start})

    def get_state(self) -> dict:
        """Everything needed to apply this fitted estimator to new data: settings, noise level, weights.

        Returns
        -------
        dict
            ``method``, ``config`` (:meth:`get_config`), ``sigma`` (the fit's median noise level, raw
            units, for the record) and the learned tensors (CPU); save it with ``torch.save`` and restore
            it with :meth:`from_state`.
        """
        self._check_fitted()
        return {"method": self.name, "config": self.get_config(), "sigma": self.fitted_sigma_, **self._state()}

    @classmethod
    def from_state(cls, model: SignalModel, state: dict, *, device: Any = None) -> "Estimator":
        """Rebuild a fitted estimator from :meth:`get_state` for ``model`` (same protocol as the fit).

        Parameters
        ----------
        model : SignalModel
        state : dict
            As returned by :meth:`get_state` (tensors may come from ``torch.load(..., map_location=...)``).
        device : str or torch.device, optional
            Where to run inference; overrides the device of the fit.
        """
        from ..devices import resolve_device

        config = state["config"]
        options = {name: config[name] for name in method_options(cls.name) if name in config}
        if not isinstance(options.get("sigma"), (int, float)):
            options.pop("sigma", None)  # a per-voxel noise level belongs to the scan it was fitted on
        estimator = cls(model, seed=config.get("seed", 0), device=device, **options)
        estimator.fitted_sigma_ = float(state["sigma"])
        estimator.device_ = resolve_device(device)
        estimator._load_state(state)
        return estimator

    def get_config(self) -> dict:
        """Settings of this estimator as a JSON-serialisable dict: method, model, seed, device, options."""
        config: dict[str, Any] = {"method": self.name, "model": self.model.name, "seed": self.seed,
                                  "device": None if self.device is None else str(self.device)}
        for name in method_options(self.name):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = f"per voxel ({value.size} values, median {np.median(value):.6g})"
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    # ------------------------------------------------------------------ what each estimator implements
    @abstractmethod
    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        """Learn from the data and return the training history (empty for voxelwise methods)."""

    @abstractmethod
    def _infer(self, data: PreparedData) -> Estimates:
        """Estimate the parameters of ``data``'s valid voxels."""

    def _state(self) -> dict:
        """Learned tensors; voxelwise methods have none."""
        return {}

    def _load_state(self, state: dict) -> None:
        """Restore what :meth:`_state` saved."""

    # ------------------------------------------------------------------ helpers
    def _learn(self, signals: np.ndarray) -> PreparedData:
        """Prepare the signals and train; returns the prepared data for inference."""
        from ..devices import resolve_device

        start = time.perf_counter()
        data = prepare_signals(signals, self.model, sigma=self.sigma)
        self.device_ = resolve_device(self.device)
        prepared = time.perf_counter()
        self.history_ = self._train(data)
        self.fitted_sigma_ = float(np.median(data.sigma))
        self.timings_ = {"prepare_s": prepared - start, "train_s": time.perf_counter() - prepared}
        return data

    def _check_fitted(self) -> None:
        if not hasattr(self, "fitted_sigma_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first.")

    def _result(self, data: PreparedData, estimates: Estimates, timings: dict[str, float]) -> FitResult:
        n_voxels = data.valid.size

        def full(values: np.ndarray) -> np.ndarray:
            out = np.full((n_voxels, *values.shape[1:]), np.nan)
            out[data.valid] = values
            return out

        return FitResult(
            model=self.model,
            method=self.name,
            params=self.model.unpack(full(estimates.packed)),
            S0=full(estimates.S0 * data.signal_scale),
            valid=data.valid,
            sigma=full(data.sigma),
            sigma_source=data.sigma_source,
            std=None if estimates.std is None else {name: full(v) for name, v in estimates.std.items()},
            cluster_probs=None if estimates.cluster_probs is None else full(estimates.cluster_probs),
            effective_samples=None if estimates.effective_samples is None else full(estimates.effective_samples),
            seed=self.seed,
            config=self.get_config(),
            history=getattr(self, "history_", {}),
            timings=timings,
        )
