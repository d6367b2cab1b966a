"""Tests of the noise level estimated from voxel signals alone."""

import numpy as np
import pytest

from varmap.estimators.noise_level import (
    ISOTROPIC_FIT,
    ISOTROPIC_KURTOSIS_FIT,
    estimate_sigma_from_b0,
    estimate_sigma_per_voxel,
    has_residuals,
    residual_unknowns,
    residual_variances,
)
from varmap.protocol import Protocol
from varmap.signal_models import get_signal_model
from varmap.simulation import PRIORS, add_noise, get_prior, hcp_protocol, simulate, trace_protocol


def test_sigma_from_b0_repeats():
    rng = np.random.default_rng(1)
    b0 = 100.0 + 5.0 * rng.standard_normal((20000, 6))
    assert estimate_sigma_from_b0(b0) == pytest.approx(5.0, rel=0.02)
    assert estimate_sigma_from_b0(b0[:, :1]) is None
    assert estimate_sigma_from_b0(b0[:0]) is None


def _ball_stick_signals(protocol, n_voxels: int, *, sigma: float, seed: int) -> np.ndarray:
    """Anisotropic signals (S0 200): random fibre directions, stick fractions and ball diffusivities, Rician noise."""
    model = get_signal_model("ball_stick", protocol)
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(n_voxels, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    params = {"f": rng.uniform(0.2, 0.7, n_voxels), "d_par": np.full(n_voxels, 1.7),
              "d_iso": rng.uniform(0.6, 1.2, n_voxels), "n": n}
    return add_noise(model.predict(params, S0=200.0), sigma=sigma, rng=rng)


@pytest.mark.parametrize("sigma", [2.0, 10.0])
def test_per_voxel_sigma_of_anisotropic_signals(sigma):
    """Stick-and-ball signals are anisotropic; the kurtosis fit absorbs that, the residuals are the noise.
    One noise level everywhere: every voxel's estimate is close to it (shrunk towards the median)."""
    protocol = hcp_protocol(n_b0=1, n_directions=30, shells=(1000.0, 2000.0), seed=0)
    signals = _ball_stick_signals(protocol, 4000, sigma=sigma, seed=0)
    estimate = estimate_sigma_per_voxel(signals, protocol)
    assert estimate.typical == pytest.approx(sigma, rel=0.1)
    assert np.quantile(np.abs(np.log(estimate.sigma / sigma)), 0.9) < 0.15
    assert estimate.shrinkage < 0.5


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_per_voxel_sigma_follows_a_varying_noise_level(snr):
    """Noise levels 1-4x between voxels, S0 varying, Rician noise down to b0 SNR 1.25: each voxel's estimate
    follows its own level without bias (the Rician correction) in every tissue cluster, free water included."""
    protocol = hcp_protocol(n_b0=6, n_directions=30, seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=4000, snr=snr, noise_variation=4.0,
                     S0_range=(600.0, 1400.0), seed=3)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    log_ratio = np.log(estimate.sigma / truth.sigma)
    for cluster in np.unique(truth.labels):
        assert abs(np.mean(log_ratio[truth.labels == cluster])) < 0.08
    assert np.std(log_ratio) < 0.3  # the true levels spread by 0.40 in log sigma
    assert np.corrcoef(np.log(estimate.sigma), np.log(truth.sigma))[0, 1] > 0.75
    assert estimate.shrinkage > 0.8


def test_per_voxel_sigma_uncertainty_describes_its_errors_at_low_snr():
    """At b=0 SNR 1.25-5 (noise levels 1-4x) each estimate's stated uncertainty of log σ matches its
    error: the RMS of error / uncertainty is near 1 in every cluster (the residual degrees of freedom
    alone gave 1.6-1.9: the floor's mean moves with σ and its residuals are not Gaussian).  Free water
    (the last cluster) keeps a bias of about -0.06 in log σ that the uncertainty does not hold (1.36-1.52)."""
    protocol = hcp_protocol(seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=3000, snr=5.0, noise_variation=4.0, seed=7)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    z = np.log(estimate.sigma / truth.sigma) / estimate.log_sd
    rms = [np.sqrt(np.mean(z[truth.labels == cluster] ** 2)) for cluster in np.unique(truth.labels)]
    assert all(0.8 < value < 1.3 for value in rms[:-1]) and rms[-1] < 1.7, rms


@pytest.mark.xfail(strict=True, reason="one noise level: the shrinkage reads a spread between voxels that is not "
                   "there, and the stated uncertainty of log sigma is 2-4x the estimates' errors (RMS z 0.2-0.6)")
def test_per_voxel_sigma_uncertainty_describes_its_errors_with_one_noise_level():
    """With one noise level everywhere each estimate's stated uncertainty of log σ should match its error
    too.  It does not yet: the spread between voxels is the robust variance of the log variances less
    their median sampling variance, and sampling variances that differ between voxels (free water's fit
    keeps fewer degrees of freedom) read as a spread (measured on the studies' data: 0.02-0.08 in log σ
    where there is none).  An estimate of the spread that measures each voxel against its own sampling
    noise halves the errors, but the stated uncertainty stays wider than they are (the fixed systematic
    0.02 alone exceeds them at high SNR), and free water on short protocols then loses: its D and K
    move with per-voxel σ errors below 1 % (benchmarks/results/README.md, twenty-fourth session)."""
    protocol = hcp_protocol(seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=3000, snr=20.0, seed=7)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    z = np.log(estimate.sigma / truth.sigma) / estimate.log_sd
    rms = [np.sqrt(np.mean(z[truth.labels == cluster] ** 2)) for cluster in np.unique(truth.labels)]
    assert all(0.7 < value < 1.3 for value in rms), rms


@pytest.mark.xfail(strict=True, reason="free water's noise level reads 4.8-5.8 % low: where its signal meets the noise "
                   "floor the kurtosis fit implies Rician variance ratios 13-26 % too large "
                   "(benchmarks/results/README.md, twenty-eighth session)")
@pytest.mark.parametrize("snr", [10.0, 20.0])
def test_per_voxel_sigma_of_free_water_is_unbiased(snr):
    """Noise levels 1-4x between voxels: free water's estimates should be as unbiased as the tissues'.
    They are not yet (mean log-σ error -0.058 at b=0 SNR 10, -0.048 at 20; tissues within 0.013).  In
    free water (D = 3 µm²/ms) the Rician variance ratios that the kurtosis fit's predictions imply on the
    b = 1 and 3 ms/µm² shells, where the signal meets the floor, are 13-26 % larger than the truth's (in
    tissue within 0.2 %), so the residuals are read against too large an expectation.  A Rician-corrected
    refit, in the log or in the magnitude domain, left the bias as it was.  Where the noise varies, the
    shrinkage keeps it in free water, and it alone collapses the free-water component of gmvae's prior."""
    protocol = hcp_protocol(seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=3000, snr=snr, noise_variation=4.0, seed=7)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    log_ratio = np.log(estimate.sigma / truth.sigma)
    for cluster in np.unique(truth.labels):
        assert abs(np.mean(log_ratio[truth.labels == cluster])) < 0.02, cluster


def test_a_protocol_with_one_measurement_per_b_value_is_refused():
    protocol = Protocol.from_bvals_bvecs(np.array([0.0, 1000.0, 2000.0]), np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]))
    assert residual_unknowns(protocol) == (ISOTROPIC_FIT, 3)
    with pytest.raises(ValueError, match="3 measurements, one per b-value, so no voxelwise fit leaves a residual.*Pass sigma="):
        estimate_sigma_per_voxel(np.full((5, protocol.n_measurements), 100.0), protocol)


