"""Shared battery for the network estimators (selfsup, vae, gmvae) and their likelihoods."""

import copy

import numpy as np
import pytest
import torch
from scipy import stats

import varmap
from varmap.estimators import ESTIMATORS, get_estimator
from varmap.estimators.networks import encoder_inputs
from varmap.estimators.variational import _cholesky_with_jitter, _laplace_samples
from varmap.estimators.likelihood import gaussian_nll, rician_mean, rician_nll
from varmap.signal_models import get_signal_model

NETWORK_METHODS = ["selfsup", "vae", "gmvae"]
FAST = {"n_epochs": 80, "patience": 10, "batch_size": 256, "learning_rate": 3e-3}


def _protocol() -> varmap.Protocol:
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(30, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(6), np.repeat([1000.0, 2000.0, 3000.0], 10)]
    bvecs = np.vstack([np.zeros((6, 3)), directions])
    return varmap.Protocol.from_bvals_bvecs(bvals, bvecs)


def _data(n_voxels: int = 1500, snr: float = 100.0, seed: int = 0, means=((0.8, 1.0), (1.2, 0.6))):
    """Two MS-DKI tissue clusters (D, K) inside the physical region, Rician noise."""
    rng = np.random.default_rng(seed)
    model = get_signal_model("msdki", _protocol())
    labels = rng.integers(0, 2, n_voxels)
    (D0, K0), (D1, K1) = means
    D = np.where(labels == 0, D0, D1) + 0.08 * rng.normal(size=n_voxels)
    K = np.where(labels == 0, K0, K1) + 0.05 * rng.normal(size=n_voxels)
    clean = model.predict({"D": D, "K": K}, S0=1000.0)
    sigma = 1000.0 / snr
    noisy = np.abs(clean + sigma * rng.normal(size=clean.shape) + 1j * sigma * rng.normal(size=clean.shape))
    return model, noisy, {"D": D, "K": K}, labels


@pytest.fixture(scope="module")
def fitted():
    model, signals, truth, labels = _data()
    results = {}
    for method in NETWORK_METHODS:
        estimator = get_estimator(method, model, seed=3, **FAST)
        results[method] = (estimator, estimator.fit(signals))
    return model, signals, truth, labels, results


@pytest.mark.parametrize("method", NETWORK_METHODS)
def test_recovers_parameters_from_low_noise_data(fitted, method):
    _, _, truth, _, results = fitted
    result = results[method][1]
    for name, tolerance in (("D", 0.03), ("K", 0.06)):
        error = result.params[name] - truth[name]
        assert np.sqrt(np.mean(error**2)) < tolerance, (method, name)
    assert np.allclose(result.S0, 1000.0, rtol=0.02)


@pytest.mark.parametrize("method", NETWORK_METHODS)
def test_estimates_inside_bounds_and_shapes(fitted, method):
    model, signals, _, _, results = fitted
    result = results[method][1]
    for parameter in model.parameters:
        values = result.params[parameter.name]
        assert values.shape == (signals.shape[0],)
        assert np.all((values > parameter.low) & (values < parameter.high))
    assert result.predict().shape == signals.shape
    assert result.history["train_loss"] and np.all(np.isfinite(result.history["val_loss"]))


@pytest.mark.parametrize("method", ["vae", "gmvae"])
def test_posterior_std_is_positive_and_calibrated_in_scale(fitted, method):
    _, _, truth, _, results = fitted
    result = results[method][1]
    for name in ("D", "K"):
        std = result.std[name]
        assert np.all(std > 0)
        rmse = np.sqrt(np.mean((result.params[name] - truth[name]) ** 2))
        assert 0.2 * rmse < np.sqrt(np.mean(std**2)) < 5 * rmse


def test_gmvae_cluster_probabilities_separate_tissue_from_free_water():
    model, signals, _, labels = _data(n_voxels=1500, means=((0.9, 1.0), (3.0, 0.05)))
    probs = get_estimator("gmvae", model, seed=1).fit(signals).cluster_probs
    assert probs.shape == (labels.size, 3)
    assert np.allclose(probs.sum(1), 1.0)
    hard = probs.argmax(1)
    # tissue and free water fall mostly into different components
    purity = max(np.mean(hard[labels == 0] == k) for k in range(3))
    assert purity > 0.8
    assert np.bincount(hard[labels == 0], minlength=3).argmax() != np.bincount(hard[labels == 1], minlength=3).argmax()


