"""The simulation study runs end to end, writes its files atomically and refuses bad requests."""

import csv

import numpy as np
import pytest

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
    assert names == ["results.csv", "results.md", "scatter_snr20.png", "study.json"]
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {row["method"] for row in rows}
    assert methods == {"nlls", "vae", "oracle"}
    clusters = {row["cluster"] for row in rows}
    assert clusters == {"all", "tissue 1", "tissue 2", "free water"}
    assert "### SNR 20" in (output / "results.md").read_text()


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