@pytest.mark.parametrize("model_name", ["msdki", "ball_stick"])
def test_unknowns_are_counted_by_the_rank_of_the_fit(model_name):
    """1 b=0 + the three axes at b = 1000 and 2000 s/mm²: 7 measurements.  The tensor with isotropic kurtosis
    has 8 columns but the axes inform only the tensor's diagonal, so 5 unknowns and 2 residual degrees of
    freedom per voxel; the anisotropy along the axes is fitted, so ball-and-stick voxels read close to their
    noise level too (measured +0.06 to +0.14 at SNR 10-50; the isotropic signal read +1.36 at SNR 20)."""
    from varmap.estimators.noise_level import _design_matrix, _weighted_log_fit

    protocol = trace_protocol()
    assert residual_unknowns(protocol) == (ISOTROPIC_KURTOSIS_FIT, 5)
    design = _design_matrix(protocol, ISOTROPIC_KURTOSIS_FIT)
    signals = np.exp(design @ np.random.default_rng(0).normal(size=(5, 20))).T  # 20 voxels the fit describes
    predicted, leverage = _weighted_log_fit(signals, design, np.linalg.pinv(design).T)
    np.testing.assert_allclose(predicted, signals, rtol=1e-6)
    np.testing.assert_allclose(leverage.sum(axis=1), 5.0, rtol=1e-6)  # the hat matrix's trace: the unknowns
    model = get_signal_model(model_name, protocol)
    truth = simulate(model, get_prior(model_name, next(iter(PRIORS[model_name]))), n_voxels=4000, snr=20, seed=3)
    log_ratio = np.log(estimate_sigma_per_voxel(truth.signals, protocol).sigma / truth.sigma)
    assert abs(np.median(log_ratio)) < (0.05 if model_name == "msdki" else 0.15)


