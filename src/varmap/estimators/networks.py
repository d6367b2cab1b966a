"""Building blocks of the network estimators: encoder MLP with input standardisation, and a linear decoder."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..signal_models import SignalModel
from .data import S0_LEVEL, decode_unconstrained
from .likelihood import gaussian_nll, rician_nll

__all__ = ["Encoder", "SignalDecoder", "VoxelBatch", "encoder_inputs"]

_ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU}


class VoxelBatch(NamedTuple):
    """Tensors of a set of voxels, voxels on the first axis.

    Attributes
    ----------
    observables : Tensor, shape (B, n_observables)
        Observables relative to the dataset's median b=0 signal.
    S0_relative : Tensor, shape (B, 1)
        The voxel's mean b=0 signal relative to that median.
    sigma : Tensor, shape (B, 1)
        Noise standard deviation of one measurement relative to that median.
    """

    observables: torch.Tensor
    S0_relative: torch.Tensor
    sigma: torch.Tensor


def encoder_inputs(observables: torch.Tensor, S0_relative: torch.Tensor) -> torch.Tensor:
    """Encoder input, shape (..., n_obs + 1): observables normalised by the voxel's mean b=0 signal, and
    the log of that signal relative to the dataset's median."""
    return torch.cat([observables / S0_relative, torch.log(S0_relative)], dim=-1)


class Encoder(nn.Module):
    """Fully connected encoder whose inputs are standardised by the training data's mean and std.

    Parameters
    ----------
    n_inputs : int
        Input width (observables plus one noise-level feature).
    n_outputs : int
        Output width.
    n_hidden : int
        Width of each hidden layer.
    n_layers : int
        Number of hidden layers.
    activation : str
        One of ``relu``, ``prelu``, ``softplus``, ``elu``, ``silu``.
    input_mean, input_std : ndarray, shape (n_inputs,)
        Standardisation constants (stored as buffers so checkpoints carry them).
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        *,
        n_hidden: int,
        n_layers: int,
        activation: str,
        input_mean: np.ndarray,
        input_std: np.ndarray,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}.")
        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_layers):
            layers += [nn.Linear(width, n_hidden), _ACTIVATIONS[activation]()]
            width = n_hidden
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.as_tensor(input_mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.as_tensor(input_std, dtype=torch.float32))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net((inputs - self.input_mean) / self.input_std)


class SignalDecoder(nn.Module):
    """Unconstrained parameter vectors -> bounded physical parameters -> predicted observables.

    Parameters
    ----------
    model : SignalModel
    likelihood : {"rician", "gaussian"}
    """

    def __init__(self, model: SignalModel, likelihood: str) -> None:
        super().__init__()
        self.model = model
        self.likelihood = likelihood
        self.register_buffer("counts", torch.as_tensor(model.observation_counts, dtype=torch.float32))

    def parameters_of(self, unconstrained: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed physical parameters and S0 level (:data:`~varmap.estimators.data.S0_LEVEL`)."""
        return decode_unconstrained(self.model, unconstrained, S0_LEVEL)

    def predict(self, unconstrained: torch.Tensor) -> torch.Tensor:
        """Predicted observables relative to the dataset's median S0, shape (..., n_observables)."""
        packed, S0_level = self.parameters_of(unconstrained)
        return S0_level * self.model.forward(packed)

    def nll(self, observables: torch.Tensor, unconstrained: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the observables given unconstrained vectors, shape (...)."""
        predicted = self.predict(unconstrained)
        counts = self.counts.to(predicted.dtype)
        if self.likelihood == "rician":
            return rician_nll(observables, predicted, sigma, counts)
        return gaussian_nll(observables, predicted, sigma, counts)
