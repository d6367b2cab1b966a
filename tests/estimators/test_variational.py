"""Tests of the network estimators beyond the shared battery: accuracy on low-noise data, calibrated
posterior spread, tissue clusters, component re-seeding and the empirical-Bayes prior refinement."""

import copy

import numpy as np
import pytest
import torch

import varmap
from varmap.estimators import ESTIMATORS, get_estimator
from varmap.estimators.data import prepare_signals
from varmap.estimators.merged_components import GridComponents, pooled
from varmap.estimators.networks import voxel_batch
from varmap.signal_models import get_signal_model
from varmap.simulation import add_noise, ball_stick_prior, hcp_protocol, simulate

NETWORK_METHODS = ["selfsup", "vae", "gmvae"]
FAST = {"n_epochs": 80, "patience": 10, "batch_size": 256, "learning_rate": 3e-3}


def _protocol() -> varmap.Protocol:
    return hcp_protocol(n_b0=6, n_directions=10, seed=1)


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
    noisy = add_noise(clean, sigma=sigma, rng=rng)
    return model, noisy, {"D": D, "K": K}, labels


@pytest.fixture(scope="module")
def fitted():
    model, signals, truth, labels = _data()
    results = {}
    for method in NETWORK_METHODS:
        estimator = get_estimator(method, model, seed=3, **FAST, **({"restarts": 0} if method == "gmvae" else {}))
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
    probs = get_estimator("gmvae", model, seed=1, n_epochs=120, restarts=0).fit(signals).cluster_probs
    assert probs.shape == (labels.size, 3)
    assert np.allclose(probs.sum(1), 1.0)
    hard = probs.argmax(1)
    # tissue and free water fall mostly into different components
    purity = max(np.mean(hard[labels == 0] == k) for k in range(3))
    assert purity > 0.8
    assert np.bincount(hard[labels == 0], minlength=3).argmax() != np.bincount(hard[labels == 1], minlength=3).argmax()


def test_gmvae_reseeds_an_unused_component_by_splitting_the_most_used(fitted):
    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    assert isinstance(results["gmvae"][1].history["reseeded_epochs"], list)
    batch = voxel_batch(prepare_signals(signals, estimator.model), estimator.device_)
    head, prior = estimator.encoder_.head, estimator.prior_
    with torch.no_grad():
        head.bias[2] = -50.0  # nobody uses component 2 any more
        usage = torch.softmax(estimator._encode(batch)[0], -1).mean(0)
    donor = int(usage.argmax())
    old_mean, old_logit = prior.means[donor].detach().clone(), float(prior.logits[donor].detach())
    epoch = estimator._first_stop_epoch + 100
    assert estimator._reseed_unused_component(epoch, batch)
    assert estimator.reseeded_epochs_[-1] == epoch
    logits = prior.logits.detach()
    assert float(logits[2]) == pytest.approx(float(logits[donor])) == pytest.approx(old_logit - np.log(2))
    torch.testing.assert_close((prior.means[2] + prior.means[donor]) / 2, old_mean)
    assert float((prior.means[2] - prior.means[donor]).detach().norm()) > 0
    torch.testing.assert_close(head.bias[2], head.bias[donor])
    # re-seeding waits patience // 2 epochs, and only acts on usage below the threshold
    with torch.no_grad():
        head.bias[2] = -50.0
    assert not estimator._reseed_unused_component(epoch + 1, batch)
    estimator.min_component_usage = 0.0
    assert not estimator._reseed_unused_component(epoch + estimator.patience, batch)


def test_gmvae_prior_refinement_runs_its_em_steps(fitted):
    _, _, _, _, results = fitted
    estimator, result = results["gmvae"]
    evidence = np.asarray(result.history["refinement_log_evidence"])
    assert evidence.size == estimator.refinement_rounds * estimator.refinement_steps
    assert np.all(np.isfinite(evidence))
    within_round = np.diff(evidence.reshape(estimator.refinement_rounds, -1), axis=1)
    assert np.all(within_round > -1e-3)  # EM on fixed samples does not lower their evidence


