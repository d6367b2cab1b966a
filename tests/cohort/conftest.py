"""A phantom cohort and a Dask cluster shared by the cohort tests, each built once per session."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import dask
import pytest

from varmap.phantom.cohort import write_phantom_cohort

#: Subjects of the shared cohort: small crops at 4 mm, every voxel in the brain mask.
N_SUBJECTS = 3
CROP = (12, 12, 8)
VOXEL_SIZE = 4.0


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """A BIDS dataset of 3 MS-DKI phantom subjects (read-only: copy it with :func:`copy_cohort` to change it)."""
    root = tmp_path_factory.mktemp("cohort") / "bids"
    write_phantom_cohort(root, n_subjects=N_SUBJECTS, model="msdki", voxel_size=VOXEL_SIZE, snr=20.0, seed=1,
                         crop=CROP)
    return root


@pytest.fixture
def copy_cohort(cohort, tmp_path):
    """A function that copies the shared cohort into the test's folder and returns the copy's root."""

    def copy() -> Path:
        return Path(shutil.copytree(cohort, tmp_path / "bids"))

    return copy


@pytest.fixture(scope="session")
def forked_workers():
    """Dask worker processes forked from this one (torch and varmap already imported), not spawned.

    Spawned workers import torch afresh, which takes longer than the tests' fits; production keeps
    Dask's default.
    """
    import torch  # noqa: F401  (imported before the fork, so workers inherit it)

    import varmap.pipeline  # noqa: F401

    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        yield


@pytest.fixture(scope="session")
def scheduler(forked_workers) -> str:
    """Address of a running Dask scheduler with 2 single-thread worker processes."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address
