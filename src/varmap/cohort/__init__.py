"""Cohorts: many subjects mapped together, and one population model trained on all of them.

``varmap bids BIDS_DIR OUTPUT_DIR participant|group`` runs :func:`run_participant_level` and
:func:`run_group_level`.  Every public name is imported from its module on first use, so
``import varmap.cohort`` loads neither pybids, Dask nor torch.

Modules
-------
discovery
    The scans of a BIDS dataset, through pybids (:func:`find_scans`).
checks
    Every scan checked before any fitting, all problems at once (:func:`scan_problems`).
naming
    BIDS-Derivatives names of the outputs (:data:`PARAM_LABELS`, :func:`output_name`).
derivatives
    ``dataset_description.json``, a scan's outputs renamed, and their JSON sidecars.
tasks
    One scan mapped atomically into its folder: the task a Dask worker runs (:func:`map_scan`).
fanout
    Tasks on Dask: a local cluster or an existing scheduler (:func:`dask_client`, :func:`fan_out`).
app
    The ``participant`` and ``group`` levels.
population
    One population model trained on voxels of every scan (:func:`train_population_model`).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names and the module each is imported from, on first use.
_PUBLIC: dict[str, str] = {
    "run_participant_level": "app",
    "run_group_level": "app",
    "CohortReport": "app",
    "find_scans": "discovery",
    "scan_problems": "checks",
    "PARAM_LABELS": "naming",
    "MODEL_LABELS": "naming",
    "PYBIDS_CONFIG": "naming",
    "BidsPrefix": "naming",
    "output_name": "naming",
    "map_scan": "tasks",
    "ScanJob": "tasks",
    "dask_client": "fanout",
    "fan_out": "fanout",
    "ScanFiles": "population",
    "train_population_model": "population",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
