"""Accuracy rows of the simulation and phantom studies, on data with known errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varmap.evaluation.accuracy import (
    EDGE_GROUPS,
    PHANTOM_GROUPS,
    PhantomRegions,
    add_oracle_ratios,
    phantom_calibration_rows,
    phantom_rows,
    simulation_rows,
)


def _row(rows, parameter, group, key="cluster"):
    return next(r for r in rows if r["parameter"] == parameter and r[key] == group)


def test_simulation_rows_of_the_truth_are_exact(msdki_data):
    rows = simulation_rows(msdki_data, dict(msdki_data.params), msdki_data.n_voxels)
    present = {msdki_data.prior.cluster_names[k] for k in np.unique(msdki_data.labels)}
    assert {r["cluster"] for r in rows} == {"all", *present}
    assert all(r["rmse"] == 0.0 and r["bias"] == 0.0 and math.isnan(r["ratio_to_oracle"]) for r in rows)


def test_simulation_rows_compare_the_first_voxels_only(msdki_data):
    n = 50
    shifted = {name: value[:n] + 0.1 for name, value in msdki_data.params.items()}
    rows = simulation_rows(msdki_data, shifted, n)
    everything = _row(rows, "D", "all")
    assert everything["n"] == n
    assert everything["bias"] == pytest.approx(0.1) and everything["rmse"] == pytest.approx(0.1)


def test_oracle_ratios_divide_rmse_on_the_oracle_voxels(msdki_data):
    n = 100
    truth = msdki_data.params
    method = {name: value + 0.2 for name, value in truth.items()}
    oracle = {name: value[:n] + 0.1 for name, value in truth.items()}
    rows = simulation_rows(msdki_data, method, msdki_data.n_voxels)
    subset_rows = simulation_rows(msdki_data, {k: v[:n] for k, v in method.items()}, n)
    add_oracle_ratios(rows, subset_rows, simulation_rows(msdki_data, oracle, n))
    assert _row(rows, "D", "all")["ratio_to_oracle"] == pytest.approx(2.0)
    assert _row(rows, "K", "all")["ratio_to_oracle"] == pytest.approx(2.0)


def _regions(n: int) -> PhantomRegions:
    # voxels 0-3 pure WM, 4-5 GM, 6-7 partial volume; odd voxels on a boundary; the first 6 WM-dominant
    purity = np.array([0, 0, 0, 0, 1, 1, 3, 3])[:n]
    edge = (np.arange(n) % 2).astype(np.int8)
    wm_dominant = np.arange(n) < 6
    return PhantomRegions(purity=purity, edge=edge, wm_dominant=wm_dominant)


def test_phantom_rows_by_purity_and_edge_with_edge_ratio():
    truth = {"D": np.ones(8), "K": np.zeros(8)}
    errors = np.array([0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.3])  # boundary voxels three times worse
    rows = phantom_rows({"D": truth["D"] + errors, "K": truth["K"]}, truth, ("D", "K"), _regions(8))
    groups = [r["group"] for r in rows if r["parameter"] == "D"]
    assert groups == ["all", PHANTOM_GROUPS[0], PHANTOM_GROUPS[1], PHANTOM_GROUPS[3], *EDGE_GROUPS]
    assert _row(rows, "D", "WM", "group")["n"] == 4
    assert _row(rows, "D", "interior", "group")["rmse"] == pytest.approx(0.1)
    assert _row(rows, "D", "boundary", "group")["edge_ratio"] == pytest.approx(3.0)
    assert math.isnan(_row(rows, "D", "WM", "group")["edge_ratio"])
    assert math.isnan(_row(rows, "K", "boundary", "group")["edge_ratio"])  # interior RMSE 0: no ratio
    assert not any(r["parameter"] == "n" for r in rows)


def test_phantom_rows_give_fibre_angles_in_white_matter():
    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    truth = {"f": np.zeros(8), "n": np.tile(x, (8, 1))}
    estimate = np.tile(x, (8, 1))
    estimate[0] = y  # 90° off, in pure white matter
    estimate[5] = -x  # the same fibre, in grey matter that is WM-dominant
    rows = phantom_rows({"f": truth["f"], "n": estimate}, truth, ("f",), _regions(8))
    white_matter, dominant = _row(rows, "n", "WM", "group"), _row(rows, "n", "WM-dominant", "group")
    assert white_matter["n"] == 4 and white_matter["angular_error_deg"] == pytest.approx(90.0 / 4)
    assert dominant["n"] == 6 and dominant["angular_error_deg"] == pytest.approx(90.0 / 6)
    assert math.isnan(white_matter["rmse"]) and math.isnan(white_matter["edge_ratio"])


def test_phantom_calibration_rows_score_the_stds_per_purity_and_edge_group():
    """z = error / std of 0.5, 3, 1, 5 in pure WM (even voxels interior, odd on a boundary), 1 in GM and
    partial volume; K has no std and is left out, as is a parameter the method does not report."""
    truth = {"D": np.ones(8), "K": np.zeros(8), "f": np.zeros(8)}
    std = {"D": np.full(8, 0.1)}
    errors = 0.1 * np.array([0.5, 3.0, 1.0, 5.0, 1.0, -1.0, 1.0, -1.0])
    rows = phantom_calibration_rows({"D": truth["D"] + errors, "K": truth["K"]}, std, truth, ("D", "K", "f"), _regions(8))
    assert {r["parameter"] for r in rows} == {"D"}
    assert [r["group"] for r in rows] == ["all", PHANTOM_GROUPS[0], PHANTOM_GROUPS[1], PHANTOM_GROUPS[3], *EDGE_GROUPS]
    white_matter = _row(rows, "D", "WM", "group")
    assert white_matter["n"] == 4 and white_matter["coverage_95"] == pytest.approx(0.5)
    assert white_matter["rms_z"] == pytest.approx(np.sqrt((0.25 + 9.0 + 1.0 + 25.0) / 4))
    assert white_matter["max_abs_z"] == pytest.approx(5.0) and white_matter["share_z_over_4"] == pytest.approx(0.25)
    assert _row(rows, "D", "interior", "group")["coverage_95"] == 1.0
    assert _row(rows, "D", "boundary", "group")["coverage_95"] == pytest.approx(0.5)
    assert _row(rows, "D", "all", "group")["coverage_95"] == pytest.approx(6 / 8)
