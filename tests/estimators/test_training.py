"""Tests of the mini-batch training loop."""

import math
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch import nn

from varmap.estimators.distributed import launch, rank_and_size
from varmap.estimators.networks import seeded_linear
from varmap.estimators.training import _clip_gradients, split_voxels, train_network


class _Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


def _regression(n_voxels: int, seed: int = 0) -> _Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_voxels, 2, generator=generator)
    return _Batch(x, x @ torch.tensor([[2.0], [-1.0]]) + 0.5)


def _train(
    voxels_per_epoch: int | None, n_epochs: int = 3, seen: list | None = None, patience: int = 50
) -> tuple[nn.Module, dict]:
    network = seeded_linear(2, 1, torch.Generator().manual_seed(0))

    def loss_fn(batch: _Batch, epoch: int, training: bool) -> torch.Tensor:
        if training and seen is not None:
            seen.append((epoch, batch.x.shape[0]))
        return ((network(batch.x) - batch.y) ** 2).sum(-1)

    history = train_network(
        network, loss_fn, _regression(1000), _regression(200, seed=1),
        n_epochs=n_epochs, batch_size=64, learning_rate=0.05, patience=patience, first_stop_epoch=0,
        voxels_per_epoch=voxels_per_epoch, generator=torch.Generator().manual_seed(0), progress=False,
        description="test",
    )
    return network, history


def test_split_is_disjoint_and_complete():
    train, val = split_voxels(101, 0.1, torch.Generator().manual_seed(0))
    assert len(val) == 10 and len(train) == 91
    assert sorted(torch.cat([train, val]).tolist()) == list(range(101))
    with pytest.raises(ValueError, match="validation_fraction"):
        split_voxels(10, 1.0, torch.Generator())


@pytest.mark.parametrize("voxels_per_epoch, expected", [(None, 1000), (300, 300), (5000, 1000)])
def test_an_epoch_visits_at_most_voxels_per_epoch(voxels_per_epoch, expected):
    seen: list = []
    _, history = _train(voxels_per_epoch, seen=seen)
    for epoch in range(3):
        assert sum(n for e, n in seen if e == epoch) == expected
    assert len(history["train_loss"]) == len(history["val_loss"]) == 3


def test_training_fits_and_keeps_the_best_epoch():
    network, history = _train(300, n_epochs=60)
    assert torch.allclose(network.weight, torch.tensor([[2.0, -1.0]]), atol=1e-2)
    assert torch.allclose(network.bias, torch.tensor([0.5]), atol=1e-2)
    best = history["best_epoch"][0]
    assert history["val_loss"][best] == min(history["val_loss"])


#: Training voxels per epoch of the data-parallel test: mini-batches of 64, 64 and 1 voxel, so that one
#: process gets no voxel of the last one.
_PARALLEL_EPOCH = 129


def _train_and_save(folder: Path) -> None:
    """Worker of :func:`launch`: train the regression with early stopping, save weights and history."""
    network, history = _train(_PARALLEL_EPOCH, n_epochs=40, patience=3)
    rank, _ = rank_and_size()
    torch.save({"state": network.state_dict(), "history": history}, folder / f"rank{rank}.pt")


def test_two_processes_train_as_one(tmp_path):
    launch(_train_and_save, 2, (tmp_path,), device=torch.device("cpu"))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    network, history = _train(_PARALLEL_EPOCH, n_epochs=40, patience=3)
    # the processes end with identical networks after the same decisions...
    assert ranks[0]["history"] == ranks[1]["history"]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name])
    # ...and the regression has no random draw, so they match one process up to rounding
    assert history["stopped_epoch"][0] < 39, "early stopping should decide"
    assert ranks[0]["history"]["stopped_epoch"] == history["stopped_epoch"]
    assert ranks[0]["history"]["best_epoch"] == history["best_epoch"]
    assert ranks[0]["history"]["val_loss"] == pytest.approx(history["val_loss"], rel=1e-5, abs=1e-7)
    for name, value in network.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "max_batch_size, n_train, sizes",
    [(None, 20000, {64}), (64, 20000, {64}), (1024, 20000, {64, 256, 1024}), (1000, 20000, {64, 256}),
     (1024, 4000, {64})],
)
def test_plateaus_grow_the_batch_up_to_its_limit(max_batch_size, n_train, sizes):
    """Targets that are pure noise: the held-out loss stalls at once, so each plateau grows the batch
    fourfold while it stays within max_batch_size and an epoch keeps 16 steps (4000 voxels: 250 at
    most), then the learning rate drops and the batch stays."""
    network = seeded_linear(2, 1, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(3)
    noise = _Batch(torch.randn(n_train + 400, 2, generator=generator), torch.randn(n_train + 400, 1, generator=generator))

    def loss_fn(batch: _Batch, epoch: int, training: bool) -> torch.Tensor:
        return ((network(batch.x) - batch.y) ** 2).sum(-1)

    history = train_network(
        network, loss_fn, _Batch(noise.x[:n_train], noise.y[:n_train]), _Batch(noise.x[n_train:], noise.y[n_train:]),
        n_epochs=40, batch_size=64, learning_rate=0.05, patience=8, max_batch_size=max_batch_size,
        first_stop_epoch=0, generator=torch.Generator().manual_seed(0), progress=False, description="test",
    )
    assert set(history["batch_size"]) == sizes
    assert history["batch_size"] == sorted(history["batch_size"])  # it only grows


def test_clip_gradients_does_what_clip_grad_norm_does():
    def network_with_gradients(scale: float) -> nn.Module:
        network = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
        torch.manual_seed(0)
        for parameter in network.parameters():
            parameter.grad = scale * torch.randn_like(parameter)
        return network

    for scale, max_norm in ((1.0, 1e3), (1.0, 0.5), (1e4, 2.0), (1.0, float("inf"))):
        mine, reference = network_with_gradients(scale), network_with_gradients(scale)
        norm = _clip_gradients(list(mine.parameters()), max_norm)
        expected = float(nn.utils.clip_grad_norm_(reference.parameters(), max_norm))
        assert norm == pytest.approx(expected, rel=1e-6)
        for a, b in zip(mine.parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, b.grad)
    broken = network_with_gradients(1.0)
    next(broken.parameters()).grad[0, 0] = float("nan")
    assert not math.isfinite(_clip_gradients(list(broken.parameters()), 1.0))
