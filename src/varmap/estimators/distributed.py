"""Data-parallel training over several processes with ``torch.distributed``.

:func:`launch` starts ``n_proc`` processes joined in one process group (gloo on the CPU, NCCL on GPUs,
initialised through ``env://`` on a free localhost port) and runs the same function in each.  Inside
it, :func:`~varmap.estimators.training.train_network` notices the group and trains with
``DistributedDataParallel``: every process holds the same data and draws the same mini-batch order
(same seed), takes its share of each mini-batch, and the gradients are averaged, so that one step
equals the single-process step on the whole mini-batch.  The helpers here are what that loop and the
estimators need to know about the group: :func:`rank_and_size`, :func:`rank_device`,
:func:`rank_stream`, :func:`data_parallel`, :func:`sum_over_processes` and :func:`gather_shards`.
Outside a process group they are the identity (rank 0 of 1), so single-process code runs unchanged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = [
    "launch",
    "check_n_proc",
    "rank_and_size",
    "rank_device",
    "rank_stream",
    "data_parallel",
    "sum_over_processes",
    "gather_shards",
]


def launch(worker: Callable[..., None], n_proc: int, args: tuple, *, device: torch.device) -> None:
    """Run ``worker(*args)`` in ``n_proc`` processes of one process group; in this process when 1.

    Parameters
    ----------
    worker : callable
        A module-level function (the processes import it by name).  Inside it, :func:`rank_and_size`
        gives the process's rank; rank 0 is the one that writes results.
    n_proc : int
        Processes.  On CUDA, process r uses GPU r (``torch.cuda.device_count()`` >= ``n_proc``).
    args : tuple
        Arguments of ``worker``, pickled into every process.
    device : torch.device
        ``cpu`` (gloo backend) or ``cuda`` (NCCL).

    Raises
    ------
    ValueError
        For a bad ``n_proc`` (:func:`check_n_proc`).
    torch.multiprocessing.ProcessRaisedException
        When a process fails (with its traceback); the others are stopped.
    """
    check_n_proc(n_proc, device)
    if n_proc == 1:
        worker(*args)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.multiprocessing.spawn(_process, args=(n_proc, backend, _free_port(), worker, args), nprocs=n_proc)


def check_n_proc(n_proc: int, device: torch.device) -> None:
    """Refuse a number of processes :func:`launch` cannot start on ``device``.

    Raises
    ------
    ValueError
        For ``n_proc`` that is not a whole number >= 1, or more CUDA processes than GPUs.
    """
    if isinstance(n_proc, bool) or not isinstance(n_proc, int) or n_proc < 1:
        raise ValueError(f"n_proc must be a whole number of processes, at least 1; got {n_proc!r}.")
    if device.type == "cuda" and n_proc > torch.cuda.device_count():
        raise ValueError(
            f"n_proc={n_proc} CUDA processes need as many GPUs; torch finds {torch.cuda.device_count()}. "
            f"Lower n_proc or use device cpu."
        )


def _process(rank: int, n_proc: int, backend: str, port: int, worker: Callable[..., None], args: tuple) -> None:
    """One process of :func:`launch`: join the group, run the worker, leave the group."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:  # share the cores instead of every process starting one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_proc))
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=n_proc)
    try:
        worker(*args)
        dist.barrier()  # no process tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    """A TCP port of localhost that is free now (the operating system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes of its group; (0, 1) outside a group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: torch.device) -> torch.device:
    """The device of this process: GPU ``rank`` for a CUDA device in a group of several processes."""
    rank, size = rank_and_size()
    return torch.device("cuda", rank) if device.type == "cuda" and size > 1 else device


def rank_stream(name: str) -> str:
    """The name of this process's own random stream ``name`` (:mod:`varmap.random_streams`).

    Processes that draw noise for different voxels must not share a stream; a single process keeps
    ``name`` itself, so its results do not change.
    """
    rank, size = rank_and_size()
    return name if size == 1 else f"{name}/rank{rank}"


def sum_over_processes(value: float, device: torch.device) -> float:
    """``value`` summed over the processes of the group (every process gets the sum)."""
    rank, size = rank_and_size()
    if size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total)


def gather_shards(values: torch.Tensor, n_total: int) -> torch.Tensor:
    """The per-voxel ``values`` of every process, joined: process r holds voxels ``r::size`` of ``n_total``.

    Parameters
    ----------
    values : Tensor, shape (n_r,)
        This process's values, ``n_r = len(range(rank, n_total, size))``.
    n_total : int

    Returns
    -------
    Tensor, shape (n_total,)
        The same on every process: process 0's values, then process 1's, ... (not voxel order).
    """
    rank, size = rank_and_size()
    if size == 1:
        return values
    counts = [len(range(r, n_total, size)) for r in range(size)]
    padded = torch.zeros(max(counts), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` inside a group of several processes, else itself.

    Gradients of a backward pass through the wrapper's outputs are averaged over the processes.
    """
    if rank_and_size()[1] == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module)
