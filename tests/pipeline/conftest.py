"""Fixtures of the pipeline tests: the ellipsoid scan of :mod:`ellipsoid_scans`, written once per session."""

from __future__ import annotations

import pytest
from ellipsoid_scans import write_ellipsoid_scan


@pytest.fixture(scope="session")
def ellipsoid_scan(tmp_path_factory):
    """The ellipsoid with 4 b=0 volumes, seed 0: ((dwi, bvals, bvecs), inside, truth)."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid"))


@pytest.fixture(scope="session")
def one_b0_scan(tmp_path_factory):
    """The ellipsoid with a single b=0 volume, seed 1: ((dwi, bvals, bvecs), inside, truth)."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_one_b0"), n_b0=1, seed=1)
