"""The simulation study runs end to end, writes its files atomically and refuses bad requests."""

import csv
import json

import numpy as np
import pytest

from varmap.cli import main
from varmap.estimators import get_estimator
from varmap.evaluation.study import format_markdown, run_study

FAST = {"vae": {"n_epochs": 3}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench") / "msdki"
    result = run_study(
        model="msdki", snrs=(20,), n_voxels=300, methods=("nlls", "vae"), n_oracle=100,
        output_dir=output, progress=False, method_options=FAST,
    )
    return output, result


def test_study_writes_tables_figure_and_config(study):
    output, result = study
    names = sorted(p.name for p in output.iterdir())
    assert names == ["calibration.csv", "results.csv", "results.md", "scatter_snr20.png", "study.json"]
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {row["method"] for row in rows}
    assert methods == {"nlls", "vae", "oracle"}
    clusters = {row["cluster"] for row in rows}
    assert clusters == {"all", "tissue 1", "tissue 2", "free water"}
    markdown = (output / "results.md").read_text()
    assert "### SNR 20" in markdown and markdown.startswith("## msdki simulation study: one noise level;")
    config = json.loads((output / "study.json").read_text())
    assert config["noise_variation"] == 1.0 and config["S0_range"] is None and not config["sigma_known"]
    assert config["protocol"].startswith("HCP-like: 18 b=0")


def test_study_reports_the_calibration_of_every_uncertainty(study):
    """vae and the oracle report a std (nlls too where it does); each gets coverage and z rows per cluster."""
    output, result = study
    with open(output / "calibration.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"vae", "oracle"} <= {row["method"] for row in rows}
    assert {row["parameter"] for row in rows} == {"D", "K"}
    for row in result.calibration:
        assert row["snr"] == 20 and 0.0 <= row["coverage_95"] <= 1.0 and row["rms_z"] > 0, row
    oracle = [row for row in result.calibration if row["method"] == "oracle" and row["cluster"] == "all"]
    # the Bayes posterior of the prior the data came from is calibrated up to sampling noise (100 voxels)
    assert all(0.85 <= row["coverage_95"] and row["rms_z"] < 1.4 for row in oracle), oracle
    markdown = (output / "results.md").read_text()
    assert "## Calibration of the reported standard deviations" in markdown
    assert sum(line.startswith("| vae |") for line in markdown.splitlines()) == 2  # errors and calibration

def test_study_rows_compare_with_the_oracle(study):
    _, result = study
    for row in result.rows:
        assert np.isfinite(row["rmse"]) and np.isfinite(row["bias"])
        if row["method"] == "oracle":
            assert row["ratio_to_oracle"] == 1.0 and row["n"] <= 100
        else:
            # the oracle is the posterior mean under the prior the data were drawn from: no estimator
            # beats its RMSE by much, on all voxels or (data-dominated at SNR 20) in one cluster
            assert np.isfinite(row["ratio_to_oracle"]) and row["ratio_to_oracle"] > 0.7, row


def test_markdown_has_one_row_per_method(study):
    _, result = study
    text = format_markdown(result.rows)
    assert sum(line.startswith("| nlls") for line in text.splitlines()) == 1
    assert "[×oracle]" in text


def test_existing_output_refused_and_untouched(study):
    output, _ = study
    before = sorted(p.name for p in output.iterdir())
    with pytest.raises(FileExistsError, match="--force"):
        run_study(model="msdki", snrs=(20,), n_voxels=50, methods=("nlls",), n_oracle=0, output_dir=output)
    assert sorted(p.name for p in output.iterdir()) == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "ivim"}, "no study"),
        ({"methods": ("magic",)}, "unknown method"),
        ({"snrs": (0,)}, "positive"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"prior": "nope"}, "prior"),
        ({"protocol": "nope"}, "unknown study protocol"),
        ({"noise_variation": 0.5}, "noise_variation"),
        ({"S0_range": (0.0, 1.0)}, "S0_range"),
        ({"model": "ball_stick", "S0_range": (600.0, 1400.0)}, "marginalises S0"),
    ],
)
def test_bad_requests_fail_before_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_study(**{"n_voxels": 10, "n_oracle": 0, **kwargs})


def test_parallel_jobs_give_the_same_estimates(study):
    _, serial = study
    parallel = run_study(
        model="msdki", snrs=(20,), n_voxels=300, methods=("nlls", "vae"), n_oracle=100,
        progress=False, method_options=FAST, n_jobs=2,
    )
    for method in ("nlls", "vae", "oracle"):
        for name, values in serial.estimates[20][method].items():
            np.testing.assert_allclose(parallel.estimates[20][method][name], values, rtol=1e-4, atol=1e-6)
    assert len(parallel.rows) == len(serial.rows)


