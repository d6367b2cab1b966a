"""Tests of varmap.simulation.protocols: the HCP-like and trace protocols and the Fibonacci lattice."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.protocol import Protocol
from varmap.simulation import fibonacci_sphere, hcp_protocol, study_protocol, trace_protocol


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    """The default HCP-like protocol (288 measurements)."""
    return hcp_protocol()


def test_hcp_protocol_layout(protocol):
    assert protocol.n_measurements == 288
    assert protocol.n_b0 == 18
    np.testing.assert_allclose(protocol.dw_shell_bvals, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(protocol.shell_counts, [18, 90, 90, 90])
    dw = ~protocol.b0_mask
    np.testing.assert_allclose(np.linalg.norm(protocol.bvecs[dw], axis=1), 1.0, atol=1e-12)


def test_hcp_protocol_directions_are_well_spread_and_differ_between_shells(protocol):
    shells = [protocol.bvecs[protocol.shell_index == s] for s in (1, 2, 3)]
    for directions in shells:
        cosine = np.abs(directions @ directions.T)
        np.fill_diagonal(cosine, 0.0)
        assert np.degrees(np.arccos(cosine.max())) > 10.0  # lines, so n and -n count as one
    assert not np.allclose(shells[0], shells[1])


def test_hcp_protocol_is_deterministic_and_seeded():
    assert hcp_protocol(seed=3) == hcp_protocol(seed=3)
    assert hcp_protocol(seed=3) != hcp_protocol(seed=4)
    small = hcp_protocol(n_b0=2, n_directions=10, shells=[500, 1500])
    assert small.n_measurements == 22 and small.dw_shell_bvals.tolist() == [0.5, 1.5]


def test_hcp_protocol_takes_a_direction_count_per_shell():
    abcd = hcp_protocol(n_b0=7, n_directions=(6, 15, 15, 60), shells=(500, 1000, 2000, 3000))
    np.testing.assert_array_equal(abcd.shell_counts, [7, 6, 15, 15, 60])
    np.testing.assert_allclose(abcd.dw_shell_bvals, [0.5, 1.0, 2.0, 3.0])
    # numpy integers count as integers (one for every shell, or one per shell); a fractional count does not
    assert hcp_protocol(n_directions=np.int64(30), shells=(1000.0,)) is hcp_protocol(n_directions=30, shells=(1000.0,))
    assert hcp_protocol(n_directions=np.array([6, 15]), shells=(500, 1000)) is hcp_protocol(n_directions=(6, 15), shells=(500, 1000))
    with pytest.raises(TypeError):
        hcp_protocol(n_directions=2.5, shells=(1000.0,))


def test_hcp_protocol_without_b0():
    protocol = hcp_protocol(n_b0=0, n_directions=(6, 15), shells=(500, 1000))
    assert protocol.n_b0 == 0 and protocol.n_measurements == 21
    np.testing.assert_allclose(protocol.shell_bvals, [0.5, 1.0])


@pytest.mark.parametrize("kwargs", [
    {"n_b0": -1}, {"n_directions": 0}, {"n_directions": (30, 0, 30)}, {"n_directions": (30, 30)}, {"shells": ()},
    {"shells": (-5.0,)},
])
def test_hcp_protocol_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        hcp_protocol(**kwargs)


def test_fibonacci_sphere_is_unit_and_spread():
    directions = fibonacci_sphere(50)
    assert directions.shape == (50, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(directions.mean(0), 0.0, atol=0.05)  # no hemisphere favoured
    np.testing.assert_array_equal(fibonacci_sphere(50), directions)


def test_trace_protocol_repeats_the_axes_on_every_shell():
    protocol = trace_protocol()
    assert protocol.n_measurements == 7 and protocol.n_b0 == 1
    np.testing.assert_allclose(protocol.bvals, [0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0])  # ms/µm²
    np.testing.assert_allclose(np.abs(protocol.bvecs[1:4]), np.eye(3))
    np.testing.assert_allclose(protocol.bvecs[4:], protocol.bvecs[1:4])
    assert study_protocol("trace")[0].n_measurements == 7
