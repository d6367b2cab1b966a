"""The shared measuring and reporting pieces of the studies and benchmarks."""

from __future__ import annotations

import csv
import io
import gc
import mmap
import math
import time

import numpy as np
import pytest

from varmap.evaluation.runner import (
    Cost,
    MemoryMonitor,
    Stages,
    add_speed_ratios,
    emit_table,
    format_csv,
    machine_summary,
    markdown_table,
    measure,
    process_peak_rss_mb,
    speed_row,
)
from varmap.provenance import environment

ALLOCATION_MB = 64


def test_measure_times_the_block_without_memory_by_default():
    with measure() as cost:
        time.sleep(0.02)
    assert 0.02 <= cost.seconds < 5.0
    assert math.isnan(cost.peak_rss_mb) and math.isnan(cost.peak_gpu_mb)


def _touch_fresh_pages() -> None:
    """Make ALLOCATION_MB of new pages resident for a moment, then release them.

    An anonymous mapping is never served from memory the allocator already holds (a numpy array may be,
    after earlier tests freed large blocks), so the resident size rises by the full amount.
    """
    block = mmap.mmap(-1, ALLOCATION_MB * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1  # touched pages: resident
    time.sleep(0.05)  # a few samples of the polling thread
    block.close()


def test_memory_monitor_sees_an_allocation():
    gc.collect()  # garbage of earlier tests freed inside the block would offset the allocation
    with MemoryMonitor() as monitor:
        _touch_fresh_pages()
    assert monitor.peak_rss_mb >= 0.8 * ALLOCATION_MB


def test_measure_with_memory_fills_the_peak():
    gc.collect()
    with measure(memory=True) as cost:
        _touch_fresh_pages()
    assert cost.seconds > 0
    assert cost.peak_rss_mb >= 0.8 * ALLOCATION_MB


def test_process_peak_is_at_least_the_last_allocation():
    block = np.ones(ALLOCATION_MB * 2**20 // 8)
    assert process_peak_rss_mb() >= ALLOCATION_MB
    del block


def test_stages_sum_repeated_entries_in_order():
    stages = Stages()
    for _ in range(2):
        with stages("read"):
            time.sleep(0.01)
    with stages("fit"):
        pass
    assert list(stages.seconds) == ["read", "fit"]
    assert stages.seconds["read"] >= 0.02


def test_speed_rows_and_ratios():
    rows = [
        speed_row("dipy", 1000, 30, Cost(seconds=2.0, peak_rss_mb=100.0), {}),
        speed_row("nlls", 1000, 30, Cost(seconds=1.0, peak_rss_mb=50.0), {"prepare_s": 0.25, "infer_s": 0.5}),
    ]
    assert rows[1]["voxels_per_s"] == pytest.approx(1000.0)
    assert rows[1]["prepare_s"] == 0.25 and math.isnan(rows[1]["train_s"]) and math.isnan(rows[0]["infer_s"])
    add_speed_ratios(rows, "dipy")
    assert rows[1]["time_ratio"] == pytest.approx(0.5) and rows[1]["memory_ratio"] == pytest.approx(0.5)
    assert rows[0]["time_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference 'vae'"):
        add_speed_ratios(rows, "vae")


def test_memory_ratio_is_nan_without_a_reference_peak():
    rows = [speed_row(m, 10, 3, Cost(seconds=1.0), {}) for m in ("a", "b")]
    add_speed_ratios(rows, "a")
    assert math.isnan(rows[1]["memory_ratio"]) and rows[1]["time_ratio"] == pytest.approx(1.0)


def test_markdown_table_lines_and_width_check():
    lines = markdown_table(["method", "time (s)"], [["nlls", "1.0"], ["vae", "2.0"]])
    assert lines == ["| method | time (s) |", "|---|---|", "| nlls | 1.0 |", "| vae | 2.0 |"]
    with pytest.raises(ValueError, match="3 cells but the header has 2"):
        markdown_table(["a", "b"], [["1", "2", "3"]])


def test_csv_keeps_the_columns_in_order_and_ignores_other_keys():
    text = format_csv([{"b": 2.5, "a": "x", "extra": 1}, {"a": "y"}], ("a", "b"))
    assert text.startswith("a,b\r\n")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows == [{"a": "x", "b": "2.5"}, {"a": "y", "b": ""}]


def test_machine_summary_reads_the_environment():
    env = environment() | {"cpu_count": 7, "cuda": None, "torch_threads": 3}
    line = machine_summary(env)
    assert "7 CPUs" in line and "no GPU" in line and "(3 threads)" in line and env["dipy"] in line
    assert f"{environment()['cpu_count']} CPUs" in machine_summary()


def test_emit_table_prints_and_writes(tmp_path, capsys):
    output = tmp_path / "nested" / "table.md"
    emit_table("| a |\n|---|\n| µm² |", output)
    assert capsys.readouterr().out == "| a |\n|---|\n| µm² |\n"
    assert output.read_text(encoding="utf-8") == "| a |\n|---|\n| µm² |\n"
    emit_table("only printed\n\n", None)
    assert capsys.readouterr().out == "only printed\n"
