"""Tests of signal preparation: the valid-voxel rule, units, chunking and the noise level."""

import numpy as np
import pytest

from varmap.estimators import data
from varmap.signal_models import get_signal_model
from varmap.protocol import Protocol
from varmap.simulation import PRIORS, get_prior, hcp_protocol, simulate


@pytest.fixture(scope="module")
def model():
    return get_signal_model("msdki", hcp_protocol(n_b0=3, n_directions=10, seed=0))


@pytest.fixture(scope="module")
def signals(model):
    rng = np.random.default_rng(0)
    signals = rng.uniform(50.0, 150.0, size=(50, model.protocol.n_measurements)).astype(np.float32)
    signals[3, 5] = np.nan
    signals[10, model.protocol.b0_mask] = 0.0
    signals[11, model.protocol.b0_mask] = -1.0
    return signals


def test_valid_voxels_rule_and_counts(model, signals):
    voxels = data.valid_voxels(signals, model.protocol)
    assert np.flatnonzero(~voxels.valid).tolist() == [3, 10, 11]
    assert (voxels.n_nonfinite, voxels.n_nonpositive_b0, voxels.n_excluded) == (1, 2, 3)
    assert (voxels.b0_mean_raw[~voxels.valid] == 0).all()


def test_reference_intensity_without_b0_extrapolates_the_two_lowest_shells():
    """Without b=0 measurements: exact for a mono-exponential decay, the diffusivity kept within 0-3 µm²/ms
    (noise can put the second shell above the first, or in the floor), and invalid where the lowest shell
    has no positive signal."""
    protocol = hcp_protocol(n_b0=2, n_directions=6, shells=(500.0, 1000.0, 2000.0), seed=0)
    weighted = ~protocol.b0_mask
    no_b0 = Protocol.from_bvals_bvecs(protocol.bvals[weighted] * 1000.0, protocol.bvecs[weighted])
    b = no_b0.bvals
    S0 = np.array([1000.0, 1000.0, 1000.0, 800.0, 500.0])
    signals = S0[:, None] * np.exp(-b[None, :] * np.array([0.8, 3.0, 5.0, 0.0, 1.0])[:, None])
    signals[3, no_b0.shell_index == 1] *= 1.2  # the second shell above the first: no decay (d = 0)
    signals[4, no_b0.shell_index == 0] = 0.0  # no signal on the lowest shell
    reference = data.reference_intensity(signals, no_b0)
    np.testing.assert_allclose(reference[:2], 1000.0, rtol=1e-12)  # mono-exponential, d <= 3: exact
    assert reference[2] == pytest.approx(1000.0 * np.exp(-0.5 * 5.0 + 0.5 * 3.0))  # d = 5 read as 3
    assert reference[3] == pytest.approx(800.0)  # d = 0: the lowest shell's mean
    assert not reference[4] > 0
    voxels = data.valid_voxels(signals, no_b0)
    assert voxels.valid.tolist() == [True, True, True, True, False] and voxels.n_nonpositive_b0 == 1
    with pytest.raises(ValueError, match="positive signal extrapolated to b=0"), pytest.warns(UserWarning, match="no b=0"):
        data.prepare_signals(signals[4:], get_signal_model("msdki", no_b0), sigma=1.0)
    # with b=0 measurements, their mean
    ramp = np.arange(float(protocol.n_measurements))[None]
    assert data.reference_intensity(ramp, protocol)[0] == ramp[0, protocol.b0_mask].mean()


def test_chunked_preparation_matches_one_pass(model, signals, monkeypatch):
    whole = data.prepare_signals(signals, model, sigma=2.0)
    monkeypatch.setattr(data, "_CHUNK", 7)
    chunked = data.prepare_signals(signals, model, sigma=2.0)
    np.testing.assert_array_equal(whole.valid, chunked.valid)
    np.testing.assert_array_equal(whole.observables, chunked.observables)
    np.testing.assert_array_equal(whole.b0_mean, chunked.b0_mean)
    assert chunked.n_valid == 47 and chunked.observables.dtype == np.float32


def test_units(model, signals):
    """Observables are S/S0 of each voxel; b0_mean times signal_scale is the raw mean b=0 signal."""
    prepared = data.prepare_signals(signals, model, sigma=2.0)
    valid = signals[prepared.valid].astype(np.float64)
    S0_mean = valid[:, model.protocol.b0_mask].mean(1)
    np.testing.assert_allclose(prepared.b0_mean * prepared.signal_scale, S0_mean, rtol=1e-12)
    assert prepared.signal_scale == pytest.approx(np.median(S0_mean))
    np.testing.assert_allclose(prepared.observables, model.observables(valid / S0_mean[:, None]), rtol=1e-5)
    np.testing.assert_allclose(prepared.sigma_normalised, 2.0 / S0_mean, rtol=1e-6)
    np.testing.assert_array_equal(prepared.sigma, 2.0)
    assert prepared.sigma_source == "given"


def test_wrong_shape_is_refused(model):
    with pytest.raises(ValueError, match="to match the protocol"):
        data.prepare_signals(np.ones((4, model.protocol.n_measurements + 1)), model)


def test_no_valid_voxel_is_refused(model):
    with pytest.raises(ValueError, match="no voxel"):
        data.prepare_signals(np.full((4, model.protocol.n_measurements), np.nan), model)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.nan])
