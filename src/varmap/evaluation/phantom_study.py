"""The phantom study: every method on the digital brain phantom, for accuracy per tissue and speed.

:func:`run_phantom_study` builds a phantom (:func:`varmap.phantom.make_phantom`), fits its brain
voxels with every estimator (and, for MS-DKI, with dipy's ``MeanDiffusionKurtosisModel``), and
reports

- RMSE and bias of every parameter in pure white matter, grey matter and CSF (a tissue fraction of
  at least ``purity``), in partial-volume voxels (no tissue that pure), and near tissue boundaries
  against inside tissues (edge sharpness);
- time (total, and the estimators' prepare / train / inference stages), voxels per second and peak
  memory of each method, as ratios to a reference (dipy for MS-DKI, else the first method).

At full size (1.25 mm, about a million brain voxels) it is the whole-brain speed benchmark.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..estimators import ESTIMATORS, get_estimator
from ..protocol import Protocol
from ..phantom import PARTIAL_VOLUME, TISSUES, Phantom, boundary_distance, make_phantom
from ..results import FitResult
from ..signal_models import get_signal_model
from .metrics import angular_error_deg, error_table

__all__ = [
    "DIPY_METHOD",
    "PhantomStudyResult",
    "run_phantom_study",
    "fit_dipy_msdki",
    "format_phantom_markdown",
    "MEMORY_NOTE",
]

logger = logging.getLogger("varmap")

#: Name of dipy's MS-DKI fit in the tables.
DIPY_METHOD = "dipy_msdki"

#: What the ``peak_rss_mb`` column measures.
MEMORY_NOTE = (
    "peak_rss_mb: highest resident set size of the process during the fit minus the resident size at "
    "its start, sampled every 5 ms from /proc/self/statm (Linux; elsewhere the growth of "
    "getrusage's ru_maxrss, which only shows a new process high-water mark).  It counts numpy and "
    "torch CPU memory and the allocators' cached pages, not the input signals (allocated before).  "
    "peak_gpu_mb: torch.cuda.max_memory_allocated during the fit (CUDA only)."
)

_GROUPS = (*TISSUES, PARTIAL_VOLUME)
_EDGE_GROUPS = ("interior", "boundary")
_ACCURACY_COLUMNS = (
    "method", "parameter", "group", "n", "n_nan", "rmse", "bias", "angular_error_deg", "edge_ratio", "time_s",
)
_SPEED_COLUMNS = (
    "method", "n_voxels", "n_measurements", "total_s", "prepare_s", "train_s", "infer_s", "voxels_per_s",
    "peak_rss_mb", "peak_gpu_mb", "time_ratio", "memory_ratio",
)


@dataclass
class PhantomStudyResult:
    """What :func:`run_phantom_study` measured.

    Attributes
    ----------
    rows : list of dict
        Accuracy: one row per method, parameter and group (``"all"``, ``"WM"``, ``"GM"``, ``"CSF"``,
        ``"PV"``, ``"interior"``, ``"boundary"``; for the fibre direction ``"n"``: ``"WM"`` and
        ``"WM-dominant"``) with keys of ``_ACCURACY_COLUMNS``.  ``edge_ratio`` (boundary rows) is the
        boundary RMSE divided by the interior RMSE.
    speed : list of dict
        One row per method: seconds, voxels per second, peak memory, and ratios to ``reference``.
    reference : str
        Method the speed ratios divide by.
    phantom : Phantom
    estimates : dict
        ``estimates[method]`` maps each parameter to its (n_voxels,) estimates in mask order.
    fits : dict of FitResult
        The varmap estimators' results.
    config : dict
        Settings, sizes and machine (written as ``phantom_study.json``).
    files : list of Path
    """

    rows: list[dict]
    speed: list[dict]
    reference: str
    phantom: Phantom
    estimates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    fits: dict[str, FitResult] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def run_phantom_study(
    *,
    model: str = "msdki",
    voxel_size: float = 1.25,
    snr: float = 10.0,
    methods: Sequence[str] = ("nlls", "selfsup", "vae", "gmvae"),
    seed: int = 0,
    crop: Sequence[int] | Sequence[slice] | None = None,
    output_dir: str | PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    include_dipy: bool = True,
    method_options: dict[str, dict] | None = None,
    device: str | None = None,
    purity: float = 0.9,
    edge_voxels: float = 2.0,
    phantom: Phantom | None = None,
) -> PhantomStudyResult:
    """Fit the brain phantom with every method; accuracy per tissue, edge sharpness, time and memory.

    Parameters
    ----------
    model : {"msdki", "ball_stick"}
    voxel_size : float
        Phantom voxel size in mm (1.25 full HCP-like size, about a million brain voxels; 2 is 4× fewer).
    snr : float
        b=0 SNR of pure white matter.
    methods : sequence of str
        Registered estimators.
    seed : int
        Seed of the phantom and of every estimator.
    crop : (nx, ny, nz) or slices, optional
        Study a box of the phantom (see :func:`~varmap.phantom.make_phantom`).
    output_dir : path, optional
        Folder for ``results.csv``, ``speed.csv``, ``results.md``, ``phantom_study.json``,
        ``maps.png`` and (with gmvae) ``clusters.png``; written atomically.  ``None`` writes nothing.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        Progress bars of the estimators.
    include_dipy : bool
        Also fit dipy's ``MeanDiffusionKurtosisModel`` (MS-DKI only; ignored for other models).
    method_options : dict, optional
        Extra keyword arguments per method, e.g. ``{"gmvae": {"n_epochs": 50}}``.
    device : str, optional
        Device of every estimator (``None``: each estimator's default, CUDA when available).
    purity : float
        Tissue fraction from which a voxel counts as pure tissue (> 0.5).
    edge_voxels : float
        Voxels at most this far (voxel units) from a change of the dominant tissue, or from the brain
        surface, are ``"boundary"``; the others ``"interior"``.
    phantom : Phantom, optional
        Use this phantom instead of building one; ``model`` must match it, and ``voxel_size``,
        ``snr``, ``crop`` are then taken from it (``seed`` still seeds the estimators).

    Returns
    -------
    PhantomStudyResult

    Raises
    ------
    FileExistsError
        If ``output_dir`` exists and ``force`` is false.
    ValueError
        On an unknown method or model.

    Notes
    -----
    Speed: each method is timed from the raw signals to the maps (``total_s``); the estimators'
    ``timings`` split that into ``prepare_s`` (normalisation, noise estimate), ``train_s`` (network
    training; 0 for voxelwise fits) and ``infer_s``.  See :data:`MEMORY_NOTE` for the memory columns.
    Methods run one after the other in this process, on the same float32 signals.
    """
    from ..io import check_output_dir

    unknown = [method for method in methods if method not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(ESTIMATORS)}.")
    if phantom is not None and phantom.model != model:
        raise ValueError(f"the phantom was built for {phantom.model!r} but model={model!r}; pass model={phantom.model!r}.")
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    method_options = dict(method_options or {})
    started = time.perf_counter()
    if phantom is None:
        logger.info("phantom study: building a %s phantom at %g mm", model, voxel_size)
        phantom = make_phantom(model=model, voxel_size=voxel_size, snr=snr, seed=seed, crop=crop, image=False)
    signals = phantom.signals
    truth = phantom.truth_in_mask()
    groups = phantom.groups(threshold=purity)[phantom.mask]
    distance = boundary_distance(phantom.labels)[phantom.mask]
    edge = (distance <= edge_voxels).astype(np.int8)  # 0 interior, 1 boundary
    wm_dominant = phantom.labels[phantom.mask] == TISSUES.index("WM")
    signal_model = get_signal_model(phantom.model, phantom.protocol)
    names = signal_model.parameter_names

    result = PhantomStudyResult(rows=[], speed=[], reference="", phantom=phantom)
    runs = list(methods)
    if include_dipy and phantom.model == "msdki":
        runs.insert(0, DIPY_METHOD)
    for method in runs:
        logger.info("phantom study: %s on %d voxels", method, signals.shape[0])
        with _MemoryMonitor() as memory:
            t0 = time.perf_counter()
            if method == DIPY_METHOD:
                params = fit_dipy_msdki(signals, phantom.protocol)
                timings: dict[str, float] = {}
            else:
                options = dict(method_options.get(method, {}))
                if device is not None:
                    options.setdefault("device", device)
                estimator = get_estimator(method, signal_model, seed=seed, progress=progress, **options)
                fit = estimator.fit(signals)
                result.fits[method] = fit
                params = fit.params
                timings = dict(fit.timings)
            seconds = time.perf_counter() - t0
        result.estimates[method] = params
        result.rows.extend(_accuracy_rows(method, params, truth, names, groups, edge, wm_dominant, seconds))
        result.speed.append(
            {
                "method": method,
                "n_voxels": int(signals.shape[0]),
                "n_measurements": int(signals.shape[1]),
                "total_s": seconds,
                "prepare_s": timings.get("prepare_s", float("nan")),
                "train_s": timings.get("train_s", float("nan")),
                "infer_s": timings.get("infer_s", float("nan")),
                "voxels_per_s": signals.shape[0] / seconds if seconds > 0 else float("inf"),
                "peak_rss_mb": memory.peak_rss_mb,
                "peak_gpu_mb": memory.peak_gpu_mb,
            }
        )
        logger.info("phantom study: %s in %.1f s, peak +%.0f MB", method, seconds, memory.peak_rss_mb)
    result.reference = _add_speed_ratios(result.speed)
    result.config = {
        "varmap_version": __version__,
        "model": phantom.model,
        "voxel_size_mm": phantom.voxel_size,
        "snr": phantom.snr,
        "sigma": phantom.sigma,
        "seed": seed,
        "phantom_seed": phantom.seed,
        "crop": phantom.config.get("crop"),
        "shape": list(phantom.shape),
        "n_brain_voxels": phantom.n_voxels,
        "n_measurements": phantom.protocol.n_measurements,
        "group_counts": {name: int((groups == k).sum()) for k, name in enumerate(_GROUPS)},
        "boundary_voxels": int(edge.sum()),
        "purity": purity,
        "edge_voxels": edge_voxels,
        "methods": runs,
        "method_options": method_options,
        "device": device,
        "speed_reference": result.reference,
        "memory_note": MEMORY_NOTE,
        "truth_definition": "volume-fraction-weighted mean of the tissue parameters",
        "machine": _machine(),
        "total_time_s": time.perf_counter() - started,
    }
    if output_dir is not None:
        result.files = _write_outputs(result, Path(output_dir), force=force)
    return result


def fit_dipy_msdki(signals: np.ndarray, protocol: Protocol) -> dict[str, np.ndarray]:
    """dipy's mean-signal DKI fit (weighted least squares on the log of the powder-averaged signals).

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
    protocol : Protocol

    Returns
    -------
    dict of ndarray
        ``"D"`` in µm²/ms (dipy's mm²/s × 1000, since dipy is given b in s/mm²) and ``"K"``, shape
        (n_voxels,); non-finite values of failed voxels are left as dipy returns them.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.msdki import MeanDiffusionKurtosisModel

    gtab = gradient_table(
        np.asarray(protocol.bvals) * 1000.0,
        bvecs=np.asarray(protocol.bvecs),
        b0_threshold=float(protocol.b0_threshold) * 1000.0,
    )
    fit = MeanDiffusionKurtosisModel(gtab).fit(np.asarray(signals))
    return {"D": np.asarray(fit.msd, dtype=np.float64) * 1000.0, "K": np.asarray(fit.msk, dtype=np.float64)}


# ---------------------------------------------------------------------------------------- metrics
def _accuracy_rows(
    method: str,
    params: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    names: Sequence[str],
    groups: np.ndarray,
    edge: np.ndarray,
    wm_dominant: np.ndarray,
    seconds: float,
) -> list[dict]:
    scalars = {name: params[name] for name in names if name in params}
    true = {name: truth[name] for name in scalars}
    by_tissue = error_table(scalars, true, groups, _GROUPS)
    by_edge = [row for row in error_table(scalars, true, edge, _EDGE_GROUPS) if row["cluster"] != "all"]
    rows = []
    for row in by_tissue + by_edge:
        row["group"] = row.pop("cluster")
        rows.append(row)
    interior = {r["parameter"]: r["rmse"] for r in rows if r["group"] == "interior"}
    for row in rows:
        row["edge_ratio"] = float("nan")
        if row["group"] == "boundary" and interior.get(row["parameter"], 0) > 0:
            row["edge_ratio"] = row["rmse"] / interior[row["parameter"]]
    if "n" in params and "n" in truth:
        for group, selected in (("WM", groups == TISSUES.index("WM")), ("WM-dominant", wm_dominant)):
            angles = angular_error_deg(params["n"][selected], truth["n"][selected])
            finite = np.isfinite(angles)
            rows.append(
                {
                    "parameter": "n",
                    "group": group,
                    "n": int(selected.sum()),
                    "n_nan": int((~finite).sum()),
                    "rmse": float("nan"),
                    "bias": float("nan"),
                    "angular_error_deg": float(angles[finite].mean()) if finite.any() else float("nan"),
                    "edge_ratio": float("nan"),
                }
            )
    for row in rows:
        row.update(method=method, time_s=seconds)
    return rows


def _add_speed_ratios(speed: list[dict]) -> str:
    methods = [row["method"] for row in speed]
    reference = DIPY_METHOD if DIPY_METHOD in methods else ("nlls" if "nlls" in methods else methods[0])
    ref = next(row for row in speed if row["method"] == reference)
    for row in speed:
        row["time_ratio"] = row["total_s"] / ref["total_s"] if ref["total_s"] > 0 else float("nan")
        row["memory_ratio"] = row["peak_rss_mb"] / ref["peak_rss_mb"] if ref["peak_rss_mb"] > 0 else float("nan")
    return reference


class _MemoryMonitor:
    """Peak resident memory (and CUDA memory) above the level at entry; see :data:`MEMORY_NOTE`."""

    interval_s = 0.005

    def __enter__(self) -> "_MemoryMonitor":
        self._statm = Path("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._use_statm = self._statm.exists()
        self._start_maxrss = _maxrss_bytes()
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

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._use_statm:
            self._thread.join()
            self._peak = max(self._peak, self._rss())
        else:
            self._peak = max(self._peak, _maxrss_bytes())
        self.peak_rss_mb = max(self._peak - self._start, 0) / 2**20
        self.peak_gpu_mb = float("nan")
        if self._cuda:
            torch.cuda.synchronize()
            self.peak_gpu_mb = max(torch.cuda.max_memory_allocated() - self._cuda_start, 0) / 2**20


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def _machine() -> dict:
    from .study import machine_description

    return machine_description()


# ---------------------------------------------------------------------------------------- tables
def format_phantom_markdown(result: PhantomStudyResult) -> str:
    """Markdown report: set-up, accuracy per parameter and tissue, edge sharpness, speed, clusters."""
    config = result.config
    counts = config.get("group_counts", {})
    lines = [
        f"## Brain phantom study: {config.get('model')}",
        "",
        f"Voxel size {config.get('voxel_size_mm'):g} mm, grid {' x '.join(map(str, config.get('shape', [])))}"
        + (f" (crop {config['crop']})" if config.get("crop") else " (whole brain)")
        + f", {config.get('n_brain_voxels')} brain voxels x {config.get('n_measurements')} measurements; "
        f"b=0 SNR of white matter {config.get('snr'):g} (sigma {config.get('sigma'):g}).",
        f"Groups: pure (fraction >= {config.get('purity')}) "
        + ", ".join(f"{name} {counts.get(name, 0)}" for name in _GROUPS)
        + f"; boundary (<= {config.get('edge_voxels'):g} voxels from a tissue change) {config.get('boundary_voxels')}.",
        "Truth of a mixed voxel: volume-fraction-weighted mean of its tissues' parameters.",
        "",
        "### Accuracy: RMSE / bias",
        "",
    ]
    parameters = list(dict.fromkeys(r["parameter"] for r in result.rows))
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    for parameter in parameters:
        rows = [r for r in result.rows if r["parameter"] == parameter]
        groups = list(dict.fromkeys(r["group"] for r in rows))
        if parameter == "n":
            header = ["method", *[f"angle (deg) {g}" for g in groups]]
        else:
            header = ["method", *groups, "boundary / interior RMSE"]
        lines += [f"**{parameter}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            cells = {r["group"]: r for r in rows if r["method"] == method}
            if not cells:
                continue
            line = [method]
            for group in groups:
                r = cells.get(group)
                if r is None:
                    line.append("")
                elif parameter == "n":
                    line.append(f"{r['angular_error_deg']:.2f}")
                else:
                    line.append(f"{r['rmse']:.4f} / {r['bias']:+.4f}")
            if parameter != "n":
                ratio = cells.get("boundary", {}).get("edge_ratio", float("nan"))
                line.append(f"{ratio:.2f}")
            lines.append("| " + " | ".join(line) + " |")
        lines.append("")
    lines += [
        f"### Speed and memory (ratios to {result.reference})",
        "",
        "| method | voxels | total (s) | prepare (s) | train (s) | infer (s) | voxels/s | peak RSS (MB) | "
        "time ratio | memory ratio |",
        "|" + "---|" * 10,
    ]
    for row in result.speed:
        lines.append(
            f"| {row['method']} | {row['n_voxels']} | {row['total_s']:.2f} | {_num(row['prepare_s'])} | "
            f"{_num(row['train_s'])} | {_num(row['infer_s'])} | {row['voxels_per_s']:.0f} | "
            f"{row['peak_rss_mb']:.0f} | {row['time_ratio']:.2f} | {_num(row['memory_ratio'])} |"
        )
    lines += ["", MEMORY_NOTE, ""]
    table = _cluster_table(result)
    if table:
        lines += table
    return "\n".join(lines)


def _num(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.2f}"


def _cluster_table(result: PhantomStudyResult) -> list[str]:
    lines: list[str] = []
    groups = result.phantom.groups(threshold=result.config.get("purity", 0.9))[result.phantom.mask]
    for method, fit in result.fits.items():
        clusters = fit.clusters
        if clusters is None:
            continue
        components = sorted(int(c) for c in np.unique(clusters) if c >= 0)
        lines += [
            f"### {method} clusters against tissue (share of each group's voxels)",
            "",
            "| group | " + " | ".join(f"cluster {c}" for c in components) + " |",
            "|" + "---|" * (len(components) + 1),
        ]
        for k, name in enumerate(_GROUPS):
            in_group = groups == k
            if not in_group.any():
                continue
            shares = [np.mean(clusters[in_group] == c) for c in components]
            lines.append(f"| {name} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------- files
def _write_outputs(result: PhantomStudyResult, output_dir: Path, *, force: bool) -> list[Path]:
    from ..io import atomic_output_dir

    names = ["results.csv", "speed.csv", "results.md", "phantom_study.json", "maps.png"]
    with atomic_output_dir(output_dir, force=force) as staging:
        _write_csv(staging / "results.csv", result.rows, _ACCURACY_COLUMNS)
        _write_csv(staging / "speed.csv", result.speed, _SPEED_COLUMNS)
        (staging / "results.md").write_text(format_phantom_markdown(result))
        (staging / "phantom_study.json").write_text(json.dumps(result.config, indent=2))
        _maps_figure(result, staging / "maps.png")
        clustered = {m: fit for m, fit in result.fits.items() if fit.clusters is not None}
        if clustered:
            _clusters_figure(result.phantom, clustered, staging / "clusters.png")
            names.append("clusters.png")
    return [output_dir / name for name in names]


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _mid_slice(phantom: Phantom, values: np.ndarray) -> np.ndarray:
    """Axial mid-slice (transposed for display) of per-voxel values in mask order; NaN outside."""
    volume = np.full(phantom.shape, np.nan)
    volume[phantom.mask] = values
    return volume[:, :, phantom.shape[2] // 2].T


def _maps_figure(result: PhantomStudyResult, path: Path, dpi: int = 100) -> Path:
    """Rows: methods; columns: truth / estimate / error of each scalar parameter, axial mid-slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    phantom = result.phantom
    truth = phantom.truth_in_mask()
    names = list(get_signal_model(phantom.model, phantom.protocol).parameter_names)
    methods = list(result.estimates)
    n_cols = 3 * len(names)
    aspect = phantom.shape[1] / max(phantom.shape[0], 1)
    figure = Figure(figsize=(2.2 * n_cols, 2.2 * aspect * len(methods) + 0.8), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(methods), n_cols, squeeze=False)
    for j, name in enumerate(names):
        true_slice = _mid_slice(phantom, truth[name])
        low, high = np.nanpercentile(true_slice, [1, 99]) if np.isfinite(true_slice).any() else (0.0, 1.0)
        errors = {m: _mid_slice(phantom, result.estimates[m][name] - truth[name]) for m in methods}
        spread = np.nanpercentile(np.abs(np.concatenate([e[np.isfinite(e)] for e in errors.values()] or [np.zeros(1)])), 98)
        spread = float(spread) if np.isfinite(spread) and spread > 0 else 1.0
        for i, method in enumerate(methods):
            panels = (
                (true_slice, "viridis", low, high, f"{name} truth"),
                (_mid_slice(phantom, result.estimates[method][name]), "viridis", low, high, f"{name} {method}"),
                (errors[method], "RdBu_r", -spread, spread, f"{name} error"),
            )
            for k, (image, cmap, vmin, vmax, title) in enumerate(panels):
                ax = axes[i, 3 * j + k]
                shown = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=8)
                if i == len(methods) - 1 or k == 2:
                    figure.colorbar(shown, ax=ax, shrink=0.7)
    figure.suptitle(
        f"{phantom.model} phantom, {phantom.voxel_size:g} mm, SNR {phantom.snr:g}: axial slice {phantom.shape[2] // 2} "
        "(radiological display)",
        fontsize=9,
    )
    figure.savefig(path, dpi=dpi)
    return path


def _clusters_figure(phantom: Phantom, fits: dict[str, FitResult], path: Path, dpi: int = 100) -> Path:
    """Dominant tissue next to each mixture model's most probable component, axial mid-slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    panels = [("dominant tissue (0 WM, 1 GM, 2 CSF)", phantom.labels[phantom.mask].astype(float), 3)]
    for method, fit in fits.items():
        probs = fit.cluster_probs
        panels.append((f"{method} cluster", fit.clusters.astype(float), probs.shape[1]))
    figure = Figure(figsize=(3.2 * len(panels), 3.4), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for ax, (title, values, n_classes) in zip(axes, panels):
        image = _mid_slice(phantom, np.where(values >= 0, values, np.nan))
        cmap = ListedColormap([colours[k % len(colours)] for k in range(max(n_classes, 1))])
        shown = ax.imshow(image, origin="lower", cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, interpolation="nearest")
        figure.colorbar(shown, ax=ax, shrink=0.7, ticks=range(n_classes))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.savefig(path, dpi=dpi)
    return path
