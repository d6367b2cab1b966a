"""Whole-image fitting: a simulated volume with known maps, written as NIfTI, fitted and compared."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import varmap
import varmap.image_fit as image_fit
from varmap import Protocol, cli, get_signal_model
from varmap.io import InputError, open_dwi
from varmap.simulation import fibonacci_sphere

SHAPE = (14, 14, 8)
AFFINE = np.array([[-2.0, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 2.5, -10.0], [0, 0, 0, 1]])
SIGMA = 25.0




def phantom(n_b0=4):
    """Known MS-DKI maps in an ellipsoid (zero background), and a 2-shell protocol."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    inside = x**2 + y**2 + z**2 < 0.85
    truth = {
        "D": 0.6 + 0.25 * (x + 1),  # µm²/ms, a smooth gradient
        "K": np.where(y > 0, 0.9, 0.4),  # two "tissues"
        "S0": 1000.0 + 200.0 * z,
    }
    bvals = np.concatenate([np.zeros(n_b0), np.full(16, 1000.0), np.full(16, 2000.0)])
    bvecs = np.concatenate([np.zeros((n_b0, 3)), fibonacci_sphere(16), fibonacci_sphere(16)[::-1]])
    return inside, truth, bvals, bvecs


def write_phantom(folder, *, n_b0=4, seed=0):
    """Simulate the phantom with Rician noise (σ = 25, SNR 40 at S0 = 1000) and write NIfTI + FSL files."""
    inside, truth, bvals, bvecs = phantom(n_b0)
    model = get_signal_model("msdki", Protocol.from_bvals_bvecs(bvals, bvecs))
    clean = model.predict({"D": truth["D"], "K": truth["K"]}, S0=truth["S0"]) * inside[..., None]
    rng = np.random.default_rng(seed)
    noisy = np.abs(clean + rng.normal(0, SIGMA, clean.shape) + 1j * rng.normal(0, SIGMA, clean.shape))
    image = nib.Nifti1Image(noisy.astype(np.float32), AFFINE)
    image.set_sform(AFFINE, 2)
    image.set_qform(AFFINE, 1)
    paths = (folder / "dwi.nii.gz", folder / "dwi.bval", folder / "dwi.bvec")
    nib.save(image, paths[0])
    np.savetxt(paths[1], bvals[None], fmt="%g")
    np.savetxt(paths[2], bvecs.T, fmt="%.8f")
    return paths, inside, truth


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    return write_phantom(folder)


@pytest.mark.parametrize(
    ("method", "flags", "tolerance"),
    [("nlls", [], {"D": 0.05, "K": 0.15, "S0": 0.02}),
     ("vae", ["--n-epochs", "60"], {"D": 0.1, "K": 0.35, "S0": 0.03})],
)
def test_round_trip_recovers_known_maps(simulated, tmp_path, method, flags, tolerance):
    (dwi, bval, bvec), inside, truth = simulated
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


def test_fit_image_api_matches_files(simulated, tmp_path):
    (dwi, bval, bvec), inside, _ = simulated
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
    # the per-voxel result lines up with the mask's voxels
    np.testing.assert_allclose(result.maps["D"][inside], result.fit.params["D"], rtol=1e-6)

    again = varmap.apply_checkpoint(result.files["checkpoint"], dwi, bval, bvec, mask=mask_path, progress=False)
    for name in ("D", "K", "S0", "D_std", "cluster_probs"):
        np.testing.assert_allclose(again.maps[name], result.maps[name], rtol=1e-5, atol=1e-6)
    assert again.output_dir is None and again.files == {}


def test_fit_image_without_output_writes_nothing(simulated, tmp_path):
    (dwi, bval, bvec), _, _ = simulated
    before = set(tmp_path.parent.iterdir())
    result = varmap.fit_image(dwi, bval, bvec, model="msdki", method="selfsup", n_epochs=2, progress=False,
                              figure=False)
    assert result.output_dir is None and result.files == {}
    assert set(tmp_path.parent.iterdir()) == before
    assert result.metadata["timings"]["total_s"] > 0


def test_single_b0_uses_the_image_noise_estimate(tmp_path):
    (dwi, bval, bvec), inside, _ = write_phantom(tmp_path, n_b0=1, seed=1)
    image = open_dwi(dwi)
    protocol = varmap.io.load_protocol(bval, bvec, n_volumes=image.n_volumes)
    sigma = image_fit.estimate_sigma_from_image(image, protocol, inside)
    assert sigma == pytest.approx(SIGMA, rel=0.25)
    result = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", progress=False, figure=False)
    assert result.metadata["config"]["sigma_source"].startswith("estimated from the b=0 image")
    assert result.fit.sigma == pytest.approx(SIGMA, rel=0.25)
    given = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", sigma=30.0, progress=False, figure=False)
    assert given.fit.sigma == 30.0 and given.metadata["config"]["sigma_source"] == "given (--sigma)"


def test_chunked_goodness_of_fit_equals_fit_result(simulated, monkeypatch):
    (dwi, bval, bvec), _, _ = simulated
    monkeypatch.setattr(image_fit, "_GOF_CHUNK", 37)
    result = varmap.fit_image(dwi, bval, bvec, model="msdki", method="nlls", progress=False, figure=False)
    signals = open_dwi(dwi).extract(result.mask)
    expected = result.fit.goodness_of_fit(signals)
    np.testing.assert_allclose(result.maps["rmse"][result.mask], expected, rtol=1e-5)


def test_options_are_checked_before_work(simulated, tmp_path):
    (dwi, bval, bvec), _, _ = simulated
    with pytest.raises(InputError, match="--n-components do not apply to method vae"):
        varmap.fit_image(dwi, bval, bvec, method="vae", n_components=3, output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="unknown method 'mcmc'"):
        varmap.fit_image(dwi, bval, bvec, method="mcmc")
    with pytest.raises(ValueError, match="unknown signal model 'ivim'"):
        varmap.fit_image(dwi, bval, bvec, model="ivim")
    with pytest.raises(InputError, match="device 'tpu' is not known"):
        varmap.fit_image(dwi, bval, bvec, device="tpu")
    assert not (tmp_path / "out").exists()


def test_nlls_chunk_respects_memory():
    _, _, bvals, bvecs = phantom()
    protocol = Protocol.from_bvals_bvecs(bvals, bvecs)
    assert image_fit._nlls_chunk_size(get_signal_model("msdki", protocol)) == 50_000
    hcp_bvals = np.concatenate([np.zeros(18), np.repeat([1000.0, 2000.0, 3000.0], 90)])
    hcp_bvecs = np.concatenate([np.zeros((18, 3)), np.tile(fibonacci_sphere(90), (3, 1))])
    ball_stick = get_signal_model("ball_stick", Protocol.from_bvals_bvecs(hcp_bvals, hcp_bvecs))
    chunk = image_fit._nlls_chunk_size(ball_stick)
    assert 70 * chunk * 288 * 7 <= 1.6e9 and chunk >= 1000