@pytest.mark.parametrize("method", NETWORK_METHODS)
def test_same_seed_same_result_and_checkpoint_round_trip(fitted, method):
    model, signals, _, _, results = fitted
    estimator, result = results[method]
    again = get_estimator(method, model, seed=3, **FAST).fit(signals)
    np.testing.assert_array_equal(result.params["K"], again.params["K"])
    restored = type(estimator).from_state(model, estimator.get_state())
    np.testing.assert_allclose(restored.transform(signals).params["K"], result.params["K"], atol=1e-6)


def test_gmvae_reseeds_an_unused_component_by_splitting_the_most_used(fitted):
    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    assert isinstance(results["gmvae"][1].history["reseeded_epochs"], list)
    batch = estimator._tensors(estimator._prepare(signals))
    head, prior = estimator.encoder_.net[-1], estimator.prior_
    with torch.no_grad():
        head.bias[2] = -50.0  # nobody uses component 2 any more
    usage = torch.softmax(estimator._split(estimator.encoder_(encoder_inputs(batch.observables, batch.S0_relative)))[0], -1).mean(0)
    donor = int(usage.argmax())
    old_mean, old_logit = prior.means[donor].detach().clone(), float(prior.logits[donor].detach())
    epoch = estimator._first_stop_epoch() + 100
    assert estimator._after_epoch(epoch, batch)
    assert estimator.reseeded_epochs_[-1] == epoch
    logits = prior.logits.detach()
    assert float(logits[2]) == pytest.approx(float(logits[donor])) == pytest.approx(old_logit - np.log(2))
    torch.testing.assert_close((prior.means[2] + prior.means[donor]) / 2, old_mean)
    assert float((prior.means[2] - prior.means[donor]).detach().norm()) > 0
    torch.testing.assert_close(head.bias[2], head.bias[donor])
    # re-seeding waits patience // 2 epochs, and only acts on usage below the threshold
    with torch.no_grad():
        head.bias[2] = -50.0
    assert not estimator._after_epoch(epoch + 1, batch)
    estimator.min_component_usage = 0.0
    assert not estimator._after_epoch(epoch + estimator.patience, batch)


def test_gmvae_prior_refinement_runs_its_em_steps(fitted):
    _, _, _, _, results = fitted
    estimator, result = results["gmvae"]
    evidence = np.asarray(result.history["refinement_log_evidence"])
    assert evidence.size == estimator.refinement_rounds * estimator.refinement_steps
    assert np.all(np.isfinite(evidence))
    within_round = np.diff(evidence.reshape(estimator.refinement_rounds, -1), axis=1)
    assert np.all(within_round > -1e-3)  # EM on fixed samples does not lower their evidence


def test_laplace_samples_have_the_density_of_their_gaussian():
    generator = torch.Generator().manual_seed(0)
    mode = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    axes = torch.linalg.qr(torch.randn(4, 3, 3, generator=generator, dtype=torch.float64))[0]
    curvatures = torch.tensor([1.0, 30.0, 1e4], dtype=torch.float64).expand(4, 3)
    z, log_q = _laplace_samples(mode, curvatures, axes, 20000, 1.5, generator)
    covariance = 1.5**2 * axes @ torch.diag_embed(1 / curvatures) @ axes.transpose(-1, -2)
    expected = torch.distributions.MultivariateNormal(mode, covariance_matrix=covariance)
    torch.testing.assert_close(log_q, expected.log_prob(z))
    centred = z - mode
    empirical = torch.einsum("sbi,sbj->bij", centred, centred) / z.shape[0]
    torch.testing.assert_close(empirical, covariance, rtol=0.05, atol=1e-6)


