"""The noise-map benchmark script, ``benchmarks/bench_noise_map.py``, on a small phantom crop."""

from __future__ import annotations


def test_noise_map_benchmark_marks_the_default_of_each_named_protocol(tmp_path, benchmark_script):
    output = tmp_path / "noise_map.md"
    benchmark_script("bench_noise_map").main(["--model", "ball_stick", "--protocols", "trace", "one_b0", "--seeds", "1",
                                              "--crop", "12", "14", "10", "--output", str(output)])
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("| trace") or line.startswith("| one_b0")]
    defaults = {row[0]: row[1] for row in rows if row[-1] == "default"}
    assert defaults == {"trace (1 b=0, 7)": "pca_local", "one_b0 (1 b=0, 61)": "fit_residual_local"}
    assert len(rows) == 18 and all(0.3 < float(row[5]) < 3.0 for row in rows)  # median ratios: maps of the right scale
