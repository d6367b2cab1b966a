"""Building blocks of the network estimators: the voxels as tensors, an encoder MLP, the physics decoder."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..signal_models import SignalModel
from .data import PreparedData
from .likelihood import gaussian_nll, rician_nll
from .parametrisation import S0_PER_SCALE, decode_unconstrained, initial_unconstrained

__all__ = [
    "VoxelBatch",
    "voxel_batch",
    "encoder_inputs",
    "n_encoder_inputs",
    "Encoder",
    "SignalDecoder",
    "ACTIVATIONS",
]

#: Encoder activations by name.
ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU}


class VoxelBatch(NamedTuple):
    """Tensors of a set of voxels, voxels first (units as in :mod:`varmap.estimators.data`).

    Attributes
    ----------
    observables : Tensor, shape (B, n_observables)
        Observables of the signals divided by the voxel's mean b=0 signal.
    b0_mean : Tensor, shape (B, 1)
        The voxel's mean b=0 signal, reference units.
    sigma : Tensor, shape (B, 1)
        Noise standard deviation of one measurement, in the units of the observables.
    noise_level : Tensor, shape (B, 1)
        The same in reference units (``sigma · b0_mean``; the same number in every voxel when one noise
        level holds for the scan).
    sigma_log_sd : Tensor, shape (B, 1)
        Uncertainty of the noise level, the standard deviation of log σ (0: known).
    """

    observables: torch.Tensor
    b0_mean: torch.Tensor
    sigma: torch.Tensor
    noise_level: torch.Tensor
    sigma_log_sd: torch.Tensor

    @property
    def n_voxels(self) -> int:
        """B."""
        return int(self.observables.shape[0])

    def select(self, index: torch.Tensor | slice) -> "VoxelBatch":
        """The voxels ``index``."""
        return VoxelBatch(*(t[index] for t in self))


def voxel_batch(data: PreparedData, device: torch.device, rows: np.ndarray | None = None) -> VoxelBatch:
    """The valid voxels of ``data`` (or those ``rows`` of them) as float32 tensors on ``device``."""
    columns = (data.b0_mean.astype(np.float32), data.sigma_normalised, (data.sigma / data.signal_scale).astype(np.float32),
               data.sigma_log_sd.astype(np.float32))
    observables = data.observables
    if rows is not None:
        observables, columns = observables[rows], tuple(column[rows] for column in columns)
    tensors = (observables, *(column[:, None] for column in columns))
    return VoxelBatch(*(torch.as_tensor(t, device=device) for t in tensors))


def encoder_inputs(batch: VoxelBatch) -> torch.Tensor:
    """Encoder input, shape (B, :func:`n_encoder_inputs`): the observables, the log of the voxel's mean b=0
    signal and the log of its noise level, both in reference units.  The last feature is constant when
    one noise level holds for the whole scan, and tells the encoder how noisy each voxel is when it varies
    (together with the b=0 feature it gives the voxel's SNR)."""
    return torch.cat([batch.observables, torch.log(batch.b0_mean), torch.log(batch.noise_level)], dim=-1)


def n_encoder_inputs(model: SignalModel) -> int:
    """Width of :func:`encoder_inputs` for ``model``: its observables plus the b=0 and noise features."""
    return model.n_observables + 2


class Encoder(nn.Module):
    """Fully connected network whose inputs are standardised by the training data's mean and std.

    Parameters
    ----------
    n_inputs, n_outputs : int
        Input and output widths.
    n_hidden : int
        Width of each hidden layer.
    n_layers : int
        Number of hidden layers.
    activation : str
        A key of :data:`ACTIVATIONS`.
    input_mean, input_std : ndarray, shape (n_inputs,)
        Standardisation constants (buffers, so checkpoints carry them).
    generator : torch.Generator
        Draws the initial weights (PyTorch's default uniform initialisation, from this generator).
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
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_layers):
            layers += [seeded_linear(width, n_hidden, generator), ACTIVATIONS[activation]()]
            width = n_hidden
        layers.append(seeded_linear(width, n_outputs, generator))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.as_tensor(input_mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.as_tensor(input_std, dtype=torch.float32))

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self.net[-1]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net((inputs - self.input_mean) / self.input_std)


def seeded_linear(n_inputs: int, n_outputs: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default initialisation, U(±1/√n_inputs), drawn from ``generator``."""
    layer = nn.Linear(n_inputs, n_outputs)
    bound = 1.0 / math.sqrt(n_inputs)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def start_at_typical_values(layer: nn.Linear, model: SignalModel, weight_scale: float = 0.1) -> None:
    """Make a fresh output layer predict the model's typical parameters and S0, with small input dependence.

    A default initialisation lands anywhere in the parameter ranges, including MS-DKI's region past the
    kurtosis turning point where signals explode; the first gradients then stall Adam for many epochs.
    """
    with torch.no_grad():
        layer.weight.mul_(weight_scale)
        layer.bias.copy_(initial_unconstrained(model, S0_PER_SCALE).to(layer.bias.dtype))


class SignalDecoder(nn.Module):
    """Unconstrained parameter vectors -> bounded physical parameters and S0 -> predicted observables.

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
        """Packed physical parameters (..., n_packed) and S0 in reference units (..., 1)."""
        return decode_unconstrained(self.model, unconstrained, S0_PER_SCALE)

    def predict(self, unconstrained: torch.Tensor, b0_mean: torch.Tensor) -> torch.Tensor:
        """Predicted observables of voxels whose mean b=0 signal is ``b0_mean`` (..., 1), in the units of
        their observables (S0 / b0_mean · φ(θ)), shape (..., n_observables)."""
        packed, S0 = self.parameters_of(unconstrained)
        return (S0 / b0_mean) * self.model.forward(packed)

    def nll(self, batch: VoxelBatch, unconstrained: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of a batch's observables given unconstrained vectors.

        ``unconstrained`` has shape (..., B, n_packed + 1) (leading sample or component axes broadcast
        against the batch); returns shape (..., B).
        """
        return self.nll_of(batch.observables, unconstrained, batch.b0_mean, batch.sigma, batch.sigma_log_sd)

    def nll_of(
        self,
        observables: torch.Tensor,
        unconstrained: torch.Tensor,
        b0_mean: torch.Tensor,
        sigma: torch.Tensor,
        sigma_log_sd: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative log-likelihood of ``observables`` (..., n_observables) given unconstrained vectors;
        ``b0_mean``, ``sigma`` and the noise level's uncertainty ``sigma_log_sd`` (..., 1) broadcast.
        Returns shape (...)."""
        predicted = self.predict(unconstrained, b0_mean)
        counts = self.counts.to(predicted.dtype)
        if self.likelihood == "rician":
            return rician_nll(observables, predicted, sigma, counts, sigma_log_sd)
        return gaussian_nll(observables, predicted, sigma, counts)