@pytest.mark.parametrize("model_name", ["msdki", "ball_stick"])
def test_with_no_tensor_left_the_isotropic_signal_gives_an_upper_bound(model_name):
    """1 b=0 + 2 x 3 directions that differ between shells: 7 measurements, the tensor with isotropic
    kurtosis has 8 unknowns.  The isotropic signal (3) leaves 4: MS-DKI's isotropic signal reads its
    noise level; ball-and-stick's anisotropy reads as noise, high."""
    protocol = hcp_protocol(n_b0=1, n_directions=3, shells=(1000.0, 2000.0), seed=0)
    assert residual_unknowns(protocol) == (ISOTROPIC_FIT, 3)
    model = get_signal_model(model_name, protocol)
    truth = simulate(model, get_prior(model_name, next(iter(PRIORS[model_name]))), n_voxels=4000, snr=20, seed=3)
    estimate = estimate_sigma_per_voxel(truth.signals, protocol)
    log_ratio = np.log(estimate.sigma / truth.sigma)
    if model_name == "msdki":
        assert abs(np.median(log_ratio)) < 0.05
    else:
        assert np.median(log_ratio) > 0.5
    assert estimate.shared_log_sd == pytest.approx(0.3) and np.all(estimate.log_sd >= 0.3)


@pytest.mark.parametrize("model_name", ["msdki", "ball_stick"])
def test_a_protocol_too_short_for_the_kurtosis_tensor_uses_the_tensor_with_isotropic_kurtosis(model_name):
    """1 b=0 + 2 x 6 directions: 13 measurements, fewer than the kurtosis tensor's 22 unknowns; the tensor
    with one isotropic kurtosis term (8) leaves 5 residual degrees of freedom per voxel.  MS-DKI's signal is
    that model exactly; ball-and-stick's anisotropic one is not, and what it leaves reads as noise."""
    protocol = hcp_protocol(n_b0=1, n_directions=6, shells=(1000.0, 2000.0), seed=0)
    assert residual_unknowns(protocol) == (ISOTROPIC_KURTOSIS_FIT, 8) and not has_residuals(protocol)
    model = get_signal_model(model_name, protocol)
    truth = simulate(model, get_prior(model_name, next(iter(PRIORS[model_name]))), n_voxels=4000, snr=10, seed=3)
    log_ratio = np.log(estimate_sigma_per_voxel(truth.signals, protocol).sigma / truth.sigma)
    if model_name == "msdki":
        assert abs(np.median(log_ratio)) < 0.03
    else:  # reads high (measured +0.06 to +0.10 at SNR 5-20): within the systematic uncertainty it states
        assert 0.0 < np.median(log_ratio) < 0.15


