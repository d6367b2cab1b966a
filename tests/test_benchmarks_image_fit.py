"""The whole-brain benchmark script, ``benchmarks/bench_image_fit.py``, on a tiny phantom crop."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

COLUMNS = [
    "method", "device", "voxels", "read (s)", "train (s)", "infer (s)", "write (s)", "other (s)", "total (s)",
    "fit (voxels/s)", "inference (voxels/s)", "peak RSS (MB)", "time / dipy", "memory / dipy", "memory bound (MB)",
    "within bound", "D err WM", "D err GM", "K err WM", "K err GM",
]


@pytest.fixture(scope="module")
def bench(benchmark_script) -> ModuleType:
    """The script as a module; its children run it by its own path."""
    return benchmark_script("bench_image_fit")


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the one Markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_small_phantom_run_reports_every_column_and_adds_up(bench, tmp_path, capsys):
    output = tmp_path / "image_fit.md"
    argv = ["--phantom", "4", "--crop", "12", "12", "8", "--methods", "nlls", "vae", "--n-epochs", "2",
            "--workdir", str(tmp_path / "work"), "--output", str(output)]
    assert bench.main(argv) == 0

    printed = capsys.readouterr().out
    assert output.read_text(encoding="utf-8") == printed
    assert printed.startswith("Digital brain phantom (MS-DKI, crop 12x12x8): grid 12x12x8,")
    assert "SNR 10, seed 0" in printed and "Machine:" in printed and "varmap " in printed
    header, body = table_rows(printed)
    assert header == COLUMNS
    assert [row[0] for row in body] == ["varmap nlls", "varmap vae", bench.DIPY]
    assert all(len(row) == len(header) for row in body)

    record = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["configuration"]["phantom"] == 4 and record["configuration"]["n_epochs"] == 2
    assert record["data"]["n_voxels"] == 12 * 12 * 8 and record["data"]["n_volumes"] == 288
    bound = 1024 + 2 * 12 * 12 * 8 * 288 * 4 / 2**20
    for row in record["rows"]:
        assert min(row[f"{stage}_s"] for stage in ("read", "infer", "write", "other")) >= 0
        if row["method"].startswith("varmap"):
            # the stages are the fit's own timings, as recorded in its fit.json; the total is the child's wall
            timings = json.loads((Path(row["output"]) / "fit.json").read_text(encoding="utf-8"))["timings"]
            assert (row["read_s"], row["infer_s"]) == (timings["read_s"], timings["fit_infer_s"])
            assert row["train_s"] == timings.get("fit_train_s", 0.0)
            assert row["total_s"] >= timings["total_s"] > 0
        assert row["peak_rss_mb"] > 0 and row["memory_bound_mb"] == pytest.approx(bound)
        assert row["within_bound"] == (row["peak_rss_mb"] <= bound)
        assert all(math.isfinite(row[f"{p}_error_{g}"]) for p in ("D", "K") for g in ("WM", "GM"))
    nlls, vae, dipy = record["rows"]
    assert nlls["train_s"] < 0.01 and vae["train_s"] > 0.01 and dipy["train_s"] == 0
    assert dipy["time_ratio"] == 1 and dipy["memory_ratio"] == 1
    assert nlls["D_error_WM"] < 0.1  # the maps are the fitted ones, compared with the phantom's truth


def test_varmap_stages_take_read_train_infer_and_write_with_the_figure(bench):
    timings = {"check_s": 0.1, "read_s": 1.0, "fit_s": 5.0, "fit_prepare_s": 0.5, "fit_train_s": 3.0,
               "fit_infer_s": 1.5, "write_s": 0.4, "figure_s": 0.6, "total_s": 7.5}
    stages = bench.varmap_stages(timings)
    assert stages == {"read": 1.0, "train": 3.0, "infer": 1.5, "write": 1.0}
    row = bench.stage_row("varmap x", "cpu", 10, stages, 8.0, Path("out"))
    assert row["other_s"] == pytest.approx(8.0 - 6.5)


def test_existing_output_needs_force(bench, tmp_path):
    output = tmp_path / "table.md"
    output.with_suffix(".json").write_text("{}")
    with pytest.raises(SystemExit):
        bench.parse_args(["--output", str(output)])
    assert bench.parse_args(["--output", str(output), "--force"]).force
    with pytest.raises(SystemExit):
        bench.parse_args(["--crop", "4", "4", "4"])  # a crop is of the phantom
