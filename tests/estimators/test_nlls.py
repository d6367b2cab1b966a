"""Voxelwise nonlinear least squares (batched Levenberg–Marquardt)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import varmap
from varmap.estimators.nlls import INITIALISERS, NLLSEstimator
from varmap.signal_models import Parameter, SignalModel, get_signal_model
from varmap.simulation import add_noise, fibonacci_sphere, hcp_protocol

S0_TRUE = 100.0




@pytest.fixture(scope="module")
def protocol() -> varmap.Protocol:
    """6 b=0 plus 30 directions on each of b = 1000, 2000, 3000 s/mm²."""
    directions = fibonacci_sphere(30)
    bvals = np.concatenate([np.zeros(6), np.repeat([1000.0, 2000.0, 3000.0], 30)])
    bvecs = np.concatenate([np.zeros((6, 3)), directions, directions, directions])
    return varmap.Protocol.from_bvals_bvecs(bvals, bvecs)


def msdki_truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """D in [0.5, 2.5] µm²/ms and K in [0.3, 1.5] with D·K < 0.95 (b_max = 3 stays below 3/(D K))."""
    D = rng.uniform(0.5, 2.5, n)
    K = rng.uniform(0.3, np.minimum(1.5, 0.95 / D))
    return {"D": D, "K": K}


def ball_stick_truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    direction = rng.normal(size=(n, 3))
    return {
        "f": rng.uniform(0.3, 0.8, n),
        "d_par": rng.uniform(1.2, 2.5, n),
        "d_iso": rng.uniform(0.5, 1.5, n),
        "n": direction / np.linalg.norm(direction, axis=1, keepdims=True),
    }


TRUTHS = {"msdki": msdki_truth, "ball_stick": ball_stick_truth}


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between axes (n and -n are the same) in degrees."""
    return np.degrees(np.arccos(np.clip(np.abs(np.sum(a * b, axis=-1)), 0.0, 1.0)))


def truth_objective(model: SignalModel, signals: np.ndarray, truth: dict[str, np.ndarray]) -> np.ndarray:
    """The nlls objective (S0-normalised units) evaluated at the true parameters."""
    S0_mean = signals[:, model.protocol.b0_mask].mean(axis=1)
    observables = model.observables(signals / S0_mean[:, None]).astype(np.float32).astype(np.float64)
    with torch.no_grad():
        predicted = model.forward(torch.as_tensor(model.pack(truth))).numpy()
    predicted = predicted * (S0_TRUE / S0_mean)[:, None]
    return (model.observation_counts * (observables - predicted) ** 2).sum(axis=1)


# ------------------------------------------------------------------------------------ noiseless
def test_msdki_noiseless_recovers_truth(protocol):
    rng = np.random.default_rng(0)
    model = get_signal_model("msdki", protocol)
    truth = msdki_truth(rng, 300)
    estimator = NLLSEstimator(model, sigma=1.0)  # noiseless b=0 repeats give no noise estimate
    result = estimator.fit(model.predict(truth, S0=S0_TRUE))
    np.testing.assert_allclose(result.params["D"], truth["D"], atol=1e-4)
    np.testing.assert_allclose(result.params["K"], truth["K"], atol=1e-4)
    np.testing.assert_allclose(result.S0, S0_TRUE, rtol=1e-5)
    assert estimator.converged_.all()


def test_fit_observables_gives_the_fit_of_the_same_voxels(protocol):
    """The chunk-level entry (the variational estimators' restart uses it) returns what ``fit`` maps."""
    rng = np.random.default_rng(4)
    model = get_signal_model("msdki", protocol)
    signals = add_noise(model.predict(msdki_truth(rng, 50), S0=S0_TRUE), sigma=S0_TRUE / 30, rng=rng)
    estimator = NLLSEstimator(model, sigma=S0_TRUE / 30)
    result = estimator.fit(signals)
    b0_mean = signals[:, model.protocol.b0_mask].mean(axis=1)
    observables = torch.as_tensor(model.observables(signals / b0_mean[:, None]).astype(np.float32))
    packed, S0_per_b0 = estimator.fit_observables(observables)
    np.testing.assert_allclose(packed[:, 0].numpy(), result.params["D"], rtol=1e-6)
    np.testing.assert_allclose(packed[:, 1].numpy(), result.params["K"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(S0_per_b0[:, 0].numpy() * b0_mean, result.S0, rtol=1e-6)


def test_fit_observables_from_several_threads_at_once(protocol):
    """The variational estimators' inference threads call ``fit_observables`` concurrently; torch's
    forward-AD level is one global, so unserialised Jacobians failed ("invalid index") in every run."""
    rng = np.random.default_rng(5)
    model = get_signal_model("msdki", protocol)
    signals = add_noise(model.predict(msdki_truth(rng, 40), S0=S0_TRUE), sigma=S0_TRUE / 10, rng=rng)
    b0_mean = signals[:, model.protocol.b0_mask].mean(axis=1)
    observables = torch.as_tensor(model.observables(signals / b0_mean[:, None]).astype(np.float32))
    serial, _ = NLLSEstimator(model).fit_observables(observables)
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda _: NLLSEstimator(model).fit_observables(observables)[0], range(16)))
    for packed in concurrent:
        torch.testing.assert_close(packed, serial, rtol=0, atol=0)


