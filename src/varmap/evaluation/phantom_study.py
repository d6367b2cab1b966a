"""The phantom study: every method on the digital brain phantom, for accuracy per tissue and speed.

:func:`run_phantom_study` builds a phantom (:func:`varmap.phantom.make_phantom`), fits its brain
voxels with every estimator (and with the model's baseline from other software,
:data:`~varmap.evaluation.baselines.BASELINES`: dipy's ``MeanDiffusionKurtosisModel`` for MS-DKI),
and reports

- RMSE and bias of every parameter in pure white matter, grey matter and CSF (a tissue fraction of
  at least ``purity``), in partial-volume voxels (no tissue that pure), and near tissue boundaries
  against inside tissues (edge sharpness; :mod:`~varmap.evaluation.accuracy`);
- time (total, and the estimators' prepare / train / inference stages), voxels per second and peak
  memory of each method, as ratios to a reference (the baseline when there is one, else nlls, else
  the first method; :mod:`~varmap.evaluation.runner`).

Every method is given the noise map that ``varmap fit`` estimates from the phantom's image
(:func:`~varmap.pipeline.noise_maps.default_method`), as a user's run of the image pipeline is, unless
``image_noise_map=False`` lets each estimate σ per voxel from its own signals (the Python API's default).

At full size (1.25 mm, about a million brain voxels) it is the whole-brain speed benchmark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from .. import __version__
from ..estimators import ESTIMATORS, get_estimator
from ..phantom import Phantom, make_phantom
from ..phantom.apparent import TRUTH_DEFINITION
from ..phantom.fields import NOISE_FIELD_RANGE
from ..pipeline.noise_maps import NOISE_MAP_METHODS, default_method, estimate_noise_map
from ..provenance import environment
from ..results import FitResult
from ..signal_models import SignalModel, get_signal_model
from .accuracy import PHANTOM_GROUPS, PhantomRegions, phantom_calibration_rows, phantom_regions, phantom_rows
from .baselines import BASELINES
from .runner import MEMORY_NOTE, Cost, add_speed_ratios, format_csv, markdown_table, measure, speed_row

__all__ = ["PhantomStudyResult", "run_phantom_study", "format_phantom_markdown"]

logger = logging.getLogger("varmap")

_ACCURACY_COLUMNS = (
    "method", "parameter", "group", "n", "n_nan", "rmse", "bias", "angular_error_deg", "edge_ratio", "time_s",
)
_CALIBRATION_COLUMNS = ("method", "parameter", "group", "n", "coverage_95", "rms_z", "max_abs_z", "share_z_over_4")
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
    calibration : list of dict
        For the methods that report standard deviations, one row per method, scalar parameter and group
        (as ``rows``) with keys of ``_CALIBRATION_COLUMNS``: the share of voxels whose truth lies within
        ±1.96 std of the estimate, the RMS of z = (estimate − truth) / std, its largest value and the
        share of voxels with |z| > 4.
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
    calibration: list[dict] = field(default_factory=list)
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
    noise_field: bool = False,
    image_noise_map: bool = True,
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
        ``maps.png``, (with vae or gmvae) ``calibration.csv`` and (with gmvae) ``clusters.png``; written
        atomically.  ``None`` writes nothing.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        Progress bars of the estimators.
    include_dipy : bool
        Also fit the model's baseline, dipy's ``MeanDiffusionKurtosisModel`` (MS-DKI only; ignored for
        models without a baseline).
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
        ``snr``, ``crop``, ``noise_field`` are then taken from it (``seed`` still seeds the estimators).
    noise_field : bool
        Build the phantom with a noise level that varies smoothly over the head (factor 1 to 3 over the
        brain, like a coil sensitivity / g-factor profile; :func:`~varmap.phantom.make_phantom`)
        instead of one noise level.  The methods are not told the noise levels.
    image_noise_map : bool
        Give every method (``sigma=``) the noise map that ``varmap fit`` estimates from the phantom's
        image by default (:func:`~varmap.pipeline.noise_maps.default_method`; its method, accuracy and
        time go into ``phantom_study.json``).  False: each method estimates σ per voxel from its own
        signals, as the Python API does without ``sigma``.  A ``sigma`` in ``method_options`` wins.

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
    training; 0 for voxelwise fits) and ``infer_s``.  See :data:`~varmap.evaluation.runner.MEMORY_NOTE`
    for the memory columns.  Methods run one after the other in this process, on the same float32
    signals.
    """
    from ..io import check_output_dir

    _check_request(model, methods, phantom)
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    method_options = dict(method_options or {})
    started = time.perf_counter()
    if phantom is None:
        logger.info("phantom study: building a %s phantom at %g mm", model, voxel_size)
        phantom = make_phantom(
            model=model, voxel_size=voxel_size, snr=snr, seed=seed, crop=crop, image=False, noise_field=noise_field
        )
    signals = phantom.signals
    truth = phantom.truth_in_mask()
    regions = phantom_regions(phantom, purity=purity, edge_voxels=edge_voxels)
    signal_model = get_signal_model(phantom.model, phantom.protocol)
    runs = _runs(phantom.model, methods, include_baseline=include_dipy)
    sigma, noise_map = _image_noise_map(phantom) if image_noise_map and set(runs) & set(ESTIMATORS) else (None, None)
    result = PhantomStudyResult(rows=[], speed=[], reference="", phantom=phantom)
    for method in runs:
        options = dict(method_options.get(method, {}))
        if device is not None:
            options.setdefault("device", device)
        if sigma is not None and method in ESTIMATORS:
            options.setdefault("sigma", sigma)
        params, fit, cost = _fit(method, signal_model, signals, seed=seed, progress=progress, options=options)
        result.estimates[method] = params
        if fit is not None:
            result.fits[method] = fit
        rows = phantom_rows(params, truth, signal_model.parameter_names, regions)
        result.rows.extend(row | {"method": method, "time_s": cost.seconds} for row in rows)
        if fit is not None and fit.std:
            calibration = phantom_calibration_rows(params, fit.std, truth, signal_model.parameter_names, regions)
            result.calibration.extend(row | {"method": method} for row in calibration)
        timings = {} if fit is None else dict(fit.timings)
        result.speed.append(speed_row(method, *signals.shape, cost, timings))
    result.reference = _speed_reference(runs)
    add_speed_ratios(result.speed, result.reference)
    result.config = _config(
        phantom, regions, seed=seed, purity=purity, edge_voxels=edge_voxels, runs=runs,
        method_options=method_options, device=device, reference=result.reference, noise_map=noise_map,
    )
    result.config["total_time_s"] = time.perf_counter() - started
    if output_dir is not None:
        result.files = _write_outputs(result, Path(output_dir), force=force)
    return result