def test_batched_residual_fit_predicts_as_dipys_weighted_kurtosis_fit():
    """The residuals come from a batched weighted log-linear fit; its predictions are dipy's DKI WLS ones."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst import dki

    from varmap.estimators.noise_level import _design_matrix, _weighted_log_fit

    protocol = hcp_protocol(n_b0=2, n_directions=30, shells=(1000.0, 2000.0), seed=0)
    signals = _ball_stick_signals(protocol, 300, sigma=5.0, seed=4).astype(np.float64)
    design = _design_matrix(protocol, "kurtosis")
    predicted, leverage = _weighted_log_fit(signals, design, np.linalg.pinv(design).T)
    gtab = gradient_table(protocol.bvals * 1000.0, bvecs=protocol.bvecs)
    fit = dki.DiffusionKurtosisModel(gtab, fit_method="WLS", return_S0_hat=True).fit(signals)
    np.testing.assert_allclose(predicted, fit.predict(gtab, S0=fit.S0_hat), rtol=1e-3)
    np.testing.assert_allclose(leverage.sum(axis=1), 22.0, rtol=1e-6)  # the trace of the hat matrix: the unknowns


def test_tabulated_rician_moments_match_scipy():
    """The residual estimate takes each measurement's Rician mean and variance from the geometric mean
    the log fit predicts; the table agrees with scipy's Rician (E[log M] by numerical integration)."""
    from scipy import stats

    from varmap.estimators.noise_level import _rician_moments

    nu = np.array([0.0, 0.3, 1.0, 2.0, 3.5, 8.0, 30.0])
    mean, variance = stats.rice.stats(nu, moments="mv")
    log_geometric_mean = np.array([stats.rice.expect(np.log, args=(b,)) for b in nu])
    table_mean, table_variance = _rician_moments(log_geometric_mean)
    np.testing.assert_allclose(table_mean, mean, rtol=1e-4)
    np.testing.assert_allclose(table_variance, variance, rtol=2e-3)
    # below the floor's geometric mean: the floor; far above the table: the Gaussian limit; NaN kept
    edge_means, edge_variances = _rician_moments(np.array([-1.0, np.log(1e3), np.nan]))
    np.testing.assert_allclose(edge_means[0], mean[0], rtol=1e-9)
    np.testing.assert_allclose(edge_variances[:2], [variance[0], 1.0], rtol=1e-6)
    assert edge_means[1] == pytest.approx(1e3) and np.isnan(edge_means[2]) and np.isnan(edge_variances[2])


def test_rician_moment_table_builds_without_warnings():
    """The table's first node (no signal) is a limit, -inf + inf where evaluated directly; it is set
    from its closed form, and building the table tells the user nothing about it."""
    import warnings

    from varmap.estimators.noise_level import _rician_moment_table

    _rician_moment_table.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start, means, ratios = _rician_moment_table()
    assert np.isfinite(start) and np.all(np.isfinite(means)) and np.all(np.isfinite(ratios))


def test_per_voxel_sigma_uses_the_noise_floor():
    """At b=0 SNR 2 most diffusion-weighted measurements sit at the noise floor; they still say how
    large σ is (a Rayleigh variable's spread is σ's), so each voxel's estimate, before any shrinkage,
    is nearly unbiased and more precise than its 18 b=0 repeats alone make it (0.17 in log σ; using
    only the measurements 2 σ above the floor gave 0.16)."""
    protocol = hcp_protocol(seed=0)
    model = get_signal_model("msdki", protocol)
    truth = simulate(model, get_prior("msdki", "paper"), n_voxels=2000, snr=2.0, seed=5)
    raw = 0.5 * np.log(residual_variances(truth.signals, protocol)[0] / truth.sigma**2)
    for cluster in np.unique(truth.labels):
        assert abs(np.mean(raw[truth.labels == cluster])) < 0.08
    assert np.std(raw) < 0.12


def test_short_protocols_do_not_count_the_noise_floor():
    """With fewer than 6 measurements per unknown of the residual fit the fit follows the noise at the
    floor, so only measurements 2σ above zero count (voxels with fewer than 10 of them are flagged);
    the 288-measurement protocol counts every measurement and flags none."""
    prior = get_prior("msdki", "paper")
    for protocol, flagged in ((hcp_protocol(n_b0=1, n_directions=30, shells=(1000.0, 2000.0), seed=0), True),
                              (hcp_protocol(seed=0), False)):
        model = get_signal_model("msdki", protocol)
        truth = simulate(model, prior, n_voxels=500, snr=1.5, seed=2)
        variance, dof, at_floor = residual_variances(truth.signals, protocol)
        assert bool(at_floor.any()) is flagged
        assert np.all(np.isfinite(variance)) and np.all(dof > 0)