def test_gmvae_prior_refinement_samples_wider_than_the_maps_and_keeps_the_last_round(fitted, monkeypatch):
    """The refinement's importance samples come from proposals widened by ``refinement_proposal_scale``
    (every proposal: encoder, adaptive rounds, mode search) and are the last adaptive round's, the maps'
    from ``proposal_scale`` with every round's samples pooled."""
    import varmap.estimators.variational as variational

    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    estimator.refinement_rounds, estimator.refinement_voxels = 1, 64
    estimator.min_effective_samples = float("inf")  # every voxel also searches its mode
    calls = []
    real_sampler = variational.sample_posterior

    def recording(*args, scale, pool_rounds, **kwargs):
        calls.append((scale, pool_rounds))
        return real_sampler(*args, scale=scale, pool_rounds=pool_rounds, **kwargs)

    monkeypatch.setattr(variational, "sample_posterior", recording)
    prepared = prepare_signals(signals[:64], estimator.model, sigma=estimator.fitted_sigma_)
    estimator._refine_prior(prepared)
    assert len(calls) >= 2 and set(calls) == {(estimator.refinement_proposal_scale, False)}
    assert estimator.refinement_proposal_scale != estimator.proposal_scale
    calls.clear()
    estimator.transform(signals[:64], sigma=estimator.fitted_sigma_)
    assert len(calls) >= 2 and set(calls) == {(estimator.proposal_scale, True)}


def test_gmvae_refinement_searches_modes_only_below_what_its_widening_explains(fitted, monkeypatch):
    """The refinement's proposals, wider than the maps', leave fewer effective samples even where they fit
    the posterior; its mode search runs on exactly the voxels below ``min_effective_samples`` scaled by
    the ratio of the two widenings' efficiencies, not on those below ``min_effective_samples`` itself."""
    from varmap.estimators.posterior import effective_sample_size, widening_efficiency
    from varmap.random_streams import torch_stream

    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    scale = estimator.refinement_proposal_scale
    factor = widening_efficiency(scale, estimator.latent_size) / widening_efficiency(
        estimator.proposal_scale, estimator.latent_size)
    assert factor < 0.5
    prepared = prepare_signals(signals[:256], estimator.model, sigma=estimator.fitted_sigma_)
    batch = voxel_batch(prepared, estimator.device_)
    estimator.network_.eval()
    with torch.no_grad():
        first = estimator._posterior(batch, torch_stream(0, "test"), mode_search=False, scale=scale)
        ess = effective_sample_size(first.weights()).numpy()
        estimator.min_effective_samples = float(np.quantile(ess, 0.3)) / factor
        searched = []
        real_search = type(estimator)._search_again
        monkeypatch.setattr(type(estimator), "_search_again",
                            lambda self, part, generator, scale=None: searched.append(part.n_voxels)
                            or real_search(self, part, generator, scale))
        estimator._sample(batch, torch_stream(0, "test"), scale=scale)
    assert searched == [int((ess < factor * estimator.min_effective_samples).sum())]
    assert 0 < searched[0] < int((ess < estimator.min_effective_samples).sum())


def _parameter_correlations(estimator) -> torch.Tensor:
    """Each refined component's correlation matrix of the latent decoder's outputs (the unconstrained
    parameters, then S0), shape (K, L, L)."""
    with torch.no_grad():
        weight = estimator.latent_decoder_.weight.double()
        mapped = weight @ estimator.prior_.covariances().double() @ weight.T
    spread = mapped.diagonal(dim1=-2, dim2=-1).sqrt()
    return mapped / (spread[:, :, None] * spread[:, None, :])


