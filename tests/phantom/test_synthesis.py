"""make_phantom: shapes, ground truth, noise level, background, determinism and crops."""

from __future__ import annotations

import numpy as np
import pytest

from varmap import get_signal_model
from varmap.estimators.data import estimate_sigma_from_b0
from varmap.phantom import TISSUE_S0, TISSUES, Phantom, make_phantom


@pytest.mark.parametrize("fixture", ["msdki_phantom", "ball_stick_phantom"])
def test_phantom_shapes_fractions_and_truth_bounds(
    fixture: str, request: pytest.FixtureRequest, phantom_crop: tuple[int, int, int]
) -> None:
    phantom: Phantom = request.getfixturevalue(fixture)
    n_meas = phantom.protocol.n_measurements
    assert phantom.dwi.shape == phantom_crop + (n_meas,) and phantom.dwi.dtype == np.float32
    assert phantom.mask.shape == phantom_crop and phantom.mask.dtype == bool
    assert phantom.fractions.shape == phantom_crop + (3,)
    inside = phantom.fractions[phantom.mask]
    np.testing.assert_allclose(inside.sum(-1), 1.0, atol=1e-5)
    assert np.all(phantom.fractions[~phantom.mask] == 0)
    groups = phantom.groups()
    assert set(np.unique(groups[phantom.mask])) == {0, 1, 2, 3}  # pure WM, GM, CSF and partial volume
    model = get_signal_model(phantom.model, phantom.protocol)
    truth = phantom.truth_in_mask()
    for parameter in model.parameters:
        values = truth[parameter.name]
        assert values.shape == (phantom.n_voxels,)
        assert parameter.low < values.min() and values.max() < parameter.high, parameter.name
    assert np.all(truth["S0"] > 0)
    # the mixture truth is the fraction-weighted mean of the tissue values; pure voxels' truth is their tissue's
    name = model.parameters[0].name
    mixed = sum(
        phantom.fractions[..., t] * phantom.tissue_params[tissue][name] for t, tissue in enumerate(TISSUES)
    )
    np.testing.assert_allclose(phantom.mixture_truth[name], mixed, rtol=1e-5, atol=1e-6)
    pure = phantom.mask & (phantom.fractions.max(-1) >= 1 - 1e-6)
    np.testing.assert_array_equal(phantom.truth[name][pure], phantom.mixture_truth[name][pure])
    assert np.array_equal(phantom.signals, phantom.dwi[phantom.mask])


def test_msdki_truth_is_physical(msdki_phantom: Phantom) -> None:
    b_max = msdki_phantom.protocol.bvals.max()
    for tissue in TISSUES:
        D = msdki_phantom.tissue_params[tissue]["D"][msdki_phantom.mask]
        K = msdki_phantom.tissue_params[tissue]["K"][msdki_phantom.mask]
        assert np.all(D * K * b_max < 3.0)
    wm = msdki_phantom.groups() == 0
    assert abs(np.median(msdki_phantom.truth["D"][wm]) - 0.8) < 0.1
    assert abs(np.median(msdki_phantom.truth["K"][wm]) - 1.1) < 0.15


