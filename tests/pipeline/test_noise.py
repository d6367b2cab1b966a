"""The noise level a run maps with: the noise-map estimators, and how given, read and estimated levels are chosen."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from ellipsoid_scans import AFFINE, SIGMA

from varmap.io import InputError, load_protocol, open_dwi
from varmap.pipeline.noise import SIGMA_FROM_FILE, SIGMA_FROM_IMAGE, SIGMA_GIVEN, noise_level, noise_summary
from varmap.pipeline.noise_maps import NOISE_MAP_METHODS, default_method, estimate_noise_map
from varmap.pipeline.scan import open_scan
from varmap.simulation import hcp_protocol


def opened(scan):
    (dwi, bval, bvec), inside, truth = scan
    image = open_dwi(dwi)
    return image, load_protocol(bval, bvec, n_volumes=image.n_volumes), inside, truth["sigma"]


def median_relative_error(estimate, truth, mask):
    return float(np.median(np.abs(estimate[mask] / truth[mask] - 1.0)))


@pytest.mark.parametrize("method", sorted(NOISE_MAP_METHODS))
def test_every_estimator_maps_the_mask_with_positive_values(varying_noise_scan, method):
    image, protocol, inside, sigma = opened(varying_noise_scan)
    estimate = estimate_noise_map(image, protocol, inside, method)
    assert estimate.shape == inside.shape
    assert np.all(estimate[~inside] == 0) and np.all(np.isfinite(estimate)) and np.all(estimate[inside] > 0)
    assert median_relative_error(estimate, sigma, inside) < 0.5


@pytest.mark.parametrize("scan", ["varying_noise_scan", "varying_noise_one_b0_scan", "varying_noise_trace_scan"])
def test_default_map_follows_a_varying_noise_level(request, scan):
    image, protocol, inside, sigma = opened(request.getfixturevalue(scan))
    local = estimate_noise_map(image, protocol, inside, default_method(protocol))
    constant = estimate_noise_map(image, protocol, inside, "global_constant")
    assert median_relative_error(local, sigma, inside) < 0.15
    # one number for a noise level that varies threefold is worse
    assert median_relative_error(local, sigma, inside) < 0.6 * median_relative_error(constant, sigma, inside)
    left, right = inside.copy(), inside.copy()
    left[7:], right[:7] = False, False
    assert np.median(local[right]) > 1.2 * np.median(local[left])  # σ 25 -> 50 on the left, 50 -> 75 on the right


def test_default_method_per_protocol(ellipsoid_scan, one_b0_scan, varying_noise_trace_scan):
    assert default_method(opened(ellipsoid_scan)[1]) == "b0_local_pooling"
    assert default_method(opened(one_b0_scan)[1]) == "fit_residual_local"
    # too short for the kurtosis fit: dipy's local PCA with one b=0, pseudo-residuals without
    assert default_method(opened(varying_noise_trace_scan)[1]) == "pca_local"
    assert default_method(hcp_protocol(n_b0=0, n_directions=6, shells=(1000.0, 2000.0, 3000.0))) == "pseudo_residual_local"


def test_estimator_choice_is_checked(one_b0_scan, monkeypatch):
    image, protocol, inside, _ = opened(one_b0_scan)
    with pytest.raises(ValueError, match="unknown noise-map method 'mad'.*b0_local_pooling"):
        estimate_noise_map(image, protocol, inside, "mad")
    with pytest.raises(InputError, match="b0_local_pooling needs 2 or more b=0 volumes.*has 1.*--noise-map"):
        estimate_noise_map(image, protocol, inside, "b0_local_pooling")
    flat = np.ones((*image.spatial_shape, 1), np.float32)
    monkeypatch.setattr(type(image), "volumes", lambda self, start, stop: np.repeat(flat, stop - start, axis=-1))
    with pytest.raises(InputError, match="no positive value in the mask.*--sigma"):
        estimate_noise_map(image, protocol, inside, "pseudo_residual_local")
    with pytest.raises(InputError, match="cannot estimate the noise level.*--sigma"):
        estimate_noise_map(image, protocol, inside, "global_constant")


def test_noise_level_given_read_or_estimated(varying_noise_scan, tmp_path):
    (dwi, bval, bvec), inside, truth = varying_noise_scan
    scan = open_scan(dwi, bval, bvec)
    given = noise_level(scan, inside, sigma=12.5)
    assert (given.sigma, given.source, given.method) == (12.5, SIGMA_GIVEN, "given")
    assert given.parameters["sigma"] == 12.5
    assert given.parameters["median_ratio_to_b0_repeats"] == pytest.approx(12.5 / np.median(truth["sigma"][inside]),
                                                                           rel=0.1)

    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(truth["sigma"].astype(np.float32), AFFINE), path)
    read = noise_level(scan, inside, noise_map=path)
    assert read.source == SIGMA_FROM_FILE and read.parameters["file"] == str(path)
    assert read.parameters["median_ratio_to_b0_repeats"] == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(read.sigma, truth["sigma"][inside], rtol=1e-6)

    estimated = noise_level(scan, inside)
    assert estimated.method == "b0_local_pooling" and estimated.parameters == {"radius": 2}
    assert estimated.source.startswith(SIGMA_FROM_IMAGE) and estimated.sigma.shape == (inside.sum(),)
    record = estimated.record(np.append(estimated.sigma, np.nan))
    assert record["method"] == "b0_local_pooling" and record["p5"] < record["median"] < record["p95"]
    assert record["median"] == pytest.approx(np.median(truth["sigma"][inside]), rel=0.15)

    with pytest.raises(InputError, match="--sigma .* or --noise-map .*not both"):
        noise_level(scan, inside, sigma=12.5, noise_map=path)
    with pytest.raises(InputError, match="one number.*noise map"):
        noise_level(scan, inside, sigma=np.full(inside.sum(), SIGMA))


def test_a_noise_level_far_from_the_b0_repeats_is_used_with_a_warning(varying_noise_scan, one_b0_scan, tmp_path, caplog):
    """A given map 1.3x the truth (as an MP-PCA map of magnitude data can read), or one number 1.25x the median
    (a background's Rayleigh mean), is used as given, with a warning that names the ratio to the b=0 repeats'
    estimate; the true median gets none; a one-b=0 scan has no repeats to compare with."""
    (dwi, bval, bvec), inside, truth = varying_noise_scan
    scan = open_scan(dwi, bval, bvec)
    path = tmp_path / "high.nii.gz"
    nib.save(nib.Nifti1Image((1.3 * truth["sigma"]).astype(np.float32), AFFINE), path)
    with caplog.at_level("WARNING", logger="varmap"):
        read = noise_level(scan, inside, noise_map=path)
    np.testing.assert_allclose(read.sigma, 1.3 * truth["sigma"][inside], rtol=1e-6)
    ratio = read.parameters["median_ratio_to_b0_repeats"]
    assert ratio == pytest.approx(1.3, abs=0.13)
    assert f"noise map {path} is {ratio:.2f}x the noise level that the spread of the scan's" in caplog.text
    assert "used as given" in caplog.text and "MP-PCA" in caplog.text

    caplog.clear()
    background_mean = 1.25 * float(np.median(truth["sigma"][inside]))  # a Rayleigh mean taken for sigma
    with caplog.at_level("WARNING", logger="varmap"):
        given = noise_level(scan, inside, sigma=background_mean)
    assert given.sigma == background_mean and "--sigma" in caplog.text and "Rayleigh" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="varmap"):
        noise_level(scan, inside, sigma=float(np.median(truth["sigma"][inside])))
    assert "the noise level that the spread" not in caplog.text

    (dwi, bval, bvec), inside, truth = one_b0_scan
    path = tmp_path / "one_b0.nii.gz"
    nib.save(nib.Nifti1Image(np.where(inside, 1.3 * SIGMA, 0.0).astype(np.float32), AFFINE), path)
    caplog.clear()
    read = noise_level(open_scan(dwi, bval, bvec), inside, noise_map=path)
    assert read.parameters == {"file": str(path)} and "the noise level that the spread" not in caplog.text


def test_noise_summary_ignores_voxels_not_fitted():
    assert noise_summary(np.array([np.nan, 1.0, 2.0, 3.0])) == {
        "median": 2.0, "p5": pytest.approx(1.1), "p95": pytest.approx(2.9)}
    assert noise_summary(np.full(3, np.nan)) == {"median": None, "p5": None, "p95": None}