def test_cholesky_with_jitter_factors_near_singular_covariances():
    vector = torch.tensor([1e3, -2e2, 5e1, 1.0])
    good = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    covariance = torch.stack([vector[:, None] * vector[None, :], good, -good])  # rank 1, fine, not PSD
    tril = _cholesky_with_jitter(covariance)
    assert torch.all(torch.isfinite(tril)) and torch.all(tril.diagonal(dim1=-2, dim2=-1) > 0)
    torch.testing.assert_close(tril[1], torch.linalg.cholesky(good))
    jitter = 1e-6 * covariance[0].diagonal().mean() + 1e-12  # relative to the matrix's scale
    torch.testing.assert_close(tril[0] @ tril[0].T, covariance[0] + jitter * torch.eye(4), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(tril[2], torch.diag(torch.full((4,), 1e-6)))  # not even PSD: tiny diagonal


def test_gumbel_sampler_trains():
    model, signals, truth, _ = _data(n_voxels=800)
    result = get_estimator("gmvae", model, seed=0, y_sampler="gumbel", **FAST).fit(signals)
    assert np.sqrt(np.mean((result.params["D"] - truth["D"]) ** 2)) < 0.05


def test_excluded_voxels_are_nan_and_counted():
    model, signals, _, _ = _data(n_voxels=400)
    signals = signals.copy()
    signals[0, 3] = np.nan
    signals[1, model.protocol.b0_mask] = 0.0
    result = get_estimator("vae", model, seed=0, n_epochs=3).fit(signals)
    assert not result.valid[0] and not result.valid[1] and result.valid[2:].all()
    assert np.isnan(result.params["D"][:2]).all() and np.isfinite(result.params["D"][2:]).all()


def test_bad_options_raise():
    model, _, _, _ = _data(n_voxels=10)
    with pytest.raises(ValueError, match="y_sampler"):
        get_estimator("gmvae", model, y_sampler="magic")
    with pytest.raises(ValueError, match="likelihood"):
        get_estimator("vae", model, likelihood="poisson")
    with pytest.raises(ValueError, match="voxels_per_epoch"):
        get_estimator("selfsup", model, voxels_per_epoch=10, batch_size=128)
    with pytest.raises(ValueError, match="choose one of"):
        get_estimator("nope", model)
    assert set(NETWORK_METHODS) | {"nlls"} == set(ESTIMATORS)


def test_ball_stick_vae_runs_and_gives_unit_directions():
    protocol = _protocol()
    model = get_signal_model("ball_stick", protocol)
    rng = np.random.default_rng(0)
    n = rng.normal(size=(300, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    params = {"f": rng.uniform(0.3, 0.7, 300), "d_par": np.full(300, 1.7), "d_iso": np.full(300, 0.9), "n": n}
    signals = model.predict(params, S0=100.0) + 0.5 * rng.normal(size=(300, protocol.n_measurements))
    result = get_estimator("vae", model, seed=0, n_epochs=5).fit(np.abs(signals))
    assert np.allclose(np.linalg.norm(result.params["n"], axis=1), 1.0)
    assert np.all((result.std["n"] >= 0) & (result.std["n"] <= 90))


# ----------------------------------------------------------------------------------------- likelihoods
def test_rician_mean_matches_monte_carlo_and_limits():
    rng = np.random.default_rng(0)
    sigma = 0.3
    for nu in (0.0, 0.2, 1.0, 3.0):
        samples = np.abs(nu + sigma * rng.normal(size=200_000) + 1j * sigma * rng.normal(size=200_000))
        value = float(rician_mean(torch.tensor(nu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)))
        assert value == pytest.approx(samples.mean(), rel=5e-3)
    assert float(rician_mean(torch.tensor(0.0), torch.tensor(1.0))) == pytest.approx(np.sqrt(np.pi / 2), rel=1e-6)


def test_single_measurement_rician_nll_is_exact_up_to_a_constant():
    m = torch.tensor([[0.1, 0.5, 1.3, 2.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.4]], dtype=torch.float64)
    counts = torch.ones(4, dtype=torch.float64)
    for nu in (0.2, 0.9, 1.7):
        ours = rician_nll(m, torch.full_like(m, nu), sigma, counts).item()
        exact = -stats.rice.logpdf(m.numpy()[0], nu / 0.4, scale=0.4).sum()
        constant = -np.log(m.numpy()[0]).sum()  # dropped: does not depend on nu or sigma
        assert ours + constant == pytest.approx(exact, rel=1e-9)


def test_gaussian_nll_matches_scipy_for_averages():
    observed = torch.tensor([[0.5, 0.7]], dtype=torch.float64)
    predicted = torch.tensor([[0.45, 0.72]], dtype=torch.float64)
    sigma = torch.tensor([[0.1]], dtype=torch.float64)
    counts = torch.tensor([4.0, 9.0], dtype=torch.float64)
    ours = gaussian_nll(observed, predicted, sigma, counts).item()
    exact = -stats.norm.logpdf([0.5, 0.7], [0.45, 0.72], 0.1 / np.sqrt([4.0, 9.0])).sum()
    assert ours == pytest.approx(exact, rel=1e-12)
