"""The phantom study end to end on a tiny crop of the brain phantom."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from varmap.evaluation.baselines import DIPY_METHOD
from varmap.evaluation.phantom_study import format_phantom_markdown, run_phantom_study
from varmap.phantom import make_phantom
from varmap.pipeline.noise_maps import estimate_noise_map


@pytest.fixture(scope="module")
def tiny_msdki():
    return make_phantom(model="msdki", voxel_size=2.0, snr=20.0, seed=0, crop=(12, 12, 6), image=False)


def test_study_end_to_end(tmp_path, tiny_msdki) -> None:
    out = tmp_path / "study"
    result = run_phantom_study(
        model="msdki",
        methods=("nlls", "gmvae"),
        method_options={"gmvae": {"n_epochs": 3, "n_components": 3, "restarts": 0}},
        phantom=tiny_msdki,
        output_dir=out,
        progress=False,
    )
    assert [row["method"] for row in result.speed] == [DIPY_METHOD, "nlls", "gmvae"]
    assert result.reference == DIPY_METHOD
    for row in result.speed:
        assert row["n_voxels"] == tiny_msdki.n_voxels
        assert row["total_s"] > 0 and row["voxels_per_s"] > 0
        assert np.isfinite(row["peak_rss_mb"])  # the monitor ran (NaN when memory is not measured)
        assert row["time_ratio"] == pytest.approx(row["total_s"] / result.speed[0]["total_s"])
    gmvae = next(row for row in result.speed if row["method"] == "gmvae")
    assert gmvae["train_s"] > 0 and gmvae["infer_s"] > 0
    groups = {(r["method"], r["parameter"], r["group"]) for r in result.rows}
    for method in (DIPY_METHOD, "nlls", "gmvae"):
        for parameter in ("D", "K"):
            for group in ("all", "WM", "GM", "CSF", "PV", "interior", "boundary"):
                assert (method, parameter, group) in groups
    nlls_wm_D = next(r for r in result.rows if (r["method"], r["parameter"], r["group"]) == ("nlls", "D", "WM"))
    assert nlls_wm_D["n"] > 0 and nlls_wm_D["rmse"] < 0.1  # voxelwise fit of pure WM at SNR 20
    boundary = [r for r in result.rows if r["group"] == "boundary"]
    assert all(np.isfinite(r["edge_ratio"]) for r in boundary)
    # the stds of gmvae (nlls and dipy report none) scored against the truth in the same groups
    assert {r["method"] for r in result.calibration} == {"gmvae"}
    assert {(r["parameter"], r["group"]) for r in result.calibration} == {
        (p, g) for p in ("D", "K") for g in ("all", "WM", "GM", "CSF", "PV", "interior", "boundary")}
    truth = tiny_msdki.truth_in_mask()
    pure_wm = tiny_msdki.groups()[tiny_msdki.mask] == 0
    fit = result.fits["gmvae"]
    z = (fit.params["K"] - truth["K"]) / fit.std["K"]
    wm_K = next(r for r in result.calibration if (r["parameter"], r["group"]) == ("K", "WM"))
    assert wm_K["n"] == pure_wm.sum() and wm_K["coverage_95"] == pytest.approx(np.mean(np.abs(z[pure_wm]) <= 1.96))
    names = {path.name for path in result.files}
    assert {"results.csv", "calibration.csv", "speed.csv", "results.md", "phantom_study.json", "maps.png",
            "clusters.png"} <= names
    with open(out / "calibration.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(result.calibration)
    assert all(path.stat().st_size > 0 for path in result.files)
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    config = json.loads((out / "phantom_study.json").read_text())
    assert config["n_brain_voxels"] == tiny_msdki.n_voxels and config["shape"] == [12, 12, 6]
    markdown = (out / "results.md").read_text()
    assert "gmvae clusters" in markdown and "Speed and memory" in markdown
    assert "Calibration of the reported standard deviations" in markdown
    with pytest.raises(FileExistsError, match="--force"):
        run_phantom_study(methods=("nlls",), phantom=tiny_msdki, output_dir=out, progress=False)


# a 6 x 6 x 4 box of pure white matter (centrum semiovale) of the 2 mm grid
WM_BOX = (slice(36, 42), slice(66, 72), slice(54, 58))


def test_study_ball_stick_direction_rows() -> None:
    phantom = make_phantom(model="ball_stick", voxel_size=2.0, snr=30.0, seed=2, crop=WM_BOX, image=False)
    result = run_phantom_study(
        model="ball_stick",
        methods=("selfsup",),
        method_options={"selfsup": {"n_epochs": 3}},
        phantom=phantom,
        progress=False,
    )
    assert result.reference == "selfsup"  # no dipy model for ball-and-stick: the first method
    angles = [r for r in result.rows if r["parameter"] == "n"]
    assert {r["group"] for r in angles} == {"WM", "WM-dominant"}
    dominant = next(r for r in angles if r["group"] == "WM-dominant")
    assert dominant["n"] == phantom.n_voxels > 0
    assert dominant["angular_error_deg"] < 30.0  # random fibre directions would be 57° off on average
    assert "angle (deg)" in format_phantom_markdown(result)


def test_dipy_units_on_the_phantom(tiny_msdki) -> None:
    result = run_phantom_study(methods=(), phantom=tiny_msdki, progress=False)
    truth = tiny_msdki.truth_in_mask()
    pure_wm = tiny_msdki.groups()[tiny_msdki.mask] == 0
    D = result.estimates[DIPY_METHOD]["D"]
    assert np.median(D[pure_wm] / truth["D"][pure_wm]) == pytest.approx(1.0, abs=0.1)


def test_study_argument_errors(tiny_msdki) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        run_phantom_study(methods=("magic",), phantom=tiny_msdki)
    with pytest.raises(ValueError, match="ball_stick|msdki"):
        run_phantom_study(model="ball_stick", methods=("nlls",), phantom=tiny_msdki)


def test_study_reports_the_noise_field(tiny_msdki) -> None:
    plain = run_phantom_study(methods=("nlls",), phantom=tiny_msdki, include_dipy=False, progress=False)
    assert plain.config["noise_field"] is False and "one noise level" in format_phantom_markdown(plain)
    result = run_phantom_study(
        methods=("nlls",), voxel_size=2.0, snr=20.0, crop=(8, 8, 4), include_dipy=False, progress=False,
        noise_field=True,
    )
    assert result.phantom.noise_field is not None and result.config["noise_field"] is True
    markdown = format_phantom_markdown(result)
    assert markdown.startswith("## Brain phantom study: msdki, noise field") and "varying smoothly" in markdown


def test_methods_are_given_the_noise_map_of_the_image_pipeline(tiny_msdki) -> None:
    """The methods get the noise map ``varmap fit`` would estimate (the phantom's 18 b=0 volumes pooled),
    recorded with its accuracy; ``image_noise_map=False`` leaves each method to estimate σ per voxel."""
    given = run_phantom_study(methods=("nlls",), phantom=tiny_msdki, include_dipy=False, progress=False)
    record = given.config["noise_map"]
    assert record["method"] == "b0_local_pooling" and record["parameters"] == {"radius": 2}
    assert 0.0 < record["median_relative_error"] < 0.05 and record["seconds"] >= 0.0
    expected = estimate_noise_map(tiny_msdki.dwi_image(), tiny_msdki.protocol, tiny_msdki.mask,
                                  "b0_local_pooling")[tiny_msdki.mask]
    np.testing.assert_allclose(given.fits["nlls"].sigma, expected, rtol=1e-6)
    assert "the noise map `varmap fit` estimates from the image (b0_local_pooling, radius 2" in \
        format_phantom_markdown(given)
    own = run_phantom_study(methods=("nlls",), phantom=tiny_msdki, include_dipy=False, progress=False,
                            image_noise_map=False)
    assert own.config["noise_map"] is None and "each method estimates σ per voxel" in format_phantom_markdown(own)
    assert not np.allclose(own.fits["nlls"].sigma, expected, rtol=1e-3)