def test_gmvae_refined_prior_holds_s0_apart_and_on_request_every_parameter(fitted):
    """MS-DKI's default (``component_correlations="tissue"``): every refined component holds S0 uncorrelated
    with D and K and keeps D and K's correlation; with ``"none"`` a refinement of the same network holds D,
    K and S0 mutually uncorrelated."""
    _, signals, _, _, results = fitted
    estimator = results["gmvae"][0]
    assert estimator.get_config()["component_correlations"] == "tissue"
    assert estimator.get_config()["refinement_proposal_scale"] == 2.5  # MS-DKI's three latent dimensions
    correlations = _parameter_correlations(estimator)
    s0_cross = correlations[:, -1, :-1]
    torch.testing.assert_close(s0_cross, torch.zeros_like(s0_cross), atol=1e-4, rtol=0)
    assert correlations[:, 0, 1].abs().max().item() > 0.05

    held_apart = copy.deepcopy(estimator)
    held_apart.component_correlations = "none"
    held_apart._refine_prior(prepare_signals(signals, held_apart.model, sigma=held_apart.fitted_sigma_))
    off_diagonal = _parameter_correlations(held_apart)[:, ~torch.eye(3, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.zeros_like(off_diagonal), atol=1e-4, rtol=0)


def test_ball_stick_components_keep_the_direction_as_one_block():
    """Ball-and-stick's default (``component_correlations="none"``): the refined components hold f, d_par,
    d_iso and S0 uncorrelated with everything, and the direction's three coordinates as one block that
    may correlate within itself; the refinement's proposals are widened for seven latent dimensions."""
    protocol = _protocol()
    model = get_signal_model("ball_stick", protocol)
    data = simulate(model, ball_stick_prior(), n_voxels=600, snr=30, seed=0)
    estimator = get_estimator("gmvae", model, seed=0, n_epochs=15, patience=5, batch_size=128, restarts=0,
                              refinement_rounds=1, refinement_steps=2, refinement_voxels=300,
                              n_posterior_samples=16)
    estimator.fit(data.signals)
    assert estimator.get_config()["component_correlations"] == "none"
    # seven latent dimensions: the widening that leaves the share of effective samples 2.5 leaves in three
    assert estimator.get_config()["refinement_proposal_scale"] == pytest.approx(1.6636, abs=1e-4)
    correlations = _parameter_correlations(estimator)
    labels = torch.tensor([0, 1, 2, 3, 3, 3, 4])
    between = labels[:, None] != labels[None, :]
    # zero up to the relative variance floor that each M-step adds in the latent space
    torch.testing.assert_close(correlations[:, between], torch.zeros_like(correlations[:, between]),
                               atol=2e-3, rtol=0)
    assert correlations[:, 3:6, 3:6][:, ~torch.eye(3, dtype=torch.bool)].abs().max().item() > 0.05


def test_gmvae_widens_its_stds_by_the_uncertainty_of_the_component_means(fitted, monkeypatch):
    """``prior_uncertainty`` adds the uncertainty of the learned means to the stds, not to the maps.  On
    1,500 low-noise voxels the means are pinned and the stds barely move; where the voxels held no
    information about the means, only the hyperprior (anywhere in the physical range) would bound them,
    and every std grows many-fold but stays finite."""
    import varmap.estimators.variational as variational

    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    sigma = estimator.fitted_sigma_
    estimator.prior_uncertainty = False
    plain = estimator.transform(signals, sigma=sigma)
    estimator.prior_uncertainty = True
    corrected = estimator.transform(signals, sigma=sigma)
    real = variational.mean_covariance
    monkeypatch.setattr(variational, "mean_covariance", lambda information, hyperprior: real(0 * information, hyperprior))
    uninformed = estimator.transform(signals, sigma=sigma)
    for name in ("D", "K"):
        np.testing.assert_array_equal(corrected.params[name], plain.params[name])
        ratio = corrected.std[name] / plain.std[name]
        assert np.all(ratio >= 1.0) and 1.0 < np.median(ratio) < 1.05, name
        assert np.all(np.isfinite(uninformed.std[name])) and np.median(uninformed.std[name] / plain.std[name]) > 3, name


def test_gmvae_counts_the_shared_error_of_an_estimated_noise_level(fitted, monkeypatch):
    """A noise level estimated from the signals carries a systematic error common to all voxels, which
    moves the learned means; the stds gain it, the maps do not change, and a given noise level adds
    nothing."""
    import varmap.estimators.variational as variational
    from varmap.estimators.noise_level import _SYSTEMATIC_LOG_SD

    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    real, errors = variational.shared_noise_covariance, []

    def recorded(means_covariance, score, log_sd):
        errors.append(log_sd)
        return real(means_covariance, score, log_sd)

    monkeypatch.setattr(variational, "shared_noise_covariance", recorded)
    with_shared = estimator.transform(signals)
    estimator.transform(signals, sigma=estimator.fitted_sigma_)
    assert errors == [_SYSTEMATIC_LOG_SD]
    monkeypatch.setattr(variational, "shared_noise_covariance", lambda covariance, score, log_sd: 0 * covariance)
    without = estimator.transform(signals)
    for name in ("D", "K"):
        np.testing.assert_array_equal(with_shared.params[name], without.params[name])
        assert np.all(with_shared.std[name] >= without.std[name]) and np.any(with_shared.std[name] > without.std[name])


@pytest.mark.parametrize("method", ["vae", "gmvae"])
def test_noisier_voxels_get_wider_posteriors(method):
    """The same signals with three times the noise level: the networks and the likelihood both see each
    voxel's sigma, so the posterior spread grows with it."""
    model, signals, _, _ = _data(n_voxels=800, snr=30.0)
    both = np.concatenate([signals, signals])
    sigma = np.r_[np.full(800, 1000.0 / 30.0), np.full(800, 3000.0 / 30.0)]
    result = get_estimator(method, model, seed=0, sigma=sigma, **FAST).fit(both)
    for name in ("D", "K"):
        ratio = np.median(result.std[name][800:] / result.std[name][:800])
        assert ratio > 1.5, (name, ratio)


def test_gumbel_sampler_trains():
    model, signals, truth, _ = _data(n_voxels=800)
    result = get_estimator("gmvae", model, seed=0, y_sampler="gumbel", restarts=0, **FAST).fit(signals)
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
    with pytest.raises(ValueError, match="n_epochs must be"):
        get_estimator("selfsup", model, n_epochs=0)
    with pytest.raises(ValueError, match="do not apply to method vae"):
        get_estimator("vae", model, n_components=3)
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
    # the angular spread of a random axis is about 60 degrees; these fibres are well resolved
    assert np.all(np.isfinite(result.std["n"])) and np.median(result.std["n"]) < 30




def test_fast_inference_spends_work_only_where_few_effective_samples(fitted, monkeypatch):
    """``inference="fast"`` reports each voxel's effective sample size; by default it runs the adaptive
    rounds in every voxel, with ``target_effective_samples`` set on exactly the voxels whose encoder
    proposals leave fewer, and the mode search on exactly those still below ``min_effective_samples``,
    keeping the other voxels' samples; with thresholds above the sample count every voxel gets the work,
    and the maps of the default agree with ``inference="exact"`` within Monte Carlo error."""
    model, signals, truth, _, results = fitted
    estimator, result = copy.deepcopy(results["gmvae"][0]), results["gmvae"][1]
    assert result.effective_samples.shape == (signals.shape[0],)
    n_pooled = estimator.n_posterior_samples * estimator.n_adaptive_rounds  # the rounds' samples, pooled
    assert np.all((result.effective_samples >= 1.0 - 1e-9) & (result.effective_samples <= n_pooled + 1e-6))
    calls = {"adaptive": [], "mode": []}
    real_posterior = type(estimator)._posterior

    def counting(self, batch, generator, *, mode_search, adaptive=True, scale=None):
        if mode_search:
            calls["mode"].append(batch.n_voxels)
        elif adaptive:
            calls["adaptive"].append(batch.n_voxels)
        return real_posterior(self, batch, generator, mode_search=mode_search, adaptive=adaptive, scale=scale)

    def transform(**thresholds):
        gate_ess.clear()
        for key in calls:
            calls[key].clear()
        for name, value in thresholds.items():
            setattr(estimator, name, value)
        return estimator.transform(signals, sigma=estimator.fitted_sigma_)

    gate_ess = []  # what the gates read: the effective samples of each voxel's last proposal (first pass)
    real_summarise = type(estimator)._summarise

    def summarise(self, samples):
        gate_ess.append(self._last_proposal_ess(samples).numpy())
        return real_summarise(self, samples)

    monkeypatch.setattr(type(estimator), "_summarise", summarise)
    monkeypatch.setattr(type(estimator), "_posterior", counting)
    # the restart of collapsed voxels has its own test; here it would change the ESS the gates read
    monkeypatch.setattr(type(estimator), "_restart_collapsed", lambda self, batch, samples, generator, scale: samples)
    transform(min_effective_samples=0.0)
    assert calls["adaptive"] == [signals.shape[0]] and not calls["mode"]
    # the encoder's proposals only (one chunk: the same draws every time)
    encoder_only = transform(target_effective_samples=0.0, min_effective_samples=0.0)
    assert not calls["adaptive"] and not calls["mode"]
    encoder_ess = gate_ess[0]
    target = float(np.quantile(encoder_ess, 0.4))
    adapted = transform(target_effective_samples=target)
    adapted_ess = gate_ess[0]
    below_target = encoder_ess < target
    assert sum(calls["adaptive"]) == int(below_target.sum()) > 0 and not calls["mode"]
    assert np.array_equal(adapted.params["D"][~below_target], encoder_only.params["D"][~below_target])
    threshold = float(np.quantile(adapted_ess, 0.3))
    fast = transform(min_effective_samples=threshold)
    low = adapted_ess < threshold
    assert sum(calls["mode"]) == int(low.sum()) > 0
    assert np.array_equal(fast.effective_samples[~low], adapted.effective_samples[~low])
    assert np.array_equal(fast.params["D"][~low], adapted.params["D"][~low])
    transform(target_effective_samples=estimator.n_posterior_samples + 1.0,
              min_effective_samples=estimator.n_posterior_samples + 1.0)
    assert sum(calls["adaptive"]) == sum(calls["mode"]) == signals.shape[0]
    estimator.inference = "exact"
    exact = transform()
    assert sum(calls["mode"]) == signals.shape[0]
    for name in ("D", "K"):
        rmse_default = np.sqrt(np.mean((result.params[name] - truth[name]) ** 2))
        rmse_exact = np.sqrt(np.mean((exact.params[name] - truth[name]) ** 2))
        assert rmse_default < 1.1 * rmse_exact, name


def test_new_scan_with_another_noise_level_maps_finitely(fitted):
    """A network trained on one noise level (a constant encoder input) maps a scan with another one: the
    input's standardisation and the encoder's log-variances are bounded, so no proposal overflows."""
    model, signals, truth, _, results = fitted
    estimator = results["gmvae"][0]
    rng = np.random.default_rng(5)
    noisier = add_noise(model.predict(truth, S0=1000.0), sigma=4 * estimator.fitted_sigma_, rng=rng)
    mapped = estimator.transform(noisier)
    for name in ("D", "K"):
        assert np.all(np.isfinite(mapped.params[name]))
    assert np.sqrt(np.mean((mapped.params["D"] - truth["D"]) ** 2)) < 0.15


def test_maps_do_not_depend_on_how_many_chunks_run_at_once(fitted):
    """Chunks mapped in parallel threads draw from streams of their own: the same maps with one torch
    thread (one chunk at a time) and with two (two chunks at once), over several chunks, up to float32
    rounding (a pass of one chunk, such as the mode search of the few voxels that need it, runs with
    every thread; one generator shared between chunks would differ by Monte Carlo error, ~1e-3); the stds, a
    second moment, to 5e-4 (measured: 4e-4 in one voxel of 1,500, whose weights rest on few samples)."""
    from varmap.estimators.neural import torch_threads

    _, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    estimator.chunk_size = 256  # 6 chunks
    maps = []
    for n_threads in (1, 2):
        with torch_threads(n_threads):
            maps.append(estimator.transform(signals, sigma=estimator.fitted_sigma_))
    for name in ("D", "K"):
        np.testing.assert_allclose(maps[0].params[name], maps[1].params[name], rtol=1e-5)
        np.testing.assert_allclose(maps[0].std[name], maps[1].std[name], rtol=5e-4)
    np.testing.assert_allclose(maps[0].cluster_probs, maps[1].cluster_probs, atol=1e-5)


def test_voxels_whose_weights_collapse_search_again_from_their_least_squares_fit(fitted):
    """Samples whose importance weights sit on one sample far from the posterior (every proposal missed
    it: the std would be near 0 whatever the error) are replaced by a search from the voxel's
    least-squares fit, which finds the posteriors again; voxels with healthy weights keep their samples."""
    from varmap.estimators.posterior import PosteriorSamples, effective_sample_size

    _, signals, truth, _, results = fitted
    estimator, good = results["gmvae"]
    rows = np.arange(0, signals.shape[0], 10)
    sigma = estimator.fitted_sigma_ if np.ndim(estimator.fitted_sigma_) == 0 else estimator.fitted_sigma_[rows]
    batch = voxel_batch(prepare_signals(signals[rows], estimator.model, sigma=sigma), estimator.device_)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        healthy = estimator._sample(batch, generator)
        far = torch.full((healthy.z.shape[0], rows.size, estimator.latent_size), 3.0)
        far = far + 1e-3 * torch.randn(far.shape, generator=generator)
        log_proposal = torch.zeros(far.shape[:2])
        log_proposal[:-1] = 1e3  # all the weight on the last sample
        collapsed = PosteriorSamples.under(estimator.prior_, far, estimator._log_likelihood(batch, far), log_proposal)
        mixed = healthy.with_voxels(torch.arange(0, rows.size, 2), collapsed.select_voxels(torch.arange(0, rows.size, 2)))
        assert float(effective_sample_size(mixed.weights())[::2].max()) < 1.5
        restarted = estimator._restart_collapsed(batch, mixed, generator)
        maps = estimator._summarise(restarted)
    torch.testing.assert_close(restarted.z[:, 1::2], healthy.z[:, 1::2])  # untouched
    assert np.median(maps.effective_samples[::2]) > 1.5
    params = estimator.model.unpack(maps.packed)
    for name in ("D", "K"):
        error = np.sqrt(np.mean((params[name][::2] - truth[name][rows][::2]) ** 2))
        reference = np.sqrt(np.mean((good.params[name][rows][::2] - truth[name][rows][::2]) ** 2))
        assert error < 1.5 * reference + 0.01, (name, error, reference)


@pytest.mark.parametrize("method", ["vae", "gmvae"])
def test_latent_codes_decode_back_to_the_parameters_they_were_made_from(fitted, method):
    """The restart's start: codes whose decoded parameters and S0 are the ones asked for (the latent
    decoder is linear and as wide as the latent space, so the least-squares inverse is exact)."""
    model, _, truth, _, results = fitted
    estimator = results[method][0]
    packed = torch.as_tensor(model.pack({name: truth[name][:20] for name in ("D", "K")}))
    S0 = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)[:, None]
    with torch.no_grad():
        decoded, decoded_S0 = estimator.decoder_.parameters_of(estimator.latent_decoder_(estimator._latent_codes_of(packed, S0)))
    torch.testing.assert_close(decoded.double(), packed, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(decoded_S0.double(), S0, rtol=1e-3, atol=1e-4)


def test_gmvae_trains_again_while_two_components_duplicate_one_tissue():
    """A refined prior whose closest two components lie nearer than ``duplicate_distance`` is trained
    again from other random streams of the seed; the attempt kept, and left as the fitted network, is the
    one whose closest pair lies farthest apart."""
    model, signals, _, _ = _data(n_voxels=600)
    options = {**FAST, "n_epochs": 30, "refinement_voxels": 256, "refinement_rounds": 1}
    once = get_estimator("gmvae", model, seed=2, duplicate_distance=0.0, **options)
    history = once.fit(signals).history
    assert len(history["closest_components"]) == 1 and "restart_kept" not in history
    first = history["closest_components"][0]  # (a merge-and-split move may follow and change the prior)
    again = get_estimator("gmvae", model, seed=2, duplicate_distance=np.inf, restarts=2, **options)
    history = again.fit(signals).history
    separations = history["closest_components"]
    assert len(separations) == 3 and separations[0] == pytest.approx(first)
    assert len(set(separations)) == 3  # each attempt draws from its own streams
    kept = history["restart_kept"][0]
    assert separations[kept] == max(separations)
    assert again._closest_components() == pytest.approx(max(separations))


def _merge_two_largest_components(estimator) -> tuple[int, int]:
    """Make the prior's two largest components what training leaves at low SNR: each spans both tissues
    (the pair's moment-matched Gaussian, means a little apart)."""
    prior = estimator.prior_
    i, j = (int(k) for k in torch.argsort(prior.log_weights(), descending=True)[:2])
    weights = prior.log_weights().detach().double().exp()[[i, j]]
    weights = weights / weights.sum()
    means, covariances = prior.means.detach().double()[[i, j]], prior.covariances()[[i, j]]
    mean, covariance = pooled(GridComponents(weights, means, covariances))
    nudge = 0.02 * covariance.diagonal().sqrt()
    prior.set_component(i, mean + nudge, covariance)
    prior.set_component(j, mean - nudge, covariance)
    return i, j


def _tissue_means(estimator, components: list[int], truth, labels) -> tuple[list, list]:
    """The decoded (D, K) of ``components``' means, and the true tissues' mean (D, K), both sorted."""
    codes = estimator.prior_.means.detach()[components]
    packed, _ = estimator.decoder_.parameters_of(estimator.latent_decoder_(codes))
    found = sorted(tuple(round(float(v), 2) for v in row[:2]) for row in packed.detach())
    tissues = sorted((float(truth["D"][labels == c].mean()), float(truth["K"][labels == c].mean())) for c in (0, 1))
    return found, tissues


def test_gmvae_refits_a_pair_that_no_voxel_tells_apart_on_a_grid(fitted):
    """Two components that predict one voxel's signals alike (both across both tissues) are refitted by
    exact EM on a grid of (D, K): the evidence rises, the pair comes apart in the signals' space and its
    components land on the two tissues; other components are left as they were."""
    model, signals, truth, labels, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    estimator.merge_split_distance = 0.0
    data = prepare_signals(signals, model)
    voxels = voxel_batch(data, estimator.device_)
    assert estimator._repair_merged_components(data, voxels).keys() == {"closest_in_signals"}  # apart: nothing to do
    i, j = _merge_two_largest_components(estimator)
    third = [k for k in range(estimator.n_components) if k not in (i, j)]
    untouched = estimator.prior_.means.detach()[third].clone()
    history = estimator._repair_merged_components(data, voxels)
    pair, gain, n_steps = history["merged_pair"][:2], *history["merged_pair"][2:]
    assert sorted(pair) == sorted([i, j]) and gain > 0.0 and n_steps >= 1 and "merge_split" not in history
    assert history["closest_in_signals"][0] < 0.01 < estimator.merged_distance < history["closest_in_signals"][1]
    assert torch.equal(estimator.prior_.means.detach()[third], untouched)
    assert float(estimator.prior_.log_weights().detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    found, tissues = _tissue_means(estimator, [i, j], truth, labels)
    assert np.allclose(found, tissues, atol=0.06), (found, tissues)


def test_gmvae_merges_two_components_of_one_tissue_and_splits_one_across_two(fitted):
    """A prior with two components on one tissue and a third across both: merging the pair and splitting
    the third raises the evidence more than refitting the pair, and puts a component on each tissue."""
    model, signals, truth, labels, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    data = prepare_signals(signals, model)
    voxels = voxel_batch(data, estimator.device_)
    prior = estimator.prior_
    i, j = (int(k) for k in torch.argsort(prior.log_weights(), descending=True)[:2])
    (t,) = [k for k in range(estimator.n_components) if k not in (i, j)]
    means, covariances = prior.means.detach().double(), prior.covariances()
    weights = prior.log_weights().detach().double().exp()[[i, j]]
    across = pooled(GridComponents(weights / weights.sum(), means[[i, j]], covariances[[i, j]]))
    nudge = 0.02 * covariances[i].diagonal().sqrt()
    prior.set_component(j, means[i] - nudge, covariances[i])  # j joins i on i's tissue
    prior.set_component(i, means[i] + nudge, covariances[i])
    prior.set_component(t, *across)
    with torch.no_grad():
        prior.logits.copy_(torch.log(torch.tensor([1 / 3] * 3)))
    history = estimator._repair_merged_components(data, voxels)
    merged_i, merged_j, split_t, merge_gain, split_gain = history["merge_split"]
    assert sorted([int(merged_i), int(merged_j)]) == sorted([i, j]) and int(split_t) == t
    assert split_gain > 0.0 and merge_gain + split_gain > 0.0
    assert history["closest_in_signals"][1] > history["closest_in_signals"][0]
    found, tissues = _tissue_means(estimator, [0, 1, 2], truth, labels)
    for tissue in tissues:
        assert min(np.hypot(d - tissue[0], k - tissue[1]) for d, k in found) < 0.08, (found, tissues)
    assert float(prior.log_weights().detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_gmvae_grid_likelihood_takes_the_noise_level_as_a_point_value(fitted):
    """The grid EM deconvolves components from the voxels' grid likelihoods, so a stated uncertainty of σ
    marginalised there would widen every voxel's likelihood and narrow the refitted components (ABCD-like
    protocol at SNR 5: grey matter's K spread 0.07 against 0.105).  The grid takes σ as a point value;
    the same voxels' likelihood elsewhere does depend on it."""
    model, signals, _, _, results = fitted
    estimator = results["gmvae"][0]
    data = prepare_signals(signals, model)
    voxels = voxel_batch(data, estimator.device_).select(slice(0, 64))
    uncertain = voxels._replace(sigma_log_sd=torch.full_like(voxels.sigma_log_sd, 0.1))
    with torch.no_grad():
        codes = estimator.prior_.means.double() @ estimator.latent_decoder_.weight.double().T
        codes = codes + estimator.latent_decoder_.bias.double()  # (K, 3): D and K unconstrained, then S0
        nodes, s0_nodes = codes[:, :-1], codes[None, :1, -1].expand(voxels.n_voxels, 1)
        log_weights = torch.zeros_like(s0_nodes)
        assert torch.equal(estimator._grid_likelihood(voxels, nodes, s0_nodes, log_weights),
                           estimator._grid_likelihood(uncertain, nodes, s0_nodes, log_weights))
        columns = [t.double()[:, None, :] for t in (voxels.observables, voxels.b0_mean, voxels.sigma)]
        point = estimator.decoder_.nll_of(columns[0], codes[None], *columns[1:])
        marginal = estimator.decoder_.nll_of(columns[0], codes[None], *columns[1:],
                                             uncertain.sigma_log_sd.double()[:, None, :])
        assert not torch.allclose(point, marginal, rtol=0.0, atol=1e-9)


def test_gmvae_repair_of_merged_components_is_off_at_zero_distances(fitted):
    model, signals, _, _, results = fitted
    estimator = copy.deepcopy(results["gmvae"][0])
    estimator.merged_distance, estimator.merge_split_distance = 0.0, 0.0
    _merge_two_largest_components(estimator)
    data = prepare_signals(signals, model)
    assert estimator._repair_merged_components(data, voxel_batch(data, estimator.device_)) == {}
