"""What the network estimators share: building the encoder, training on the voxels, inference in chunks.

These are functions, not a base class: :class:`~varmap.estimators.selfsup.SelfSupervisedEstimator` and
:class:`~varmap.estimators.variational.VariationalEstimator` call them with their own loss.  The random
streams they draw from are named (:mod:`varmap.random_streams`): ``"init"`` (weights and the initial
prior), ``"split"`` (held-out voxels), ``"batches"`` (mini-batch order), ``"training_noise"`` and
``"validation_noise"`` (reparametrisation draws; the held-out loss uses the same draws at every epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..random_streams import torch_stream
from .distributed import rank_stream
from .networks import Encoder, VoxelBatch, encoder_inputs, n_encoder_inputs
from .training import split_voxels, train_network

__all__ = [
    "build_encoder",
    "input_statistics",
    "untrained_input_statistics",
    "train_estimator",
    "map_chunks",
    "network_state",
    "torch_threads",
]

#: Least standard deviation by which the log noise-level input is standardised.
_NOISE_FEATURE_STD_FLOOR = 0.1

#: Most chunks :func:`map_chunks` works on at once on a CPU (each holds its own working memory).
_MAX_CHUNK_WORKERS = 4

T = TypeVar("T")

#: Loss of every voxel of a batch, given the epoch and a random generator.
VoxelLoss = Callable[[VoxelBatch, int, torch.Generator], torch.Tensor]


def input_statistics(voxels: VoxelBatch) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (floored) of the encoder inputs of ``voxels``, for standardisation.

    Computed in float64, so that a feature with the same value in every voxel (one noise level for the
    scan) has exactly that mean and standardises to 0.  The spread of the log noise level is floored
    at :data:`_NOISE_FEATURE_STD_FLOOR`: a scan mapped later with another noise level then differs by
    its log ratio, not by that ratio magnified a million times.
    """
    inputs = encoder_inputs(voxels).double()
    floor = torch.full((inputs.shape[-1],), 1e-6, dtype=inputs.dtype, device=inputs.device)
    floor[-1] = _NOISE_FEATURE_STD_FLOOR
    return inputs.mean(0).cpu().numpy(), torch.maximum(inputs.std(0), floor).cpu().numpy()