def test_ball_stick_direction_truth(ball_stick_phantom: Phantom) -> None:
    n = ball_stick_phantom.truth_in_mask()["n"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    wm = ball_stick_phantom.groups()[ball_stick_phantom.mask] == 0
    assert abs(np.median(ball_stick_phantom.truth_in_mask()["f"][wm]) - 0.6) < 0.1


def test_noise_level_is_as_requested(msdki_phantom: Phantom) -> None:
    sigma = TISSUE_S0["WM"] / 10.0
    assert msdki_phantom.sigma == pytest.approx(sigma)
    # repeated b=0 images of the brain: Rician at b=0 SNR >= 9 is close to Gaussian (std ~0.99 sigma)
    estimate = estimate_sigma_from_b0(msdki_phantom.signals[:, msdki_phantom.protocol.b0_mask])
    assert estimate == pytest.approx(sigma, rel=0.05)
    # mean b=0 signal matches the true S0
    b0 = msdki_phantom.signals[:, msdki_phantom.protocol.b0_mask].mean(1)
    truth = msdki_phantom.truth_in_mask()["S0"]
    assert np.median(b0 / truth) == pytest.approx(1.0, abs=0.01)


def test_background_is_rayleigh_noise() -> None:
    corner = make_phantom(voxel_size=2.0, snr=20.0, crop=(slice(0, 8), slice(0, 8), slice(0, 4)))
    assert corner.n_voxels == 0
    sigma = TISSUE_S0["WM"] / 20.0
    assert corner.dwi.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
    assert np.mean(corner.dwi.astype(np.float64) ** 2) == pytest.approx(2 * sigma**2, rel=0.02)


def test_noiseless_limit_matches_forward_model() -> None:
    phantom = make_phantom(model="msdki", voxel_size=2.0, snr=1e7, seed=0, crop=(6, 6, 4))
    model = get_signal_model("msdki", phantom.protocol)
    pure = phantom.groups()[phantom.mask] == 0
    truth = phantom.truth_in_mask()
    predicted = model.predict({"D": truth["D"], "K": truth["K"]}, S0=truth["S0"])
    np.testing.assert_allclose(phantom.signals[pure], predicted[pure], rtol=0.02)


def _least_squares_residual(model, params: dict[str, np.ndarray], signals: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of each voxel's signals against the model at ``params`` with its best S0."""
    shape = model.predict(params, S0=np.ones(signals.shape[0]))
    S0 = (signals * shape).sum(1) / (shape * shape).sum(1)
    return ((signals - S0[:, None] * shape) ** 2).sum(1)


@pytest.mark.parametrize("model_name", ["msdki", "ball_stick"])
def test_mixed_voxels_truth_is_the_model_fitted_to_their_noiseless_signal(model_name: str) -> None:
    """At negligible noise the truth of a mixed voxel explains its signal at least as well as any other
    parameters (here the fraction-weighted mean of its tissues' values), and clearly better in CSF mixtures."""
    phantom = make_phantom(model=model_name, voxel_size=2.0, snr=1e7, seed=0, crop=(6, 6, 4))
    model = get_signal_model(model_name, phantom.protocol)
    fractions = phantom.fractions[phantom.mask]
    mixed = fractions.max(-1) < 1 - 1e-6
    assert mixed.sum() > 20
    signals = phantom.signals[mixed].astype(np.float64)
    truth = {name: value[mixed] for name, value in phantom.truth_in_mask().items() if name != "S0"}
    mixture = dict(truth, **{name: value[phantom.mask][mixed] for name, value in phantom.mixture_truth.items()})
    at_truth = _least_squares_residual(model, truth, signals)
    at_mixture = _least_squares_residual(model, mixture, signals)
    assert np.all(at_truth <= at_mixture * (1 + 1e-4) + 1e-6 * (signals**2).sum(1))
    with_csf = fractions[mixed, 2] > 0.2
    assert with_csf.any() and np.median(at_truth[with_csf] / at_mixture[with_csf]) < 0.5


def test_seeded_determinism_and_crop_consistency() -> None:
    a = make_phantom(voxel_size=2.0, seed=7, crop=(8, 8, 4))
    b = make_phantom(voxel_size=2.0, seed=7, crop=(8, 8, 4))
    c = make_phantom(voxel_size=2.0, seed=8, crop=(8, 8, 4))
    assert np.array_equal(a.dwi, b.dwi)
    assert not np.array_equal(a.dwi, c.dwi)
    for name in a.truth:
        assert np.array_equal(a.truth[name], b.truth[name])
    # truth of a crop is the same region of a larger crop (fields drawn on the whole grid)
    big = make_phantom(voxel_size=2.0, seed=7, crop=(12, 12, 8), image=False)
    offset = [sa.start - sb.start for sa, sb in zip(a.crop, big.crop)]
    region = tuple(slice(o, o + n) for o, n in zip(offset, a.shape))
    np.testing.assert_array_equal(a.mixture_truth["D"], big.mixture_truth["D"][region])
    # the fitted truth of mixed voxels agrees to the fit's precision (batched float arithmetic differs)
    np.testing.assert_allclose(a.truth["D"], big.truth["D"][region], rtol=1e-5)
    np.testing.assert_allclose(a.affine[:3, 3], big.affine[:3, :3] @ offset + big.affine[:3, 3])
    # image=False keeps exactly the brain voxels of the image
    no_image = make_phantom(voxel_size=2.0, seed=7, crop=(8, 8, 4), image=False)
    assert no_image.dwi is None
    np.testing.assert_array_equal(no_image.signals, a.signals)


def test_crop_slices_and_errors() -> None:
    phantom = make_phantom(voxel_size=2.0, crop=(slice(40, 46), slice(50, 55), slice(40, 43)), image=False)
    assert phantom.shape == (6, 5, 3)
    with pytest.raises(ValueError, match="crop"):
        make_phantom(voxel_size=2.0, crop=(4, 4))
    with pytest.raises(ValueError, match="model"):
        make_phantom(model="t2adc", voxel_size=2.0, crop=(4, 4, 4))
    with pytest.raises(ValueError, match="snr"):
        make_phantom(snr=0, voxel_size=2.0, crop=(4, 4, 4))
    with pytest.raises(ValueError, match="voxel_size"):
        make_phantom(voxel_size=0.1, crop=(4, 4, 4))


def test_noise_field_phantom_keeps_the_truth_and_scales_the_noise() -> None:
    """A noise field changes only the noise: the same truth, and each voxel's noise (background included)
    at the level of :attr:`Phantom.sigma_map`."""
    box = (slice(20, 34), slice(20, 34), slice(20, 26))  # brain and background
    plain = make_phantom(voxel_size=2.0, snr=10.0, seed=4, crop=box)
    field = make_phantom(voxel_size=2.0, snr=10.0, seed=4, crop=box, noise_field=True)
    assert plain.noise_field is None and "noise_field" not in plain.config
    np.testing.assert_array_equal(plain.sigma_map, np.float32(plain.sigma))
    for name in plain.truth:
        np.testing.assert_array_equal(field.truth[name], plain.truth[name])
    assert field.sigma == plain.sigma and field.config["noise_field"]["range_over_brain"] == [1.0, 3.0]
    np.testing.assert_allclose(field.sigma_map, field.sigma * field.noise_field, rtol=1e-6)
    assert field.noise_field.max() / field.noise_field.min() > 1.2
    background = ~field.mask
    # zero signal: Rician magnitudes have mean sigma·sqrt(π/2); 288 of them per voxel pin it to ~3 %
    measured = field.dwi[background].mean(axis=-1) / np.sqrt(np.pi / 2)
    np.testing.assert_allclose(measured, field.sigma_map[background], rtol=0.15)
    b0 = field.protocol.b0_mask
    residual = field.dwi[field.mask][:, b0] - field.dwi[field.mask][:, b0].mean(axis=1, keepdims=True)
    ratio = residual.std(axis=1) / field.sigma_map[field.mask]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    again = make_phantom(voxel_size=2.0, snr=10.0, seed=4, crop=box, noise_field=True, image=False)
    np.testing.assert_array_equal(again.signals, field.signals)
