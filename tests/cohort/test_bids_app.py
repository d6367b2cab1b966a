"""``varmap bids ... participant`` end to end on a phantom cohort, with 2 Dask worker processes."""

from __future__ import annotations

import json

import pytest

from varmap.cli import main
from varmap.cohort.naming import PYBIDS_CONFIG

#: Every scan's maps, by varmap name, for MS-DKI fitted by nlls.
NLLS_MAPS = {
    "D": "model-msdki_param-md_dwimap",
    "K": "model-msdki_param-mk_dwimap",
    "S0": "model-msdki_param-s0_dwimap",
    "rmse": "model-msdki_stat-rmse_dwimap",
    "sigma": "model-msdki_stat-sigma_dwimap",
    "mask": "desc-brain_mask",
}
SIDECAR_FIELDS = {"Description", "Units", "Model", "Method", "EstimatorSettings", "VarmapVersion", "Sources"}
FAST = ["--model", "msdki", "--method", "nlls", "--no-figure", "--quiet"]


def _mtimes(folder):
    return {path: path.stat().st_mtime_ns for path in sorted(folder.rglob("*")) if path.is_file()}


def test_participant_level_writes_bids_derivatives_that_pybids_indexes(cohort, tmp_path, forked_workers):
    import bids

    out = tmp_path / "derivatives"
    assert main(["bids", str(cohort), str(out), "participant", "--workers", "2", *FAST]) == 0

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "varmap"
    for subject in ("01", "02", "03"):
        dwi = out / f"sub-{subject}" / "dwi"
        expected = {f"sub-{subject}_{stem}" for stem in NLLS_MAPS.values()}
        assert {p.name[: -len(".nii.gz")] for p in dwi.glob("*.nii.gz")} == expected
        assert {p.name for p in dwi.glob("*.json")} >= {f"{name}.json" for name in expected}
        assert (dwi / f"sub-{subject}_model-msdki_fit.json").is_file()
        assert (dwi / f"sub-{subject}_model-msdki_checkpoint.pt").is_file()
        sidecar = json.loads((dwi / f"sub-{subject}_model-msdki_param-md_dwimap.json").read_text())
        assert SIDECAR_FIELDS <= set(sidecar)
        assert (sidecar["Units"], sidecar["Method"], sidecar["Model"]["Name"]) == ("µm²/ms", "nlls", "msdki")
        assert f"bids:raw:sub-{subject}/dwi/sub-{subject}_dwi.nii.gz" in sidecar["Sources"]

    layout = bids.BIDSLayout(out, validate=False, config=PYBIDS_CONFIG)
    md = layout.get(suffix="dwimap", param="md", extension=".nii.gz")
    assert sorted(f.get_entities()["subject"] for f in md) == ["01", "02", "03"]
    assert {f.get_entities()["model"] for f in md} == {"msdki"}
    assert len(layout.get(suffix="mask", desc="brain", extension=".nii.gz")) == 3
    with_raw = bids.BIDSLayout(cohort, validate=False, derivatives=str(out))
    assert len(with_raw.get(scope="derivatives", suffix="dwimap", extension=".nii.gz")) == 3 * 5


def test_rerun_after_a_killed_run_maps_only_what_was_missing(cohort, tmp_path, scheduler, capsys):
    out = tmp_path / "derivatives"
    base = ["bids", str(cohort), str(out), "participant", "--scheduler", scheduler, *FAST]
    assert main([*base, "--participant-label", "01", "sub-02"]) == 0
    # a run killed while writing sub-03 leaves only its hidden temporary folder
    partial = out / ".sub-03.partial-killed"
    partial.mkdir()
    (partial / "half-written.nii.gz").write_bytes(b"")
    finished = _mtimes(out / "sub-01") | _mtimes(out / "sub-02")
    assert not (out / "sub-03").exists()

    assert main(base[:-1]) == 0  # without --quiet: one line per scan
    err = capsys.readouterr().err
    assert "sub-01: already done" in err and "sub-02: already done" in err and "sub-03: done in" in err
    assert "1 mapped, 2 already done, 0 failed" in err
    assert _mtimes(out / "sub-01") | _mtimes(out / "sub-02") == finished
    assert (out / "sub-03" / "dwi" / "sub-03_model-msdki_param-mk_dwimap.nii.gz").is_file()
    assert not partial.exists()

    assert main([*base, "--participant-label", "01", "--force"]) == 0
    redone = _mtimes(out / "sub-01")
    assert set(redone) == {p for p in finished if "sub-01" in str(p)}
    assert all(redone[p] != finished[p] for p in redone)


def test_broken_subject_fails_alone_with_its_name(copy_cohort, tmp_path, scheduler, capsys):
    bids_dir = copy_cohort()
    bval = bids_dir / "sub-02" / "dwi" / "sub-02_dwi.bval"
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")  # one b-value fewer than volumes
    out = tmp_path / "derivatives"
    status = main(["bids", str(bids_dir), str(out), "participant", "--scheduler", scheduler, *FAST])
    assert status == 1
    err = capsys.readouterr().err
    assert "sub-02" in err and "b-values but the image has" in err and str(bval) in err
    assert (out / "sub-01").is_dir() and (out / "sub-03").is_dir() and not (out / "sub-02").exists()


def test_population_model_maps_every_subject_without_training(cohort, tmp_path, scheduler):
    import varmap

    trained = varmap.fit_image(
        cohort / "sub-01" / "dwi" / "sub-01_dwi.nii.gz", cohort / "sub-01" / "dwi" / "sub-01_dwi.bval",
        cohort / "sub-01" / "dwi" / "sub-01_dwi.bvec", mask=cohort / "sub-01" / "dwi" / "sub-01_desc-brain_mask.nii.gz",
        model="msdki", method="gmvae", output_dir=tmp_path / "trained", progress=False, figure=False, n_epochs=2,
        n_posterior_samples=16, n_mode_steps=2, n_adaptive_rounds=0, refinement_rounds=0,
    )
    out = tmp_path / "derivatives"
    checkpoint = trained.output_dir / "model.pt"
    status = main(["bids", str(cohort), str(out), "participant", "--population-model", str(checkpoint),
                   "--scheduler", scheduler, "--no-figure", "--quiet"])
    assert status == 0
    for subject in ("01", "02", "03"):
        dwi = out / f"sub-{subject}" / "dwi"
        stem = f"sub-{subject}_model-msdki"
        for name in ("param-mk_desc-std_dwimap", "desc-clusters_probseg", "desc-clusters_dseg"):
            assert (dwi / f"{stem}_{name}.nii.gz").is_file()
        record = json.loads((dwi / f"{stem}_fit.json").read_text())
        assert record["kind"] == "apply"
        assert not (dwi / f"{stem}_checkpoint.pt").exists()
        sidecar = json.loads((dwi / f"{stem}_param-mk_desc-std_dwimap.json").read_text())
        assert sidecar["PopulationModel"] == str(checkpoint) and sidecar["Method"] == "gmvae"
        assert sidecar["Description"].startswith("posterior standard deviation")


@pytest.mark.parametrize("extra, message", [
    (["--participant-label", "09"], "participant label(s) 09 not found"),
    (["--model", "msdki"], "give --model and --method"),
    (["--model", "msdki", "--method", "nlls", "--n-epochs", "2"], "do not apply to method nlls"),
])
def test_refused_before_any_fitting(cohort, tmp_path, capsys, extra, message):
    out = tmp_path / "derivatives"
    base = [] if "--model" in extra else ["--model", "msdki", "--method", "nlls"]
    assert main(["bids", str(cohort), str(out), "participant", *base, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not any(out.glob("sub-*"))