def untrained_input_statistics(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Placeholder standardisation (zeros, ones) for an encoder whose weights and buffers are loaded next."""
    n_inputs = n_encoder_inputs(model)
    return np.zeros(n_inputs), np.ones(n_inputs)


def build_encoder(
    estimator: Any, n_outputs: int, input_mean: np.ndarray, input_std: np.ndarray, generator: torch.Generator
) -> Encoder:
    """The encoder of a network estimator from its options (``n_hidden``, ``n_layers``, ``activation``).

    Parameters
    ----------
    estimator : Estimator
        A network estimator; its ``model`` fixes the input width (:func:`n_encoder_inputs`).
    n_outputs : int
    input_mean, input_std : ndarray, shape (n_encoder_inputs,)
        Standardisation of the inputs (:func:`input_statistics`; zeros and ones before loading weights).
    generator : torch.Generator
        Initial weights.
    """
    return Encoder(
        n_encoder_inputs(estimator.model),
        n_outputs,
        n_hidden=estimator.n_hidden or max(64, estimator.model.n_observables),
        n_layers=estimator.n_layers,
        activation=estimator.activation,
        input_mean=input_mean,
        input_std=input_std,
        generator=generator,
    )


def train_estimator(
    estimator: Any,
    voxels: VoxelBatch,
    loss: VoxelLoss,
    *,
    first_stop_epoch: int = 0,
    after_epoch: Callable[[int, VoxelBatch], bool] | None = None,
) -> dict[str, list[float]]:
    """Train ``estimator.network_`` on ``voxels`` with its options (epochs, batches, early stopping, threads).

    Parameters
    ----------
    estimator : Estimator
        A network estimator with ``network_``, ``device_``, ``seed`` and the network options.
    voxels : VoxelBatch
        Every valid voxel; ``validation_fraction`` of them are held out for early stopping (at most
        ``voxels_per_epoch`` of those are checked).
    loss : callable
        ``loss(batch, epoch, generator)``, the loss of every voxel of a batch, shape (B,).
    first_stop_epoch : int
        Epochs before this one do not count for early stopping (a warm-up).
    after_epoch : callable, optional
        ``after_epoch(epoch, training_voxels)`` may change the network; true if it did.

    Returns
    -------
    dict
        The training history of :func:`~varmap.estimators.training.train_network`.
    """
    device, seed = estimator.device_, estimator.seed
    train_index, val_index = split_voxels(voxels.n_voxels, estimator.validation_fraction, torch_stream(seed, "split"))
    val_index = val_index[: estimator.voxels_per_epoch]
    train_voxels = voxels.select(train_index.to(device))
    validation_voxels = voxels.select(val_index.to(device))
    training_noise = torch_stream(seed, rank_stream("training_noise"), device)

    def voxel_loss(batch: VoxelBatch, epoch: int, training: bool) -> torch.Tensor:
        generator = training_noise if training else torch_stream(seed, rank_stream("validation_noise"), device)
        return loss(batch, epoch, generator)

    threads = (estimator.n_threads or 1) if device.type == "cpu" else None
    with torch_threads(threads):
        return train_network(
            estimator.network_,
            voxel_loss,
            train_voxels,
            validation_voxels,
            n_epochs=estimator.n_epochs,
            batch_size=estimator.batch_size,
            max_batch_size=estimator.max_batch_size,
            learning_rate=estimator.learning_rate,
            patience=estimator.patience,
            min_improvement=estimator.min_improvement,
            first_stop_epoch=first_stop_epoch,
            voxels_per_epoch=estimator.voxels_per_epoch,
            after_epoch=None if after_epoch is None else lambda epoch: after_epoch(epoch, train_voxels),
            generator=torch_stream(seed, "batches"),
            progress=estimator.progress,
            description=f"{estimator.name} training",
        )


def map_chunks(
    function: Callable[[int, VoxelBatch], T], voxels: VoxelBatch, chunk_size: int, *, progress: bool, description: str
) -> list[T]:
    """``function(index, chunk)`` of the consecutive chunks of ``chunk_size`` voxels, in order.

    On a CPU with several torch threads, up to :data:`_MAX_CHUNK_WORKERS` chunks are worked on at once,
    each in its own Python thread with its share of the torch threads: a chunk's inference is many
    small tensor operations that gain little from intra-op threads (measured on 40,000 voxels with
    2 cores: 6.5-6.9 s as two chunks at once, one thread each, against 8.8-9.0 s one chunk at a time
    with two threads).  ``function`` must therefore draw its random numbers from a generator of its
    own chunk (``index``), so that the results do not depend on the order the chunks finish in.  The
    grad mode of the caller holds in the workers (it is thread-local in torch).
    """
    chunks = [voxels.select(slice(start, start + chunk_size)) for start in range(0, voxels.n_voxels, chunk_size)]
    n_threads = torch.get_num_threads()
    n_workers = min(_MAX_CHUNK_WORKERS, n_threads, len(chunks)) if voxels.observables.device.type == "cpu" else 1
    grad_enabled = torch.is_grad_enabled()

    def work(index: int) -> T:
        with torch.set_grad_enabled(grad_enabled):
            return function(index, chunks[index])

    bar = tqdm(total=len(chunks), desc=description, disable=not progress, leave=False)
    results = []
    with ExitStack() as stack:
        if n_workers > 1:
            stack.enter_context(torch_threads(max(1, n_threads // n_workers)))
            outputs = stack.enter_context(ThreadPoolExecutor(n_workers)).map(work, range(len(chunks)))
        else:
            outputs = map(work, range(len(chunks)))
        for result in outputs:
            results.append(result)
            bar.update()
    bar.close()
    return results


def network_state(network: nn.Module) -> dict:
    """The learned tensors of ``network`` on the CPU, for a checkpoint."""
    return {"network": {key: value.detach().cpu() for key, value in network.state_dict().items()}}


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run a block with ``n_threads`` torch CPU threads (``None``: unchanged), then restore."""
    previous = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