def test_ball_stick_noiseless_recovers_truth(protocol):
    rng = np.random.default_rng(1)
    model = get_signal_model("ball_stick", protocol)
    truth = ball_stick_truth(rng, 300)
    estimator = NLLSEstimator(model, sigma=1.0)
    result = estimator.fit(model.predict(truth, S0=S0_TRUE))
    for name in ("f", "d_par", "d_iso"):
        np.testing.assert_allclose(result.params[name], truth[name], atol=1e-4, err_msg=name)
    assert angle_deg(result.params["n"], truth["n"]).max() < 0.5
    np.testing.assert_allclose(np.linalg.norm(result.params["n"], axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.S0, S0_TRUE, rtol=1e-5)
    assert estimator.converged_.all()


# ------------------------------------------------------------------------------------ noisy
@pytest.mark.parametrize("seed", [0, 1])
def test_msdki_snr30_small_errors_and_no_local_minima(protocol, seed):
    rng = np.random.default_rng(seed)
    model = get_signal_model("msdki", protocol)
    truth = msdki_truth(rng, 500)
    signals = add_noise(model.predict(truth, S0=S0_TRUE), sigma=S0_TRUE / 30, rng=rng)
    estimator = NLLSEstimator(model)
    result = estimator.fit(signals)
    error_D = result.params["D"] - truth["D"]
    error_K = result.params["K"] - truth["K"]
    # Errors include the Rician-floor bias of Gaussian least squares (about +0.1 in D for D > 2).
    assert np.sqrt(np.mean(error_D**2)) < 0.12
    assert np.sqrt(np.mean(error_K**2)) < 0.13
    assert np.abs(error_D).max() < 0.6
    assert np.abs(error_K).max() < 0.8
    assert estimator.converged_.all()
    # Every voxel reaches an objective at least as low as the truth's: nobody is stuck elsewhere.
    assert np.all(estimator.objective_ <= truth_objective(model, signals, truth) * (1 + 1e-8) + 1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_ball_stick_snr30_small_errors_and_no_local_minima(protocol, seed):
    rng = np.random.default_rng(seed)
    model = get_signal_model("ball_stick", protocol)
    truth = ball_stick_truth(rng, 250)
    signals = add_noise(model.predict(truth, S0=S0_TRUE), sigma=S0_TRUE / 30, rng=rng)
    estimator = NLLSEstimator(model)
    result = estimator.fit(signals)
    rmse = {name: np.sqrt(np.mean((result.params[name] - truth[name]) ** 2)) for name in ("f", "d_par", "d_iso")}
    assert rmse["f"] < 0.03
    assert rmse["d_par"] < 0.25
    assert rmse["d_iso"] < 0.2
    assert np.abs(result.params["f"] - truth["f"]).max() < 0.15
    angles = angle_deg(result.params["n"], truth["n"])
    assert np.median(angles) < 1.5
    assert angles.max() < 10.0
    assert estimator.converged_.all()
    assert np.all(estimator.objective_ <= truth_objective(model, signals, truth) * (1 + 1e-8) + 1e-12)


# ------------------------------------------------------------------------------------ behaviour
def test_deterministic_and_independent_of_chunking(protocol):
    rng = np.random.default_rng(2)
    model = get_signal_model("ball_stick", protocol)
    signals = add_noise(model.predict(ball_stick_truth(rng, 60), S0=S0_TRUE), sigma=S0_TRUE / 20, rng=rng)
    first = NLLSEstimator(model).fit(signals)
    second = NLLSEstimator(model).fit(signals)
    chunked = NLLSEstimator(model, chunk_size=25, progress=True).fit(signals)
    for name in ("f", "d_par", "d_iso", "n"):
        np.testing.assert_array_equal(first.params[name], second.params[name])
        np.testing.assert_allclose(chunked.params[name], first.params[name], atol=1e-8)
    np.testing.assert_array_equal(first.S0, second.S0)


class _NoInitModel(SignalModel):
    name = "no_init"
    parameters = (Parameter("D", "µm²/ms", 0.0, 4.0, "diffusivity"),)

    def check_protocol(self, protocol):
        pass

    @property
    def observation_counts(self):
        return np.ones(self.protocol.n_measurements, dtype=np.int64)

    def observables(self, normalised_signals):
        return normalised_signals

    def forward(self, packed):
        bvals = torch.as_tensor(np.array(self.protocol.bvals), dtype=packed.dtype)
        return torch.exp(-bvals * packed[..., :1])


def test_model_without_initialiser_is_refused(protocol):
    assert "no_init" not in INITIALISERS
    with pytest.raises(ValueError, match="no starting-point rule.*no_init"):
        NLLSEstimator(_NoInitModel(protocol))


@pytest.mark.parametrize(
    "option, value", [("max_iter", 0), ("tol", -1.0), ("chunk_size", 0), ("likelihood", "poisson")]
)
def test_invalid_options_are_refused(protocol, option, value):
    with pytest.raises(ValueError, match=option if option != "likelihood" else "likelihood"):
        NLLSEstimator(get_signal_model("msdki", protocol), **{option: value})


def test_chunk_size_follows_the_jacobian_memory():
    """Without chunk_size, nlls sizes its chunks so that the forward-mode Jacobians stay near 1.5 GB."""
    small = NLLSEstimator(get_signal_model("msdki", hcp_protocol(n_directions=10)))
    assert small.voxels_per_chunk == 50_000  # a few observables: the upper limit
    hcp_ball_stick = NLLSEstimator(get_signal_model("ball_stick", hcp_protocol()))
    n_unknowns = hcp_ball_stick.model.n_packed + 1
    chunk = hcp_ball_stick.voxels_per_chunk
    assert 1_000 <= chunk < 50_000
    assert 70 * chunk * 288 * n_unknowns == pytest.approx(1.5e9, rel=0.01)
    assert NLLSEstimator(small.model, chunk_size=123).voxels_per_chunk == 123
