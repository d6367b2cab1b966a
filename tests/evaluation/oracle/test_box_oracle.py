"""The MS-DKI oracle under a uniform box prior: its support, draws, calibration, agreement with brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from varmap.evaluation.oracle.box import in_box_support, msdki_box_oracle, sample_box
from varmap.signal_models import get_signal_model, msdki_signal
from varmap.simulation import add_noise, hcp_protocol, rician_log_pdf

D_RANGE, K_RANGE = (0.4, 3.0), (0.0, 1.6)


@pytest.fixture(scope="module")
def protocol():
    return hcp_protocol()


def _data(protocol, n_voxels, snr, seed):
    D, K = sample_box(n_voxels, D_RANGE, K_RANGE, float(protocol.bvals.max()), np.random.default_rng(seed))
    clean = get_signal_model("msdki", protocol).predict({"D": D, "K": K}, S0=np.ones(n_voxels))
    return D, K, add_noise(clean, sigma=1.0 / snr, rng=np.random.default_rng(seed + 100))


def test_box_support_cuts_the_box_where_the_signal_would_rise():
    D, K = np.array([0.5, 2.9, 2.9, 0.3, 1.0]), np.array([1.5, 0.3, 0.4, 0.5, 1.7])
    # 2.9 · 0.4 · 3 = 3.48 > 3: the signal turns up before b_max; 0.3 and 1.7 lie outside the box
    np.testing.assert_array_equal(in_box_support(D, K, D_RANGE, K_RANGE, 3.0), [True, True, False, False, False])
    with pytest.raises(ValueError, match="D_low"):
        in_box_support(D, K, (0.0, 3.0), K_RANGE, 3.0)


def test_sample_box_draws_uniformly_on_the_support():
    D, K = sample_box(40000, D_RANGE, K_RANGE, 3.0, np.random.default_rng(0))
    assert D.shape == K.shape == (40000,)
    assert np.all(in_box_support(D, K, D_RANGE, K_RANGE, 3.0))
    # uniform: the share in a sub-box is its area over the support's (D·K < 1 cuts the box's corner)
    # the cut is D·K >= 1 (b_max = 3): from D = 1/1.6 on, K above 1/D
    area = 2.6 * 1.6 - (1.6 * (3.0 - 0.625) - np.log(3.0 / 0.625))
    assert np.mean((D < 1.0) & (K < 0.5)) == pytest.approx(0.6 * 0.5 / area, abs=0.01)


def test_box_oracle_is_calibrated(protocol):
    D, K, signals = _data(protocol, 400, snr=10, seed=1)
    result = msdki_box_oracle(signals, protocol, D_range=D_RANGE, K_range=K_RANGE, sigma=0.1, S0=1.0)
    for name, truth in (("D", D), ("K", K)):
        z = (result.params[name] - truth) / result.std[name]
        assert 0.91 < np.mean(np.abs(z) < 1.96) < 0.99, name
        assert np.mean(result.std[name] ** 2) == pytest.approx(np.mean((result.params[name] - truth) ** 2), rel=0.3)
    assert result.diagnostics["fine_steps_per_std"] > 1.0


def test_box_oracle_matches_brute_force_integration(protocol):
    """Exact likelihood of every measurement on a dense grid over the whole support, for a low-D voxel,
    one at the free-water edge (the box cuts the posterior) and one at the cut D·K·b_max = 3 (the support
    does)."""
    D, K, signals = _data(protocol, 200, snr=20, seed=2)
    voxels = [int(np.argmin(D)), int(np.argmax(D)), int(np.argmax(D * K))]
    result = msdki_box_oracle(signals[voxels], protocol, D_range=D_RANGE, K_range=K_RANGE, sigma=0.05, S0=1.0)
    dw = ~protocol.b0_mask
    for i, v in enumerate(voxels):
        mean = np.array([result.params["D"][i], result.params["K"][i]])
        std = np.array([result.std["D"][i], result.std["K"][i]])
        axes = [np.linspace(max(lo, m - 10 * s), min(hi, m + 10 * s), 401)
                for m, s, (lo, hi) in zip(mean, std, (D_RANGE, K_RANGE))]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
        grid = grid[in_box_support(grid[:, 0], grid[:, 1], D_RANGE, K_RANGE, 3.0)]
        theta = torch.tensor(grid)
        nu = msdki_signal(torch.tensor(protocol.bvals[dw]), theta[:, 0], theta[:, 1])
        log_w = rician_log_pdf(torch.tensor(signals[v, dw]), nu, torch.tensor(0.05)).sum(-1).numpy()
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        brute_mean = w @ grid
        brute_std = np.sqrt(w @ (grid - brute_mean) ** 2)
        np.testing.assert_allclose(mean, brute_mean, atol=0.05 * std.min())
        np.testing.assert_allclose(std, brute_std, rtol=0.03)
