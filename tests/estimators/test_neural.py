"""Tests of what the network estimators share: chunked inference in parallel threads."""

import torch

from varmap.estimators.networks import VoxelBatch
from varmap.estimators.neural import map_chunks, torch_threads


def _voxels(n_voxels: int) -> VoxelBatch:
    column = torch.arange(n_voxels, dtype=torch.float32)[:, None]
    return VoxelBatch(column.expand(-1, 4).clone(), column + 1, column, column, column)


def test_map_chunks_returns_every_chunk_in_order_with_the_callers_grad_mode():
    voxels = _voxels(10)

    def describe(index: int, chunk: VoxelBatch) -> tuple:
        return index, chunk.observables[:, 0].tolist(), torch.is_grad_enabled()

    for n_threads in (1, 2):
        with torch_threads(n_threads):
            for grad in (True, False):
                with torch.set_grad_enabled(grad):
                    results = map_chunks(describe, voxels, 4, progress=False, description="test")
                assert results == [(0, [0.0, 1.0, 2.0, 3.0], grad), (1, [4.0, 5.0, 6.0, 7.0], grad),
                                   (2, [8.0, 9.0], grad)]
                assert torch.get_num_threads() == n_threads  # restored after the workers' share
