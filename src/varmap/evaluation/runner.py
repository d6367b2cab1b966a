"""What every study and benchmark measures and reports: wall time, peak memory, machine, tables.

The simulation study (:mod:`~varmap.evaluation.study`), the phantom study
(:mod:`~varmap.evaluation.phantom_study`) and the scripts in ``benchmarks/`` all time their methods
with :func:`measure` (and :class:`Stages` for a split into named stages), read peak memory with
:class:`MemoryMonitor` or :func:`process_peak_rss_mb`, describe the machine with
:func:`machine_summary` (over :func:`varmap.provenance.environment`) and format their tables with
:func:`markdown_table` and :func:`format_csv`.  The formatters return text; the caller writes it
into the folder that :func:`varmap.io.atomic_output_dir` yields (JSON through :func:`varmap.io.save_json`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..provenance import environment

__all__ = [
    "MEMORY_NOTE",
    "Cost",
    "measure",
    "Stages",
    "MemoryMonitor",
    "process_peak_rss_mb",
    "speed_row",
    "add_speed_ratios",
    "machine_summary",
    "markdown_table",
    "format_csv",
    "emit_table",
]

#: What the ``peak_rss_mb`` and ``peak_gpu_mb`` columns measure (:class:`MemoryMonitor`).
MEMORY_NOTE = (
    "peak_rss_mb: highest resident set size of the process during the fit minus the resident size at "
    "its start, sampled every 5 ms from /proc/self/statm (Linux; elsewhere the growth of "
    "getrusage's ru_maxrss, which only shows a new process high-water mark).  It counts numpy and "
    "torch CPU memory and the allocators' cached pages, not the input signals (allocated before).  "
    "peak_gpu_mb: torch.cuda.max_memory_allocated during the fit (CUDA only)."
)

_MB = 2**20


# ---------------------------------------------------------------------------------------- time
@dataclass
class Cost:
    """Wall time and peak memory of one measured block.

    Attributes
    ----------
    seconds : float
        Wall time (``time.perf_counter``), s.
    peak_rss_mb : float
        Peak resident memory above the level at the start, MiB; NaN when memory was not monitored.
    peak_gpu_mb : float
        Peak CUDA memory allocated above the level at the start, MiB; NaN without CUDA or monitoring.
    """

    seconds: float = math.nan
    peak_rss_mb: float = math.nan
    peak_gpu_mb: float = math.nan


@contextmanager
def measure(*, memory: bool = False) -> Iterator[Cost]:
    """Time the block (and with ``memory``, its peak memory); the yielded :class:`Cost` is filled on exit.

    Parameters
    ----------
    memory : bool
        Also run a :class:`MemoryMonitor` around the block (a sampling thread; see :data:`MEMORY_NOTE`).

    Yields
    ------
    Cost

    Examples
    --------
    >>> with measure() as cost:
    ...     total = sum(range(1000))
    >>> cost.seconds >= 0
    True
    """
    cost = Cost()
    if not memory:
        start = time.perf_counter()
        yield cost
        cost.seconds = time.perf_counter() - start
        return
    with MemoryMonitor() as monitor:
        start = time.perf_counter()
        yield cost
        cost.seconds = time.perf_counter() - start
    cost.peak_rss_mb = monitor.peak_rss_mb
    cost.peak_gpu_mb = monitor.peak_gpu_mb


@dataclass
class Stages:
    """Wall time of named stages (read, fit, write, ...), summed over repeated entries.

    Attributes
    ----------
    seconds : dict of float
        Seconds of each stage, in the order the stages were first entered.

    Examples
    --------
    >>> stages = Stages()
    >>> with stages("read"):
    ...     pass
    >>> list(stages.seconds)
    ['read']
    """

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ---------------------------------------------------------------------------------------- memory
class MemoryMonitor:
    """Peak resident memory (and CUDA memory) above the level at entry; see :data:`MEMORY_NOTE`.

    Use as a context manager; after the block, ``peak_rss_mb`` and ``peak_gpu_mb`` (MiB; NaN without
    CUDA) hold the peaks.
    """

    interval_s = 0.005

    def __enter__(self) -> MemoryMonitor:
        import torch

        self._statm = Path("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._use_statm = self._statm.exists()
        self._start = self._rss()
        self._peak = self._start
        self._stop = threading.Event()
        if self._use_statm:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
        return self

    def _rss(self) -> int:
        if self._use_statm:
            try:
                return int(self._statm.read_text().split()[1]) * self._page
            except (OSError, IndexError, ValueError):
                return 0
        return _maxrss_bytes()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        import torch

        self._stop.set()
        if self._use_statm:
            self._thread.join()
            self._peak = max(self._peak, self._rss())
        else:
            self._peak = max(self._peak, _maxrss_bytes())
        self.peak_rss_mb = max(self._peak - self._start, 0) / _MB
        self.peak_gpu_mb = math.nan
        if self._cuda:
            torch.cuda.synchronize()
            self.peak_gpu_mb = max(torch.cuda.max_memory_allocated() - self._cuda_start, 0) / _MB


def process_peak_rss_mb() -> float:
    """Peak resident memory of this whole process since it started, MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own address space
    (``ru_maxrss`` also counts the parent's pages copied by ``fork`` before ``exec``).  Elsewhere:
    ``getrusage(RUSAGE_SELF).ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _maxrss_bytes() / _MB


def _maxrss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (the kernel reports KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


# ---------------------------------------------------------------------------------------- speed rows
def speed_row(method: str, n_voxels: int, n_measurements: int, cost: Cost, stages: dict[str, float]) -> dict:
    """One row of a speed table: seconds, stage seconds, voxels per second and peak memory.

    Parameters
    ----------
    method : str
    n_voxels, n_measurements : int
        Size of the fitted signals.
    cost : Cost
        Wall time and peak memory of the whole fit.
    stages : dict of float
        Stage seconds as estimators report them (``FitResult.timings``: ``prepare_s``, ``train_s``,
        ``infer_s``); missing stages read NaN.

    Returns
    -------
    dict
        ``method``, ``n_voxels``, ``n_measurements``, ``total_s``, ``prepare_s``, ``train_s``,
        ``infer_s``, ``voxels_per_s``, ``peak_rss_mb``, ``peak_gpu_mb``.
    """
    seconds = cost.seconds
    return {
        "method": method,
        "n_voxels": int(n_voxels),
        "n_measurements": int(n_measurements),
        "total_s": seconds,
        "prepare_s": stages.get("prepare_s", math.nan),
        "train_s": stages.get("train_s", math.nan),
        "infer_s": stages.get("infer_s", math.nan),
        "voxels_per_s": n_voxels / seconds if seconds > 0 else math.inf,
        "peak_rss_mb": cost.peak_rss_mb,
        "peak_gpu_mb": cost.peak_gpu_mb,
    }


def add_speed_ratios(rows: list[dict], reference: str) -> None:
    """Add ``time_ratio`` and ``memory_ratio``: each row's time and peak memory over the reference's.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`speed_row`, changed in place.
    reference : str
        Method of the row to divide by; a ratio is NaN where the reference's value is not positive.

    Raises
    ------
    ValueError
        If no row has method ``reference``.
    """
    ref = next((row for row in rows if row["method"] == reference), None)
    if ref is None:
        raise ValueError(f"no speed row of reference {reference!r}; rows are of {[r['method'] for r in rows]}.")
    for row in rows:
        row["time_ratio"] = row["total_s"] / ref["total_s"] if ref["total_s"] > 0 else math.nan
        row["memory_ratio"] = row["peak_rss_mb"] / ref["peak_rss_mb"] if ref["peak_rss_mb"] > 0 else math.nan


# ---------------------------------------------------------------------------------------- machine
def machine_summary(env: dict | None = None) -> str:
    """One line describing the machine and libraries, for the foot of a benchmark table.

    Parameters
    ----------
    env : dict, optional
        :func:`varmap.provenance.environment` of the process that ran the benchmark (default: this one).

    Returns
    -------
    str
    """
    env = environment() if env is None else env
    gpu = env.get("cuda") or "no GPU"
    return (
        f"{env['platform']}, {env['processor']}, {env['cpu_count']} CPUs, {gpu}; torch {env['torch']} "
        f"({env['torch_threads']} threads), Python {env['python']}, numpy {env['numpy']}, dipy {env['dipy']}"
    )


# ---------------------------------------------------------------------------------------- tables
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : sequence of sequence of str
        Formatted cells, one sequence per row, as many as ``header``.

    Returns
    -------
    list of str
        Header line, separator line, then one line per row.

    Raises
    ------
    ValueError
        If a row has a different number of cells than ``header``.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells but the header has {len(header)}: {list(row)}.")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def format_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text with a header line: ``columns`` of every row (other keys ignored, missing ones empty).

    Lines end in ``"\\r\\n"`` (the csv module's default); write the text with ``newline=""``.
    """
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def emit_table(text: str, output: Path | None) -> None:
    """Print a benchmark's table and, with ``output``, write it there too (UTF-8, parent folders made).

    Parameters
    ----------
    text : str
        The table (Markdown and notes).
    output : Path, optional
        File to write; ``None`` only prints.
    """
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
