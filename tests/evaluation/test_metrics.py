"""Tests of varmap.evaluation.metrics on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varmap.evaluation import angular_error_deg, bias, error_table, rmse


def test_rmse_and_bias():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    estimate = np.array([1.5, 2.0, 2.0, 4.5])
    assert rmse(estimate, truth) == pytest.approx(math.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert bias(estimate, truth) == pytest.approx(0.0)
    assert bias(truth + 0.2, truth) == pytest.approx(0.2)


def test_metrics_skip_non_finite_estimates():
    truth = np.array([1.0, 2.0, 3.0])
    estimate = np.array([2.0, np.nan, 3.0])
    assert rmse(estimate, truth) == pytest.approx(math.sqrt(0.5))
    assert bias(estimate, truth) == pytest.approx(0.5)
    assert math.isnan(rmse(np.full(3, np.nan), truth))


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        rmse(np.zeros(3), np.zeros(4))


def test_angular_error_is_antipodally_symmetric():
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    diagonal = np.array([1.0, 1.0, 0])  # not normalised on purpose
    estimates = np.stack([x, -x, y, diagonal, -diagonal])
    truth = np.stack([x, x, x, x, x])
    np.testing.assert_allclose(angular_error_deg(estimates, truth), [0, 0, 90, 45, 45], atol=1e-6)
    assert np.isnan(angular_error_deg(np.full(3, np.nan), x))
    with pytest.raises(ValueError, match="3"):
        angular_error_deg(np.zeros((2, 2)), np.zeros((2, 2)))


def test_error_table_per_cluster():
    truth = {"D": np.array([1.0, 1.0, 3.0, 3.0]), "n": np.tile([0.0, 0.0, 1.0], (4, 1))}
    estimates = {
        "D": np.array([1.1, np.nan, 3.0, 2.8]),
        "D_std": np.ones(4),  # ignored: not in truth
        "n": np.array([[0, 0, -1.0], [1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]]),
    }
    labels = np.array([0, 0, 1, 1])
    rows = error_table(estimates, truth, labels, ("tissue", "water"))
    table = {(row["parameter"], row["cluster"]): row for row in rows}
    assert set(table) == {(p, c) for p in ("D", "n") for c in ("all", "tissue", "water")}
    assert table["D", "all"]["n"] == 4 and table["D", "all"]["n_nan"] == 1
    assert table["D", "tissue"]["rmse"] == pytest.approx(0.1)
    assert table["D", "water"]["bias"] == pytest.approx(-0.1)
    assert table["n", "tissue"]["angular_error_deg"] == pytest.approx(45.0)
    assert table["n", "water"]["angular_error_deg"] == pytest.approx(0.0)
    assert math.isnan(table["n", "all"]["rmse"]) and math.isnan(table["D", "all"]["angular_error_deg"])


def test_error_table_without_labels_and_errors():
    rows = error_table({"K": np.zeros(3)}, {"K": np.ones(3)}, None)
    assert [row["cluster"] for row in rows] == ["all"]
    assert rows[0]["bias"] == pytest.approx(-1.0)
    labelled = error_table({"K": np.zeros(2)}, {"K": np.ones(2)}, np.array([0, 3]), ("a",))
    assert [row["cluster"] for row in labelled] == ["all", "a", "cluster 3"]
    with pytest.raises(ValueError, match="no parameter"):
        error_table({"D": np.zeros(3)}, {"K": np.zeros(3)})
    with pytest.raises(ValueError, match="labels"):
        error_table({"K": np.zeros(3)}, {"K": np.ones(3)}, np.zeros(2, dtype=int))


def test_calibration_table_of_calibrated_and_overconfident_spreads():
    """Errors drawn with the reported std give coverage ~0.95 and RMS z ~1; a std 3x too small shows
    as low coverage, RMS z ~3 and voxels beyond |z| = 4; parameters without a std are left out."""
    from varmap.evaluation.metrics import calibration_table

    rng = np.random.default_rng(0)
    n = 20000
    truth = {"D": rng.uniform(0.5, 3.0, n), "K": rng.uniform(0.0, 1.5, n), "n": rng.normal(size=(n, 3))}
    std = rng.uniform(0.05, 0.2, n)
    labels = (np.arange(n) % 2).astype(int)
    estimates = {"D": truth["D"] + std * rng.standard_normal(n), "K": truth["K"] + std * rng.standard_normal(n)}
    rows = calibration_table(estimates, {"D": std, "K": std / 3.0}, truth, labels, ("a", "b"))
    assert [(r["parameter"], r["cluster"]) for r in rows] == [
        ("D", "all"), ("D", "a"), ("D", "b"), ("K", "all"), ("K", "a"), ("K", "b")]
    calibrated, overconfident = rows[0], rows[3]
    assert calibrated["coverage_95"] == pytest.approx(0.95, abs=0.01)
    assert calibrated["rms_z"] == pytest.approx(1.0, abs=0.03) and calibrated["share_z_over_4"] < 0.001
    assert overconfident["coverage_95"] < 0.6 and overconfident["rms_z"] == pytest.approx(3.0, rel=0.05)
    assert overconfident["share_z_over_4"] > 0.1 and overconfident["max_abs_z"] > 8
    assert calibration_table(estimates, {}, truth) == []
