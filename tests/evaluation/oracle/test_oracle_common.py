"""What the oracles share: input checks and voxel chunks."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.evaluation.oracle.common import check_inputs, check_prior, chunks
from varmap.simulation import ball_stick_prior, hcp_protocol, msdki_paper_prior


def test_chunks_cover_every_voxel_once():
    assert chunks(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert chunks(0, 3) == []
    with pytest.raises(ValueError, match="chunk_size"):
        chunks(7, 0)


def test_check_inputs_returns_float64_and_per_voxel_sigma_and_S0():
    protocol = hcp_protocol(n_b0=2, n_directions=6, shells=(1000.0, 2000.0))
    signals = np.ones((4, protocol.n_measurements), dtype=np.float32)
    checked, sigma, S0 = check_inputs(signals, protocol, 0.1, 2.0)
    assert checked.dtype == np.float64 and S0.shape == (4,) and np.all(S0 == 2.0)
    assert sigma.shape == (4,) and np.all(sigma == 0.1)
    levels = np.array([0.1, 0.2, 0.3, 0.4])
    _, sigma, unknown = check_inputs(signals, protocol, levels, None)
    np.testing.assert_array_equal(sigma, levels)
    assert unknown is None
    bad = signals.copy()
    bad[0, 0] = np.nan
    for args, match in [
        ((signals[:, :5], protocol, 0.1, 1.0), "shape"),
        ((bad, protocol, 0.1, 1.0), "finite"),
        ((-signals, protocol, 0.1, 1.0), "finite"),
        ((signals, protocol, 0.0, 1.0), "sigma"),
        ((signals, protocol, np.array([0.1, 0.1, -0.1, 0.1]), 1.0), "sigma"),
        ((signals, protocol, np.full(3, 0.1), 1.0), r"sigma must be one number or one value per voxel, shape \(4,\)"),
        ((signals, protocol, 0.1, np.array([1.0, 1.0, -1.0, 1.0])), "S0"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_inputs(*args)


def test_check_prior_names_both_parameter_sets():
    check_prior(msdki_paper_prior(), ("D", "K"), False)
    with pytest.raises(ValueError, match="d_par"):
        check_prior(ball_stick_prior(), ("D", "K"), False)
    with pytest.raises(ValueError, match="has_direction"):
        check_prior(ball_stick_prior(), ("f", "d_par", "d_iso"), False)
