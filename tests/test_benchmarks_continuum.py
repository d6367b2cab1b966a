"""The continuum benchmark script, ``benchmarks/bench_continuum.py``, on a few hundred voxels."""

from __future__ import annotations

import pytest


def test_continuum_benchmark_writes_a_table_scored_against_the_bayes_posterior(tmp_path, benchmark_script):
    output = tmp_path / "continuum.md"
    benchmark_script("bench_continuum").main(["--snr", "20", "--n-voxels", "300", "--methods", "nlls", "--sigma-known",
                        "--output", str(output)])
    lines = [line for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    assert header[:6] == ["SNR", "seed", "method", "parameter", "voxels (true D)", "n"]
    by_method = {(row[2], row[3], row[4]): row for row in rows}
    oracle, nlls = by_method[("Bayes (true prior)", "K", "all")], by_method[("nlls", "K", "all")]
    ratio, rmse = header.index("/ Bayes"), header.index("RMSE")
    for parameter in ("D", "K"):  # each row's ratio is its RMSE over the Bayes RMSE of the same voxels
        for band in ("all", "D 0-1.2", "D >= 2.5"):
            method_row, bayes_row = by_method[("nlls", parameter, band)], by_method[("Bayes (true prior)", parameter, band)]
            assert float(method_row[ratio]) == pytest.approx(float(method_row[rmse]) / float(bayes_row[rmse]), rel=0.02)
    assert float(nlls[ratio]) > 1.0  # least squares cannot beat the posterior mean
    assert 0.85 < float(oracle[header.index("coverage ±1.96 std")]) <= 1.0
    assert nlls[header.index("coverage ±1.96 std")] == ""  # nlls reports no std
    assert sum(int(row[5]) for row in rows if row[2] == "nlls" and row[3] == "D" and row[4] != "all") == 300
    text = output.read_text(encoding="utf-8")
    assert "the methods are given σ" in text and "Machine:" in text


def test_continuum_benchmark_refuses_to_overwrite(tmp_path, benchmark_script):
    output = tmp_path / "continuum.md"
    output.write_text("kept", encoding="utf-8")
    with pytest.raises(SystemExit):
        benchmark_script("bench_continuum").parse_args(["--output", str(output)])
    assert output.read_text(encoding="utf-8") == "kept"
