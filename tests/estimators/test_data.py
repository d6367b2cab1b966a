"""Tests of signal preparation: validation, normalisation and the noise estimate."""

import numpy as np
import pytest

from varmap.estimators import data
from varmap.signal_models import get_signal_model
from varmap.simulation import hcp_protocol


@pytest.fixture(scope="module")
def model():
    return get_signal_model("msdki", hcp_protocol(n_b0=3, n_directions=10, seed=0))


def test_chunked_preparation_matches_one_pass(model, monkeypatch):
    rng = np.random.default_rng(0)
    signals = rng.uniform(50.0, 150.0, size=(50, model.protocol.n_measurements)).astype(np.float32)
    signals[3, 5] = np.nan
    signals[10, model.protocol.b0_mask] = 0.0
    whole = data.prepare_signals(signals, model)
    monkeypatch.setattr(data, "_PREPARE_CHUNK", 7)
    chunked = data.prepare_signals(signals, model)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    valid, S0_mean, observables = chunked
    assert not valid[3] and not valid[10] and valid.sum() == 48
    assert observables.shape == (48, model.n_observables) and observables.dtype == np.float32
    np.testing.assert_allclose(S0_mean[valid], signals[valid][:, model.protocol.b0_mask].mean(1), rtol=1e-6)


def test_wrong_shape_is_refused(model):
    with pytest.raises(ValueError, match="to match the protocol"):
        data.prepare_signals(np.ones((4, model.protocol.n_measurements + 1)), model)


def test_sigma_from_b0_repeats():
    rng = np.random.default_rng(1)
    b0 = 100.0 + 5.0 * rng.standard_normal((20000, 6))
    sigma = data.estimate_sigma_from_b0(b0, np.ones(6, dtype=bool))
    assert sigma == pytest.approx(5.0, rel=0.02)
    assert data.estimate_sigma_from_b0(b0[:, :1], np.ones(1, dtype=bool)) is None