def test_bench_variant_with_per_voxel_noise_and_unknown_S0(tmp_path, capsys):
    """``varmap bench msdki --noise-variation R --s0-range LOW HIGH``: the data vary as asked, the oracle
    knows each voxel's noise level but marginalises S0, and the variant is recorded."""
    out = tmp_path / "variant"
    code = main([
        "bench", "msdki", "--snrs", "10", "--n-voxels", "120", "--n-oracle", "15", "--methods", "nlls",
        "--noise-variation", "3", "--s0-range", "600", "1400", "--jobs", "1", "--quiet", "-o", str(out),
    ])
    assert code == 0 and "| oracle |" in capsys.readouterr().out
    config = json.loads((out / "study.json").read_text())
    assert config["noise_variation"] == 3.0 and config["S0_range"] == [600.0, 1400.0]
    assert "marginalised by the oracle" in config["variant"]
    assert (out / "results.md").read_text().startswith("## msdki simulation study: noise level varying")


def test_study_gives_the_methods_each_voxels_noise_level(monkeypatch):
    from varmap.evaluation import study

    given = []

    def recording(*args, **kwargs):
        given.append(kwargs.get("sigma"))
        return get_estimator(*args, **kwargs)

    monkeypatch.setattr(study, "get_estimator", recording)
    result = run_study(
        model="msdki", snrs=(10,), n_voxels=150, methods=("vae",), n_oracle=20, noise_variation=4.0,
        sigma_known=True, progress=False, method_options=FAST,
    )
    data = result.data[10]
    assert data.sigma.shape == (150,) and data.sigma.max() / data.sigma.min() > 2
    assert len(given) == 1 and given[0] is data.sigma
    assert "methods given each voxel's noise level" in result.variant
    oracle = [row for row in result.rows if row["method"] == "oracle"]
    assert oracle and all(np.isfinite(row["rmse"]) for row in oracle)


def test_per_voxel_noise_study_compares_with_an_oracle_that_marginalises_sigma():
    """Methods that estimate a noise level varying between voxels are compared with the Bayes oracle
    that does not know it either; the oracle given it is a second row, compared with the first."""
    result = run_study(
        model="msdki", snrs=(10,), n_voxels=100, methods=("nlls",), n_oracle=12, noise_variation=4.0,
        progress=False,
    )
    assert "the oracle marginalises it" in result.variant
    rows = {(row["method"], row["parameter"], row["cluster"]): row for row in result.rows}
    for name in ("D", "K"):
        reference, known = rows["oracle", name, "all"], rows["oracle_sigma_known", name, "all"]
        assert reference["ratio_to_oracle"] == 1.0 and reference["n"] == known["n"] == 12
        assert known["ratio_to_oracle"] == pytest.approx(known["rmse"] / reference["rmse"])
    assert {row["method"] for row in result.calibration} == {"oracle", "oracle_sigma_known"}
    assert result.estimates[10]["oracle_sigma_known"]["D"].shape == (12,)
    # the reference is not the oracle given σ under another name
    assert not np.allclose(result.estimates[10]["oracle"]["D"], result.estimates[10]["oracle_sigma_known"]["D"])


def test_only_msdkis_oracle_is_described_as_marginalising_sigma():
    from varmap.evaluation.study import describe_variant

    told = {
        model: describe_variant(model=model, noise_variation=4.0, S0_range=None, sigma_known=False)
        for model in ("msdki", "ball_stick")
    }
    assert "the oracle marginalises it" in told["msdki"] and "marginalises it" not in told["ball_stick"]
    assert "marginalises it" not in describe_variant(model="msdki", noise_variation=4.0, S0_range=None, sigma_known=True)


def test_clinical_protocol_and_physical_prior(tmp_path):
    """The study's second acquisition (one b=0, two shells): the physical prior is truncated at its
    largest b, the methods estimate the noise level without b=0 repeats, and the protocol is recorded."""
    import argparse

    from varmap.cli import build_parser
    from varmap.simulation import STUDY_PROTOCOLS

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in subcommands.choices["bench"]._actions if a.dest == "protocol")
    assert set(flag.choices) == set(STUDY_PROTOCOLS)
    result = run_study(
        model="msdki", snrs=(20,), n_voxels=200, methods=("nlls",), n_oracle=30, prior="physical",
        protocol="clinical", progress=False, output_dir=tmp_path / "clinical",
    )
    data = result.data[20]
    assert data.protocol.n_b0 == 1 and data.protocol.n_measurements == 61
    product = data.params["D"] * data.params["K"]
    # truncated at b_max = 2 (D K < 1.5), not at the default 3 (D K < 1), which would cut white matter
    assert product.max() < 1.5 and product.max() > 1.0
    config = json.loads((tmp_path / "clinical" / "study.json").read_text())
    assert config["protocol"].startswith("clinical: 1 b=0") and config["prior"] == "physical"
