"""Fixtures of the pipeline tests: the ellipsoid scan of :mod:`ellipsoid_scans`, written once per session."""

from __future__ import annotations

import pytest
from ellipsoid_scans import write_ellipsoid_scan

from varmap.simulation import trace_protocol


@pytest.fixture(scope="session")
def ellipsoid_scan(tmp_path_factory):
    """The ellipsoid with 4 b=0 volumes, seed 0: ((dwi, bvals, bvecs), inside, truth)."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid"))


@pytest.fixture(scope="session")
def one_b0_scan(tmp_path_factory):
    """The ellipsoid with a single b=0 volume, seed 1: ((dwi, bvals, bvecs), inside, truth)."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_one_b0"), n_b0=1, seed=1)


@pytest.fixture(scope="session")
def varying_noise_scan(tmp_path_factory):
    """The ellipsoid with 4 b=0 volumes and a noise level rising from 25 to 75 along x, seed 2."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_ramp"), varying_noise=True, seed=2)


@pytest.fixture(scope="session")
def varying_noise_one_b0_scan(tmp_path_factory):
    """The ellipsoid with one b=0 volume and a noise level rising from 25 to 75 along x, seed 3."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_ramp_one_b0"), n_b0=1, varying_noise=True, seed=3)


@pytest.fixture(scope="session")
def varying_noise_trace_scan(tmp_path_factory):
    """The ellipsoid scanned with a clinical trace protocol (1 b=0 + the axes at b = 1000, 2000), noise rising
    from 25 to 75 along x, seed 4."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_ramp_trace"), varying_noise=True, seed=4,
                                protocol=trace_protocol())


@pytest.fixture(scope="session")
def no_b0_scan(tmp_path_factory):
    """The ellipsoid without b=0 volumes, on b = 1000, 2000, 3000 s/mm², seed 4."""
    return write_ellipsoid_scan(tmp_path_factory.mktemp("ellipsoid_no_b0"), n_b0=0, shells=(1000.0, 2000.0, 3000.0),
                                seed=4)