def test_bad_sigma_is_refused(model, signals, sigma):
    with pytest.raises(ValueError, match="sigma must be"):
        data.prepare_signals(signals, model, sigma=sigma)


def test_noise_level_per_voxel_by_default(model):
    rng = np.random.default_rng(1)
    signals = 100.0 + 5.0 * rng.standard_normal((20000, model.protocol.n_measurements))
    prepared = data.prepare_signals(signals, model)
    np.testing.assert_allclose(prepared.sigma, 5.0, rtol=0.1)
    assert prepared.sigma_source.startswith("per voxel from the residuals of a voxelwise kurtosis fit")
    # an estimated level carries its uncertainty (the likelihood marginalises it); a given one does not
    assert np.all(prepared.sigma_log_sd > 0) and np.all(prepared.sigma_log_sd < 0.2)
    assert np.all(data.prepare_signals(signals, model, sigma=5.0).sigma_log_sd == 0)


def test_noise_level_from_b0_repeats_when_too_few_measurements_for_residuals():
    model = get_signal_model("msdki", hcp_protocol(n_b0=4, n_directions=6, shells=(1000.0, 2000.0), seed=0))
    rng = np.random.default_rng(1)
    signals = 100.0 + 5.0 * rng.standard_normal((20000, model.protocol.n_measurements))
    prepared = data.prepare_signals(signals, model)
    np.testing.assert_allclose(prepared.sigma, 5.0, rtol=0.05)
    assert "b=0" in prepared.sigma_source


@pytest.mark.parametrize("model_name, shells", [("msdki", (1000.0, 2000.0, 3000.0)), ("ball_stick", (1000.0,))])
def test_one_b0_noise_level_from_fit_residuals(model_name, shells):
    """With one b=0 the noise level comes from the residuals of a kurtosis (multi-shell) or tensor fit."""
    protocol = hcp_protocol(n_b0=1, n_directions=30, shells=shells, seed=0)
    model = get_signal_model(model_name, protocol)
    truth = simulate(model, get_prior(model_name, next(iter(PRIORS[model_name]))), n_voxels=3000, snr=20, seed=0)
    prepared = data.prepare_signals(truth.signals, model)
    assert np.median(prepared.sigma) == pytest.approx(truth.sigma, rel=0.1)
    assert "residuals" in prepared.sigma_source


def test_one_b0_and_too_few_measurements_for_the_kurtosis_tensor():
    """1 b=0 + 2 x 6 directions: no b=0 repeats and too few measurements for the kurtosis tensor; the noise
    level comes from the residuals of the tensor with isotropic kurtosis.  With 2 x 3 directions that leaves
    nothing either and the isotropic signal's residuals give it, with their own warning; only one
    measurement per b-value is refused, with a message that says to give sigma."""
    model = get_signal_model("msdki", hcp_protocol(n_b0=1, n_directions=6, shells=(1000.0, 2000.0), seed=0))
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=2000, snr=20, seed=0)
    with pytest.warns(UserWarning, match="isotropic kurtosis term, in which anisotropy reads as noise"):
        prepared = data.prepare_signals(truth.signals, model)
    assert "tensor with isotropic kurtosis" in prepared.sigma_source
    assert prepared.sigma_shared_log_sd == pytest.approx(0.1)
    assert np.median(prepared.sigma) == pytest.approx(truth.sigma, rel=0.05)
    model = get_signal_model("msdki", hcp_protocol(n_b0=1, n_directions=3, shells=(1000.0, 2000.0), seed=0))
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=2000, snr=20, seed=0)
    with pytest.warns(UserWarning, match="depends on b alone, in which all anisotropy reads as noise: it is an upper bound"):
        prepared = data.prepare_signals(truth.signals, model)
    assert "isotropic signal" in prepared.sigma_source and prepared.sigma_shared_log_sd == pytest.approx(0.3)
    assert np.median(prepared.sigma) == pytest.approx(truth.sigma, rel=0.1)
    model = get_signal_model("msdki", Protocol.from_bvals_bvecs(np.array([0.0, 1000.0, 2000.0]), np.eye(3)))
    with pytest.raises(ValueError, match="one per b-value.*Pass sigma="):
        data.prepare_signals(np.full((5, 3), 100.0), model)


def test_per_voxel_sigma(model, signals):
    sigma_map = np.linspace(1.0, 3.0, signals.shape[0])
    prepared = data.prepare_signals(signals, model, sigma=sigma_map)
    np.testing.assert_array_equal(prepared.sigma, sigma_map[prepared.valid])
    assert prepared.sigma_source == "given per voxel"
    valid = signals[prepared.valid].astype(np.float64)
    np.testing.assert_allclose(
        prepared.sigma_normalised, sigma_map[prepared.valid] / valid[:, model.protocol.b0_mask].mean(1), rtol=1e-6
    )
    sigma_map[3] = np.nan  # an excluded voxel may have any noise level
    data.prepare_signals(signals, model, sigma=sigma_map)
    with pytest.raises(ValueError, match="one value per voxel"):
        data.prepare_signals(signals, model, sigma=sigma_map[:-1])
    sigma_map[5] = 0.0
    with pytest.raises(ValueError, match="in 1 of the 47 fitted voxels"):
        data.prepare_signals(signals, model, sigma=sigma_map)