# ---------------------------------------------------------------------------------------- steps
def _check_request(model: str, methods: Sequence[str], phantom: Phantom | None) -> None:
    """Refuse an unknown method, or a phantom built for another model, before any work."""
    unknown = [method for method in methods if method not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(ESTIMATORS)}.")
    if phantom is not None and phantom.model != model:
        raise ValueError(
            f"the phantom was built for {phantom.model!r} but model={model!r}; pass model={phantom.model!r}."
        )


def _runs(model: str, methods: Sequence[str], *, include_baseline: bool) -> list[str]:
    """Methods in the order they run: the model's baseline first (when asked for and there is one)."""
    runs = list(methods)
    if include_baseline and model in BASELINES:
        runs.insert(0, BASELINES[model][0])
    return runs


def _fit(
    method: str, signal_model: SignalModel, signals: np.ndarray, *, seed: int, progress: bool, options: dict
) -> tuple[dict[str, np.ndarray], FitResult | None, Cost]:
    """Estimates of one method (or the model's baseline), its FitResult (None for a baseline), time and memory.

    Parameters
    ----------
    method : str
        A registered estimator, or the name of the model's baseline (:data:`BASELINES`).
    signal_model : SignalModel
    signals : ndarray, shape (n_voxels, n_measurements)
    seed : int
    progress : bool
    options : dict
        Keyword arguments of the estimator.
    """
    logger.info("phantom study: %s on %d voxels", method, signals.shape[0])
    baseline = BASELINES.get(signal_model.name)
    fit = None
    with measure(memory=True) as cost:
        if baseline is not None and method == baseline[0]:
            params = baseline[1](signals, signal_model.protocol)
        else:
            fit = get_estimator(method, signal_model, seed=seed, progress=progress, **options).fit(signals)
            params = fit.params
    logger.info("phantom study: %s in %.1f s, peak +%.0f MB", method, cost.seconds, cost.peak_rss_mb)
    return params, fit, cost


