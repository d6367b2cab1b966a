"""Shared machinery of the network estimators: seeding, data tensors, training and chunked inference."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..signal_models import SignalModel
from .base import Estimates, Estimator, resolve_device
from .data import S0_LEVEL, PreparedData, initial_unconstrained
from .networks import Encoder, SignalDecoder, VoxelBatch, encoder_inputs
from .training import split_voxels, train_network

__all__ = ["NetworkEstimator", "device_generator"]


class NetworkEstimator(Estimator):
    """Base of the estimators that train a network on all voxels at once.

    Parameters
    ----------
    model : SignalModel
    n_hidden : int, optional
        Width of the encoder's hidden layers; default ``max(64, n_observables)``.
    n_layers : int
        Number of hidden layers of the encoder.
    activation : str
        Encoder activation (``relu``, ``prelu``, ``softplus``, ``elu``, ``silu``).
    n_epochs : int
        Maximum number of training epochs.
    batch_size : int
        Voxels per mini-batch.
    learning_rate : float
        Adam step size.
    validation_fraction : float
        Fraction of voxels held out for early stopping (they are still mapped).
    patience : int
        Epochs without improvement of the held-out loss before training stops.
    voxels_per_epoch : int, optional
        Most training voxels one epoch visits (a fresh random subset each epoch) and most held-out
        voxels the early-stopping check evaluates (a fixed subset).  On a whole brain (about a
        million voxels) an epoch then costs the same as on a slice, and training time no longer grows
        with the image; every voxel is still mapped.  ``None``: no limit.
    chunk_size : int
        Voxels per inference chunk.
    n_threads : int, optional
        CPU threads for training.  Default 1: mini-batches of a few hundred voxels are too small to
        gain from intra-op parallelism, and extra threads slow them down (many times over when other
        processes share the cores).  Inference always uses torch's configured threads.
    **kwargs
        Passed to :class:`~varmap.estimators.base.Estimator` (``sigma``, ``likelihood``, ``seed``,
        ``device``, ``progress``).
    """

    def __init__(
        self,
        model: SignalModel,
        *,
        n_hidden: int | None = None,
        n_layers: int = 3,
        activation: str = "relu",
        n_epochs: int = 500,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        patience: int = 30,
        voxels_per_epoch: int | None = 32768,
        chunk_size: int = 4096,
        n_threads: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        if voxels_per_epoch is not None and voxels_per_epoch < batch_size:
            raise ValueError(
                f"voxels_per_epoch must be None or at least batch_size ({batch_size}); got {voxels_per_epoch!r}."
            )
        self.n_threads = n_threads
        self.n_hidden = n_hidden
        self.n_layers = n_layers
        self.activation = activation
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.voxels_per_epoch = voxels_per_epoch
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _encoder_outputs(self) -> int:
        """Width of the encoder's last layer."""

    @abstractmethod
    def _extra_modules(self, generator: torch.Generator) -> dict[str, nn.Module | nn.Parameter]:
        """Modules or parameters besides encoder and decoder (e.g. the prior)."""

    @abstractmethod
    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """Loss of every voxel of a batch, shape (B,)."""

    @abstractmethod
    def _estimate(self, batch: VoxelBatch, generator: torch.Generator) -> Estimates:
        """Estimates for one chunk of voxels (tensors on the device, no gradient); the S0 scale is relative
        to each voxel's mean b=0 signal."""

    def _output_layer(self) -> nn.Linear:
        """The layer whose outputs are the unconstrained parameters (plus S0 scale)."""
        return self.encoder_.net[-1]

    def _first_stop_epoch(self) -> int:
        """First epoch whose held-out loss counts for early stopping."""
        return 0

    def _inference_chunk(self) -> int:
        """Voxels per inference chunk."""
        return self.chunk_size

    def _after_epoch(self, epoch: int, train_data: VoxelBatch) -> bool:
        """Adjust the network after a training epoch; true if it changed (default: nothing)."""
        return False

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}}

    def _load_state(self, state: dict) -> None:
        n_inputs = self.model.n_observables + 1
        self.device_ = resolve_device(self.device)
        self._build(np.zeros(n_inputs), np.ones(n_inputs), torch.Generator().manual_seed(self.seed))
        self.network_.load_state_dict(state["network"])

    # ------------------------------------------------------------------ shared
    def _tensors(self, data: PreparedData, rows: np.ndarray | None = None) -> VoxelBatch:
        """The valid voxels (or those ``rows`` of them) as tensors on the device."""
        S0_relative, observables = data.S0_relative, data.observables
        if rows is not None:
            S0_relative, observables = S0_relative[rows], observables[rows]
        S0_relative = torch.as_tensor(S0_relative, device=self.device_)[:, None]
        observables = torch.as_tensor(observables, device=self.device_) * S0_relative
        sigma = torch.full_like(S0_relative, self.sigma_ / data.S0_reference)
        return VoxelBatch(observables, S0_relative, sigma)

    def _build(self, input_mean: np.ndarray, input_std: np.ndarray, generator: torch.Generator) -> None:
        n_hidden = self.n_hidden or max(64, self.model.n_observables)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.decoder_ = SignalDecoder(self.model, self.likelihood)
            self.encoder_ = Encoder(
                input_mean.size,
                self._encoder_outputs(),
                n_hidden=n_hidden,
                n_layers=self.n_layers,
                activation=self.activation,
                input_mean=input_mean,
                input_std=input_std,
            )
            modules = {"encoder": self.encoder_, "decoder": self.decoder_, **self._extra_modules(generator)}
            _start_at_typical_values(self._output_layer(), initial_unconstrained(self.model, S0_LEVEL))
        self.network_ = nn.ModuleDict(
            {k: v for k, v in modules.items() if isinstance(v, nn.Module)}
        ).to(self.device_)

    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        generator = torch.Generator().manual_seed(self.seed)
        voxels = self._tensors(data)
        inputs = encoder_inputs(voxels.observables, voxels.S0_relative)
        self._build(inputs.mean(0).cpu().numpy(), inputs.std(0).clamp_min(1e-6).cpu().numpy(), generator)
        train_index, val_index = split_voxels(voxels.observables.shape[0], self.validation_fraction, generator)
        if self.voxels_per_epoch is not None:
            val_index = val_index[: self.voxels_per_epoch]
        train_index, val_index = train_index.to(self.device_), val_index.to(self.device_)
        training_generator = device_generator(self.device_, self.seed + 1)
        threads = (self.n_threads or 1) if self.device_.type == "cpu" else None
        train_data = VoxelBatch(*(t[train_index] for t in voxels))
        with _torch_threads(threads):
            return train_network(
                self.network_,
                lambda batch, epoch, training: self._loss(
                    batch, epoch, training_generator if training else device_generator(self.device_, self.seed + 4)
                ),
                train_data,
                VoxelBatch(*(t[val_index] for t in voxels)),
                n_epochs=self.n_epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                patience=self.patience,
                first_stop_epoch=self._first_stop_epoch(),
                voxels_per_epoch=self.voxels_per_epoch,
                after_epoch=lambda epoch: self._after_epoch(epoch, train_data),
                generator=generator,
                progress=self.progress,
                description=f"{self.name} training",
            )

    def _infer(self, data: PreparedData) -> Estimates:
        voxels = self._tensors(data)
        generator = device_generator(self.device_, self.seed + 2)
        self.network_.eval()
        parts: list[Estimates] = []
        with torch.no_grad():
            batches = tqdm(self._chunks(voxels), desc=f"{self.name} inference", disable=not self.progress, leave=False)
            for batch in batches:
                parts.append(self._estimate(batch, generator))
        return _concatenate(parts)

    def _chunks(self, voxels: VoxelBatch) -> list[VoxelBatch]:
        """Consecutive views of ``voxels`` of :meth:`_inference_chunk` voxels each."""
        chunk = self._inference_chunk()
        starts = range(0, voxels.observables.shape[0], chunk)
        return [VoxelBatch(*(t[start : start + chunk] for t in voxels)) for start in starts]


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run a block with ``n_threads`` torch CPU threads (``None``: unchanged), then restore."""
    previous = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_at_typical_values(layer: nn.Linear, start: torch.Tensor, weight_scale: float = 0.1) -> None:
    """Make a fresh output layer predict the typical parameter values, with small input dependence.

    A default initialisation lands anywhere in the parameter ranges, including MS-DKI's region past the
    kurtosis turning point where signals explode; the first gradients then stall Adam for many epochs.
    """
    with torch.no_grad():
        layer.weight.mul_(weight_scale)
        layer.bias.copy_(start.to(layer.bias.dtype))


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded random generator on ``device``."""
    return torch.Generator(device=device).manual_seed(seed)


def _concatenate(parts: list[Estimates]) -> Estimates:
    def cat(values: list) -> np.ndarray | None:
        return None if values[0] is None else np.concatenate(values)

    std = None
    if parts[0].std is not None:
        std = {name: np.concatenate([p.std[name] for p in parts]) for name in parts[0].std}
    return Estimates(
        packed=cat([p.packed for p in parts]),
        S0_scale=cat([p.S0_scale for p in parts]),
        std=std,
        cluster_probs=cat([p.cluster_probs for p in parts]),
    )
