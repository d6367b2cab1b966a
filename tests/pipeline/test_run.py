"""The image pipeline end to end: a simulated scan with known maps, written as NIfTI, fitted and compared."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from ellipsoid_scans import AFFINE, SHAPE, SIGMA

import varmap
from varmap import cli
from varmap.io import InputError
from varmap.pipeline.noise import SIGMA_FROM_FILE, SIGMA_FROM_IMAGE, SIGMA_GIVEN


@pytest.mark.parametrize(
    ("method", "flags", "tolerance"),
    [("nlls", [], {"D": 0.05, "K": 0.15, "S0": 0.02}),
     ("vae", ["--n-epochs", "60"], {"D": 0.1, "K": 0.35, "S0": 0.03})],
)
def test_round_trip_recovers_known_maps(ellipsoid_scan, tmp_path, method, flags, tolerance):
    (dwi, bval, bvec), inside, truth = ellipsoid_scan
    out = tmp_path / method
    status = cli.main(["fit", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", "msdki",
                       "--method", method, "-o", str(out), "--quiet", "--no-figure", *flags])
    assert status == 0
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    dice = 2 * (mask & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.85  # median_otsu finds the object in its zero background
    core = mask & inside
    for name, limit in tolerance.items():
        image = nib.load(out / f"{name}.nii.gz")
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
        estimate = image.get_fdata()[core]
        error = np.abs(estimate - truth[name][core])
        if name == "S0":
            error = error / truth[name][core]
        assert np.median(error) < limit, (name, np.median(error))
    meta = json.loads((out / "fit.json").read_text())
    assert meta["config"]["sigma"] == pytest.approx(SIGMA, rel=0.2)  # from the 4 b=0 repeats
    assert meta["config"]["sigma_source"] == f"{SIGMA_FROM_IMAGE} (b0_local_pooling)"
    assert meta["noise"]["method"] == "b0_local_pooling" and meta["noise"]["parameters"] == {"radius": 2}
    assert meta["noise"]["median"] == pytest.approx(SIGMA, rel=0.2)


def test_fit_image_api_matches_files(ellipsoid_scan, tmp_path):
    (dwi, bval, bvec), inside, _ = ellipsoid_scan
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(inside.astype(np.uint8), AFFINE), mask_path)
    result = varmap.fit_image(dwi, bval, bvec, mask=mask_path, model="msdki", method="gmvae",
                              output_dir=tmp_path / "out", n_epochs=3, n_components=2, n_posterior_samples=8,
                              progress=False)
    assert isinstance(result, varmap.ImageFitResult)
    assert result.n_voxels == inside.sum() and result.n_excluded == 0
    np.testing.assert_array_equal(result.mask, inside)
    assert result.maps["cluster_probs"].shape == (*SHAPE, 2)
    assert set(np.unique(result.maps["clusters"][inside])) <= {1.0, 2.0}
    assert np.all(result.maps["clusters"][~inside] == 0)
    for name, array in result.maps.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(np.asanyarray(nib.load(result.files[name]).dataobj), array)
    assert result.files["checkpoint"].exists() and result.files["figure"].exists()
    assert result.metadata["command"].startswith("varmap.fit_image(")
    saved = json.loads(result.files["sidecar"].read_text())
    assert saved["config"]["options"] == {"n_epochs": 3, "n_components": 2, "n_posterior_samples": 8}
    assert saved["config"]["estimator"]["n_components"] == 2
    assert saved["outputs"]["checkpoint"] == "model.pt" and saved["outputs"]["figure"] == "overview.png"
    assert {"dwi", "bvals", "bvecs", "mask"} == set(saved["inputs"])
    # the per-voxel result lines up with the mask's voxels
    np.testing.assert_allclose(result.maps["D"][inside], result.fit.params["D"], rtol=1e-6)

    again = varmap.apply_checkpoint(result.files["checkpoint"], dwi, bval, bvec, mask=mask_path, progress=False)
    for name in ("D", "K", "S0", "D_std", "cluster_probs"):
        np.testing.assert_allclose(again.maps[name], result.maps[name], rtol=1e-5, atol=1e-6)
    assert again.output_dir is None and again.files == {}
    # the new scan's noise map is estimated as the fit's was: here the same scan, so the same map
    assert again.metadata["kind"] == "apply" and again.metadata["noise"] == result.metadata["noise"]
    np.testing.assert_array_equal(again.maps["sigma"], result.maps["sigma"])


def test_fit_image_without_output_writes_nothing(ellipsoid_scan, tmp_path):
    (dwi, bval, bvec), _, _ = ellipsoid_scan
    before = set(tmp_path.parent.iterdir())
    result = varmap.fit_image(dwi, bval, bvec, model="msdki", method="selfsup", n_epochs=2, progress=False,
                              figure=False)
    assert result.output_dir is None and result.files == {}
    assert set(tmp_path.parent.iterdir()) == before
    timings = result.metadata["timings"]
    assert {"check_s", "mask_s", "noise_s", "read_s", "fit_s", "maps_s", "total_s"} <= set(timings)
    assert timings["total_s"] >= timings["fit_s"] > 0


def test_single_b0_passes_the_image_noise_map(one_b0_scan):
    (dwi, bval, bvec), inside, _ = one_b0_scan
    result = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", progress=False, figure=False)
    assert result.metadata["config"]["sigma_source"] == f"{SIGMA_FROM_IMAGE} (fit_residual_local)"
    fitted = result.fit.valid
    assert np.median(result.fit.sigma[fitted]) == pytest.approx(SIGMA, rel=0.25)
    assert "sigma" not in result.metadata["config"]["options"]
    given = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", sigma=30.0, progress=False, figure=False)
    assert np.all(given.fit.sigma[given.fit.valid] == 30.0)
    assert given.metadata["config"]["sigma_source"] == SIGMA_GIVEN and given.metadata["noise"]["method"] == "given"
    assert given.metadata["config"]["options"]["sigma"] == 30.0


def test_scan_without_b0_is_fitted(no_b0_scan, tmp_path, capsys):
    """No b=0 volume: the mask comes from the lowest shell, the noise map from the fit residuals, and the
    signals are normalised by their extrapolation to b=0, whose shortfall S0 takes up."""
    (dwi, bval, bvec), inside, truth = no_b0_scan
    out = tmp_path / "no_b0"
    status = cli.main(["fit", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", "msdki",
                       "--method", "nlls", "-o", str(out), "--quiet", "--no-figure"])
    assert status == 0
    # the warning of a fit without b=0, as one line of the command's messages (also with --quiet)
    assert "varmap: warning: the protocol has no b=0 measurement, so S0 is fitted" in capsys.readouterr().err
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.85
    core = mask & inside
    maps = {name: nib.load(out / f"{name}.nii.gz").get_fdata()[core] for name in ("D", "K", "S0")}
    # measured: 0.075, 0.044 and 5.6 %; normalised by the lowest shell's mean instead, 0.111, 0.072, 8.4 %
    assert np.median(np.abs(maps["D"] - truth["D"][core])) < 0.09
    assert np.median(np.abs(maps["K"] - truth["K"][core])) < 0.06
    assert np.median(np.abs(maps["S0"] / truth["S0"][core] - 1.0)) < 0.07
    meta = json.loads((out / "fit.json").read_text())
    assert meta["noise"]["method"] == "fit_residual_local"
    assert meta["noise"]["median"] == pytest.approx(SIGMA, rel=0.25)
    assert meta["config"]["mask"].startswith("computed: dipy median_otsu on the mean lowest-shell image")


def test_varying_noise_end_to_end(varying_noise_scan, tmp_path):
    """The estimated map reaches the estimator and sigma.nii.gz; a given map reaches fit and apply unchanged."""
    (dwi, bval, bvec), inside, truth = varying_noise_scan
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(inside.astype(np.uint8), AFFINE), mask_path)
    estimated = varmap.fit_image(dwi, bval, bvec, mask=mask_path, model="msdki", method="nlls",
                                 output_dir=tmp_path / "estimated", progress=False, figure=False)
    written = nib.load(estimated.files["sigma"]).get_fdata()
    assert np.all(written[~inside] == 0)
    assert np.median(np.abs(written[inside] / truth["sigma"][inside] - 1)) < 0.15
    np.testing.assert_allclose(estimated.fit.sigma, written[inside], rtol=1e-6)  # what the estimator used
    saved = json.loads(estimated.files["sidecar"].read_text())
    assert saved["outputs"]["sigma"] == "sigma.nii.gz" and saved["units"]["sigma"].startswith("a.u.")
    for key, percentile in (("p5", 5), ("median", 50), ("p95", 95)):
        assert saved["noise"][key] == pytest.approx(np.percentile(truth["sigma"][inside], percentile), rel=0.2)

    noise_map = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(truth["sigma"].astype(np.float32), AFFINE), noise_map)
    status = cli.main(["fit", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--mask", str(mask_path),
                       "--noise-map", str(noise_map), "--model", "msdki", "--method", "vae", "--n-epochs", "2",
                       "--n-posterior-samples", "8", "-o", str(tmp_path / "given"), "--quiet", "--no-figure"])
    assert status == 0
    given = json.loads((tmp_path / "given" / "fit.json").read_text())
    assert given["noise"]["method"] == "file" and given["config"]["sigma_source"] == SIGMA_FROM_FILE
    assert "noise_map" in given["inputs"]
    np.testing.assert_allclose(nib.load(tmp_path / "given" / "sigma.nii.gz").get_fdata()[inside],
                               truth["sigma"][inside], rtol=1e-6)
    status = cli.main(["apply", str(tmp_path / "given" / "model.pt"), str(dwi), "--bvals", str(bval), "--bvecs",
                       str(bvec), "--mask", str(mask_path), "--noise-map", str(noise_map), "-o",
                       str(tmp_path / "applied"), "--quiet", "--no-figure"])
    assert status == 0
    for name in ("sigma", "D", "K"):
        np.testing.assert_allclose(nib.load(tmp_path / "applied" / f"{name}.nii.gz").get_fdata(),
                                   nib.load(tmp_path / "given" / f"{name}.nii.gz").get_fdata(), rtol=1e-5, atol=1e-6)
    # without a map, apply estimates the new scan's own (the checkpoint's fit was given one: protocol default)
    applied = varmap.apply_checkpoint(tmp_path / "given" / "model.pt", dwi, bval, bvec, mask=mask_path, progress=False)
    assert applied.metadata["noise"]["method"] == "b0_local_pooling"
    np.testing.assert_allclose(applied.maps["sigma"], estimated.maps["sigma"], rtol=1e-6)


def test_inputs_are_checked_before_work(ellipsoid_scan, tmp_path):
    (dwi, bval, bvec), _, _ = ellipsoid_scan
    with pytest.raises(InputError, match="--n-components do not apply to method vae; its options are .*--n-epochs"):
        varmap.fit_image(dwi, bval, bvec, method="vae", n_components=3, output_dir=tmp_path / "out")
    with pytest.raises(InputError, match="option n_epochs must be >= 1"):
        varmap.fit_image(dwi, bval, bvec, method="vae", n_epochs=0, output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="unknown method 'mcmc'"):
        varmap.fit_image(dwi, bval, bvec, method="mcmc")
    with pytest.raises(ValueError, match="unknown signal model 'ivim'"):
        varmap.fit_image(dwi, bval, bvec, model="ivim")
    with pytest.raises(InputError, match="device 'tpu' is not known"):
        varmap.fit_image(dwi, bval, bvec, device="tpu")
    assert not (tmp_path / "out").exists()


def test_apply_refuses_a_scan_of_another_protocol(ellipsoid_scan, one_b0_scan, tmp_path):
    (dwi, bval, bvec), _, _ = ellipsoid_scan
    fitted = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", output_dir=tmp_path / "fit",
                              progress=False, figure=False)
    (other_dwi, other_bval, other_bvec), _, _ = one_b0_scan
    with pytest.raises(InputError, match="differs from the one the checkpoint"):
        varmap.apply_checkpoint(fitted.files["checkpoint"], other_dwi, other_bval, other_bvec,
                                output_dir=tmp_path / "applied", progress=False)
    assert not (tmp_path / "applied").exists()