def _image_noise_map(phantom: Phantom) -> tuple[np.ndarray, dict]:
    """The noise map ``varmap fit`` estimates from the phantom's image by default: σ of the brain voxels
    (mask order), and its record (method, parameters, seconds, error against the true σ)."""
    method = default_method(phantom.protocol)
    started = time.perf_counter()
    sigma = estimate_noise_map(phantom.dwi_image(), phantom.protocol, phantom.mask, method)[phantom.mask]
    seconds = time.perf_counter() - started
    error = np.abs(sigma / phantom.sigma_map[phantom.mask] - 1.0)
    logger.info("phantom study: noise map (%s) in %.1f s, median error %.1f %%", method, seconds,
                100 * np.median(error))
    return sigma, {
        "method": method,
        "parameters": NOISE_MAP_METHODS[method].parameters,
        "seconds": seconds,
        "median_relative_error": float(np.median(error)),
        "p95_relative_error": float(np.percentile(error, 95)),
    }


def _speed_reference(runs: Sequence[str]) -> str:
    """The baseline when it ran, else nlls when it ran, else the first method."""
    baselines = [name for name, _ in BASELINES.values() if name in runs]
    return baselines[0] if baselines else ("nlls" if "nlls" in runs else runs[0])


def _config(
    phantom: Phantom,
    regions: PhantomRegions,
    *,
    seed: int,
    purity: float,
    edge_voxels: float,
    runs: list[str],
    method_options: dict,
    device: str | None,
    reference: str,
    noise_map: dict | None,
) -> dict:
    """Settings, sizes and machine of the study (``phantom_study.json``), its total time left out;
    ``noise_map``: :func:`_image_noise_map`'s record, or None where each method estimated σ itself."""
    return {
        "varmap_version": __version__,
        "model": phantom.model,
        "voxel_size_mm": phantom.voxel_size,
        "snr": phantom.snr,
        "sigma": phantom.sigma,
        "noise": _noise_description(phantom),
        "noise_field": phantom.noise_field is not None,
        "noise_map": noise_map,
        "seed": seed,
        "phantom_seed": phantom.seed,
        "crop": phantom.config.get("crop"),
        "shape": list(phantom.shape),
        "n_brain_voxels": phantom.n_voxels,
        "n_measurements": phantom.protocol.n_measurements,
        "group_counts": regions.purity_counts(),
        "boundary_voxels": int(regions.edge.sum()),
        "purity": purity,
        "edge_voxels": edge_voxels,
        "methods": runs,
        "method_options": method_options,
        "device": device,
        "speed_reference": reference,
        "memory_note": MEMORY_NOTE,
        "truth_definition": TRUTH_DEFINITION,
        "machine": environment(),
    }


def _noise_description(phantom: Phantom) -> str:
    """The phantom's noise in words: one level, or the noise field and its range in the studied voxels."""
    if phantom.noise_field is None:
        return f"Rician, one noise level (sigma {phantom.sigma:g})"
    in_brain = phantom.sigma_map[phantom.mask]
    low, high = NOISE_FIELD_RANGE
    return (
        f"Rician, noise level varying smoothly over the head (noise field, factor {low:g} to {high:g} over the "
        f"whole brain; sigma {in_brain.min():.4g} to {in_brain.max():.4g} in the studied voxels)"
    )


