"""Tests of the mini-batch training loop."""

from typing import NamedTuple

import pytest
import torch
from torch import nn

from varmap.estimators.training import split_voxels, train_network


class _Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


def _regression(n_voxels: int, seed: int = 0) -> _Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_voxels, 2, generator=generator)
    return _Batch(x, x @ torch.tensor([[2.0], [-1.0]]) + 0.5)


def _train(voxels_per_epoch: int | None, n_epochs: int = 3, seen: list | None = None) -> tuple[nn.Module, dict]:
    network = nn.Linear(2, 1)

    def loss_fn(batch: _Batch, epoch: int, training: bool) -> torch.Tensor:
        if training and seen is not None:
            seen.append((epoch, batch.x.shape[0]))
        return ((network(batch.x) - batch.y) ** 2).sum(-1)

    history = train_network(
        network, loss_fn, _regression(1000), _regression(200, seed=1),
        n_epochs=n_epochs, batch_size=64, learning_rate=0.05, patience=50, first_stop_epoch=0,
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
