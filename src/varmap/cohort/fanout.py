"""Tasks fanned out on Dask (``dask.distributed``): a local cluster, an existing scheduler, or any client.

One task per item; results are taken as they complete, so each finished item is reported at once, and a
task that raises fails alone: its exception is returned with its name, the others run on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["dask_client", "fan_out", "default_workers"]

logger = logging.getLogger("varmap")


def default_workers() -> int:
    """Workers of a local cluster when none is asked for: the CPU cores, at most 4."""
    return min(4, os.cpu_count() or 1)


@contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on a new local cluster, or connected to an existing scheduler.

    Parameters
    ----------
    workers : int, optional
        Worker processes of the local cluster, one thread each (default :func:`default_workers`).
        Processes, not threads: processes share no interpreter lock, and torch's forward-mode
        differentiation (the nlls Jacobians) is not thread-safe, so threads would take it in turns.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), or the JSON file a scheduler wrote with
        ``--scheduler-file``; its workers must see the input and output folders.  No local cluster is
        started then.

    Yields
    ------
    distributed.Client
        Closed, with the local cluster, on exit.

    Raises
    ------
    ValueError
        If both ``workers`` and ``scheduler`` are given, or ``workers`` < 1.
    """
    from distributed import Client, LocalCluster

    if workers is not None and scheduler is not None:
        raise ValueError("give --workers (a local cluster) or --scheduler (an existing one), not both.")
    if scheduler is not None:
        target = {"scheduler_file": scheduler} if Path(scheduler).is_file() else {"address": scheduler}
        with Client(**target) as client:
            logger.info("connected to the Dask scheduler %s (%d workers)", scheduler,
                        len(client.scheduler_info().get("workers", {})))
            yield client
        return
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1 worker.")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        logger.info("local Dask cluster: %d worker processes", workers)
        yield client


def fan_out(
    client: Any,
    function: Callable[[Any], Any],
    items: Mapping[str, Any],
    *,
    on_done: Callable[[str, Any, BaseException | None], None] | None = None,
) -> dict[str, Any]:
    """Run ``function(item)`` for every item as one Dask task; collect results and failures by name.

    Parameters
    ----------
    client : distributed.Client
    function : callable
        Importable at module level (workers unpickle it).
    items : mapping of str
        Name -> argument.
    on_done : callable, optional
        ``on_done(name, result, error)`` as each task finishes (``error`` is ``None`` on success).

    Returns
    -------
    dict
        Name -> the task's result, or the exception it raised.
    """
    from distributed import as_completed

    futures = {client.submit(function, item, pure=False): name for name, item in items.items()}
    outcomes: dict[str, Any] = {}
    for future in as_completed(futures):
        name = futures[future]
        try:
            result, error = future.result(), None
        except Exception as err:  # the task's own exception, re-raised by Dask, or a lost worker
            result, error = None, err
        outcomes[name] = error if error is not None else result
        if on_done is not None:
            on_done(name, result, error)
    return outcomes