def _noise_map_description(noise_map: dict | None) -> str:
    """Where the methods' σ came from, in words."""
    if noise_map is None:
        return "none; each method estimates σ per voxel from its own signals (the Python API's default)"
    parameters = ", ".join(f"{name} {value}" for name, value in noise_map["parameters"].items())
    return (
        f"the noise map `varmap fit` estimates from the image ({noise_map['method']}"
        + (f", {parameters}" if parameters else "")
        + f"; median error {100 * noise_map['median_relative_error']:.1f} %, 95th percentile "
        f"{100 * noise_map['p95_relative_error']:.1f} % against the true σ; {noise_map['seconds']:.1f} s, "
        "not in the methods' times)"
    )


# ---------------------------------------------------------------------------------------- report
def format_phantom_markdown(result: PhantomStudyResult) -> str:
    """Markdown report: set-up, accuracy per parameter and tissue, edge sharpness, calibration of the
    reported standard deviations, speed, clusters."""
    lines = [*_setup_lines(result.config), "### Accuracy: RMSE / bias", ""]
    for parameter in dict.fromkeys(r["parameter"] for r in result.rows):
        lines += [f"**{parameter}**", "", *_accuracy_table(result.rows, parameter), ""]
    lines += _calibration_tables(result.calibration)
    lines += [f"### Speed and memory (ratios to {result.reference})", "", *_speed_table(result.speed)]
    lines += ["", MEMORY_NOTE, ""]
    lines += _cluster_tables(result)
    return "\n".join(lines)


def _setup_lines(config: dict) -> list[str]:
    """The phantom, its noise and its groups, in words."""
    counts = config.get("group_counts", {})
    return [
        f"## Brain phantom study: {config.get('model')}" + (", noise field" if config.get("noise_field") else ""),
        "",
        f"Voxel size {config.get('voxel_size_mm'):g} mm, grid {' x '.join(map(str, config.get('shape', [])))}"
        + (f" (crop {config['crop']})" if config.get("crop") else " (whole brain)")
        + f", {config.get('n_brain_voxels')} brain voxels x {config.get('n_measurements')} measurements; "
        f"b=0 SNR of white matter {config.get('snr'):g} (sigma {config.get('sigma'):g}).",
        f"Noise: {config.get('noise')}.",
        f"Noise level given to the methods: {_noise_map_description(config.get('noise_map'))}.",
        f"Groups: pure (fraction >= {config.get('purity')}) "
        + ", ".join(f"{name} {counts.get(name, 0)}" for name in PHANTOM_GROUPS)
        + f"; boundary (<= {config.get('edge_voxels'):g} voxels from a tissue change) {config.get('boundary_voxels')}.",
        f"Truth: {config.get('truth_definition', TRUTH_DEFINITION)}.",
        "",
    ]


def _accuracy_table(rows: list[dict], parameter: str) -> list[str]:
    """One parameter's errors: a row per method, a column per group (angles for the direction)."""
    rows = [r for r in rows if r["parameter"] == parameter]
    if parameter == "n":
        groups, table = _by_method_and_group(rows, lambda r: f"{r['angular_error_deg']:.2f}")
        return markdown_table(["method", *[f"angle (deg) {g}" for g in groups]], table)
    groups, table = _by_method_and_group(rows, lambda r: f"{r['rmse']:.4f} / {r['bias']:+.4f}")
    edge_ratios = {r["method"]: r["edge_ratio"] for r in rows if r["group"] == "boundary"}
    table = [[*line, f"{edge_ratios.get(line[0], float('nan')):.2f}"] for line in table]
    return markdown_table(["method", *groups, "boundary / interior RMSE"], table)


def _calibration_tables(rows: list[dict]) -> list[str]:
    """One table per parameter of how the reported standard deviations describe the errors: a row per
    method, a column per group; nothing without rows."""
    if not rows:
        return []
    lines = ["### Calibration of the reported standard deviations", "",
             "Each cell: share of voxels whose truth lies within ±1.96 std of the estimate / RMS of z = "
             "(estimate − truth) / std (share of voxels with |z| > 4). Calibrated: 0.95 / 1.0 (0).", ""]
    for parameter in dict.fromkeys(r["parameter"] for r in rows):
        groups, table = _by_method_and_group(
            [r for r in rows if r["parameter"] == parameter],
            lambda r: f"{r['coverage_95']:.3f} / {r['rms_z']:.2f} ({r['share_z_over_4']:.4f})",
        )
        lines += [f"**{parameter}**", "", *markdown_table(["method", *groups], table), ""]
    return lines


def _by_method_and_group(rows: list[dict], cell: Callable[[dict], str]) -> tuple[list[str], list[list[str]]]:
    """One parameter's rows pivoted: its groups in order of appearance, and per method (in order) its name
    and ``cell(row)`` of each group ("" where the method has no row for it)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["group"]: r for r in rows if r["method"] == method}
        table.append([method, *("" if group not in cells else cell(cells[group]) for group in groups)])
    return groups, table


def _speed_table(speed: list[dict]) -> list[str]:
    """Seconds per stage, voxels per second, peak memory and ratios of every method."""
    header = ["method", "voxels", "total (s)", "prepare (s)", "train (s)", "infer (s)", "voxels/s",
              "peak RSS (MB)", "time ratio", "memory ratio"]
    table = [
        [row["method"], f"{row['n_voxels']}", f"{row['total_s']:.2f}", _num(row["prepare_s"]), _num(row["train_s"]),
         _num(row["infer_s"]), f"{row['voxels_per_s']:.0f}", f"{row['peak_rss_mb']:.0f}", f"{row['time_ratio']:.2f}",
         _num(row["memory_ratio"])]
        for row in speed
    ]
    return markdown_table(header, table)


def _num(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.2f}"


def _cluster_tables(result: PhantomStudyResult) -> list[str]:
    """For each mixture model, the share of each purity group's voxels in each of its clusters."""
    lines: list[str] = []
    groups = result.phantom.groups(threshold=result.config.get("purity", 0.9))[result.phantom.mask]
    for method, fit in result.fits.items():
        clusters = fit.clusters
        if clusters is None:
            continue
        components = sorted(int(c) for c in np.unique(clusters) if c >= 0)
        table = [
            [name, *(f"{np.mean(clusters[groups == k] == c):.2f}" for c in components)]
            for k, name in enumerate(PHANTOM_GROUPS)
            if (groups == k).any()
        ]
        header = ["group", *(f"cluster {c}" for c in components)]
        lines += [f"### {method} clusters against tissue (share of each group's voxels)", "",
                  *markdown_table(header, table), ""]
    return lines


def _write_outputs(result: PhantomStudyResult, output_dir: Path, *, force: bool) -> list[Path]:
    """Write the tables, ``phantom_study.json`` and the figures atomically into ``output_dir``."""
    from ..io import atomic_output_dir, save_json
    from ..plots import phantom_clusters_figure, phantom_maps_figure

    names = ["results.csv", "speed.csv", "results.md", "phantom_study.json", "maps.png"]
    with atomic_output_dir(output_dir, force=force) as staging:
        (staging / "results.csv").write_text(format_csv(result.rows, _ACCURACY_COLUMNS), encoding="utf-8", newline="")
        (staging / "speed.csv").write_text(format_csv(result.speed, _SPEED_COLUMNS), encoding="utf-8", newline="")
        if result.calibration:
            (staging / "calibration.csv").write_text(format_csv(result.calibration, _CALIBRATION_COLUMNS),
                                                     encoding="utf-8", newline="")
            names.insert(2, "calibration.csv")
        (staging / "results.md").write_text(format_phantom_markdown(result), encoding="utf-8")
        save_json(result.config, staging / "phantom_study.json")
        phantom_maps_figure(result.phantom, result.estimates, staging / "maps.png")
        clustered = {method: fit for method, fit in result.fits.items() if fit.clusters is not None}
        if clustered:
            phantom_clusters_figure(result.phantom, clustered, staging / "clusters.png")
            names.append("clusters.png")
    return [output_dir / name for name in names]
