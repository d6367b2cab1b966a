"""The simulation study: every method against the truth and the Bayes oracle at several SNRs."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..estimators import ESTIMATORS, get_estimator
from ..provenance import environment
from ..random_streams import stream_seed
from ..signal_models import SignalModel, get_signal_model
from ..simulation import ClusterPrior, SimulatedData, get_prior, simulate, study_protocol
from ..simulation.datasets import check_noise_variation, check_range
from .accuracy import add_oracle_ratios, simulation_calibration_rows, simulation_rows
from .oracle import ball_stick_oracle, msdki_oracle
from .runner import format_csv, markdown_table, measure

__all__ = [
    "StudyResult", "run_study", "run_demo", "format_markdown", "format_calibration_markdown", "describe_variant",
    "DEFAULT_PRIORS",
]

logger = logging.getLogger("varmap")

#: Prior of each model's study (``simulation.PRIORS``).
DEFAULT_PRIORS = {"msdki": "paper", "ball_stick": "default"}

_ORACLES = {"msdki": msdki_oracle, "ball_stick": ball_stick_oracle}
ORACLE = "oracle"
#: The oracle given each voxel's noise level, beside one that marginalises it (:func:`_marginalises_sigma`).
ORACLE_SIGMA_KNOWN = "oracle_sigma_known"

#: How the study's times were taken.
_TIMING_NOTE = (
    "time_s is the wall time of one fit (or of the oracle) from raw signals to parameters, measured in "
    "the process that ran it; with n_jobs > 1 that many fits ran at once, one per process, each network "
    "training on one thread and inference on cpu_count // n_jobs threads."
)

#: Columns of ``results.csv``.
_COLUMNS = ("snr", "method", "parameter", "cluster", "n", "n_nan", "rmse", "bias", "angular_error_deg", "ratio_to_oracle", "time_s")
#: Columns of ``calibration.csv``.
_CALIBRATION_COLUMNS = ("snr", "method", "parameter", "cluster", "n", "coverage_95", "rms_z", "max_abs_z", "share_z_over_4")


@dataclass
class StudyResult:
    """Rows of the study table and where its files went.

    Attributes
    ----------
    rows : list of dict
        One row per SNR, method, parameter and cluster: ``rmse``, ``bias``, ``angular_error_deg``,
        ``ratio_to_oracle`` (RMSE, or angular error, divided by the oracle's on the oracle's voxels),
        ``time_s``.
    calibration : list of dict
        One row per SNR, method with an uncertainty (and the oracle, on its voxels), parameter and
        cluster: ``coverage_95``, ``rms_z``, ``max_abs_z``, ``share_z_over_4``
        (:func:`~varmap.evaluation.metrics.calibration_table`).
    estimates : dict
        ``estimates[snr][method]`` maps each parameter to its estimates (oracle: its voxel subset).
    data : dict
        ``data[snr]`` is the :class:`~varmap.simulation.SimulatedData`.
    variant : str
        The data's noise and S0 in words (:func:`describe_variant`).
    files : list of Path
    """

    rows: list[dict]
    calibration: list[dict] = field(default_factory=list)
    estimates: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    variant: str = ""
    files: list[Path] = field(default_factory=list)


def run_study(
    *,
    model: str = "msdki",
    snrs: Sequence[float] = (5, 10, 20, 50),
    n_voxels: int = 10_000,
    methods: Sequence[str] = ("nlls", "selfsup", "vae", "gmvae"),
    seed: int = 0,
    output_dir: str | Path | None = None,
    n_oracle: int = 2000,
    prior: str | None = None,
    force: bool = False,
    progress: bool = True,
    method_options: dict[str, dict] | None = None,
    n_jobs: int = 1,
    noise_variation: float = 1.0,
    S0_range: tuple[float, float] | None = None,
    sigma_known: bool = False,
    protocol: str = "hcp",
) -> StudyResult:
    """Simulate, fit with every method, compare with the truth and the Bayes oracle.

    Parameters
    ----------
    model : {"msdki", "ball_stick"}
    snrs : sequence of float
        b=0 signal-to-noise ratios S0/σ.
    n_voxels : int
        Voxels simulated per SNR.
    methods : sequence of str
        Registered estimators.
    seed : int
        Seed of the protocol, the simulated draws (one named stream per SNR) and every estimator.
    output_dir : path, optional
        Folder for ``results.csv``, ``calibration.csv``, ``results.md`` (errors, then the calibration
        of the reported standard deviations), ``study.json`` and one figure per SNR; written
        atomically (:func:`varmap.io.atomic_output_dir`).  ``None`` writes nothing.
    n_oracle : int
        Voxels (the first ones) on which the oracle runs; 0 skips it.
    prior : str, optional
        Name of the simulation prior (``simulation.PRIORS``); default :data:`DEFAULT_PRIORS`.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        tqdm bars of the estimators.
    method_options : dict, optional
        Extra keyword arguments per method.
    n_jobs : int
        Fits run at the same time, each in its own process (see :data:`_TIMING_NOTE`); the network
        estimators train on one thread, so one job per CPU core uses the machine fully.
    noise_variation : float
        Variant with a noise level that differs between voxels: each voxel's σ is σ_SNR times a factor
        drawn log-uniformly on [1, noise_variation] (:func:`~varmap.simulation.simulate`), so an SNR
        is that of the least noisy voxels.  1: one noise level.  Where the methods estimate σ (not
        ``sigma_known``) and S0 is known, msdki's oracle marginalises each voxel's σ over that
        distribution, as an estimator that does not know it must (21 times the cost), and
        ``"oracle_sigma_known"``, given σ, runs beside it; otherwise the oracle knows every voxel's σ.
    S0_range : (low, high), optional
        Variant with S0 drawn uniformly on [low, high] (raw units; the SNR is that of the mean S0)
        instead of S0 = 1 everywhere.  The oracle then does not know S0 and marginalises it over that
        distribution (MS-DKI only; it costs the oracle 17 times as long).
    sigma_known : bool
        Give every method each voxel's true noise level (``sigma=``), as the oracle has it; by
        default the methods estimate it.
    protocol : str
        Acquisition (:data:`varmap.simulation.STUDY_PROTOCOLS`): ``"hcp"`` (288 measurements, three
        shells), ``"clinical"`` (one b=0, two shells), ``"abcd"`` (seven b=0, four shells from
        b = 500 s/mm²), ``"hcp_no_b0"`` and ``"abcd_no_b0"`` (those without b=0), or ``"trace"`` (one b=0, the
        three axes at two b-values: 7 measurements).  The ``"physical"`` MS-DKI prior is truncated
        at the protocol's largest b-value.

    Returns
    -------
    StudyResult

    Raises
    ------
    FileExistsError
        If ``output_dir`` exists and ``force`` is false (before any work).
    ValueError
        On an unknown model, method or prior, a non-positive SNR, ``n_jobs`` < 1, ``noise_variation``
        < 1, a bad ``S0_range``, or ``S0_range`` for a model whose oracle cannot marginalise S0.
    """
    _check_request(model, snrs, methods, n_jobs)
    _check_variant(model, noise_variation, S0_range)
    acquisition, protocol_description = study_protocol(protocol, seed=seed)
    if output_dir is not None:
        from ..io import check_output_dir

        output_dir = check_output_dir(output_dir, force=force)
    method_options = method_options or {}
    prior_name = prior or DEFAULT_PRIORS[model]
    signal_model = get_signal_model(model, acquisition)
    truncation = {"b_max": float(acquisition.bvals.max())} if (model, prior_name) == ("msdki", "physical") else {}
    simulation_prior = get_prior(model, prior_name, **truncation)
    n_sub = min(n_oracle, n_voxels)
    started = time.perf_counter()
    variant = {"noise_variation": float(noise_variation), "S0_range": S0_range}
    data = _simulate_snrs(signal_model, simulation_prior, snrs, n_voxels=n_voxels, seed=seed, **variant)
    jobs = _fit_jobs(data, methods, method_options, seed=seed, n_oracle=n_sub, sigma_known=sigma_known)
    fits = _run_jobs(jobs, n_jobs=n_jobs, progress=progress)
    result = _tabulate(data, fits, methods, n_oracle=n_sub, sigma_known=sigma_known)
    result.variant = describe_variant(model=model, **variant, sigma_known=sigma_known)
    if output_dir is not None:
        config = _config(
            model=model, prior=prior_name, snrs=snrs, n_voxels=n_voxels, n_oracle=n_sub, methods=methods,
            method_options=method_options, n_jobs=n_jobs, seed=seed, protocol=protocol_description,
        )
        config.update(
            variant=result.variant, noise_variation=float(noise_variation),
            S0_range=None if S0_range is None else [float(v) for v in S0_range], sigma_known=bool(sigma_known),
        )
        config["total_time_s"] = time.perf_counter() - started
        result.files = _write_outputs(result, config, output_dir, force=force)
    return result


def run_demo(
    *, output_dir: str | Path = "demo_output", force: bool = False, progress: bool = True, n_jobs: int = 1
) -> StudyResult:
    """A small MS-DKI study at SNR 10 (3,000 voxels, every method, oracle on 1,000) with its figures."""
    return run_study(
        n_jobs=n_jobs,
        model="msdki",
        snrs=(10,),
        n_voxels=3000,
        n_oracle=1000,
        output_dir=output_dir,
        force=force,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------- steps
def _check_request(model: str, snrs: Sequence[float], methods: Sequence[str], n_jobs: int) -> None:
    """Refuse an unknown model or method, a non-positive SNR or n_jobs < 1, before any work."""
    if model not in _ORACLES:
        raise ValueError(f"no study for model {model!r}; choose one of {sorted(_ORACLES)}.")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1; got {n_jobs}.")
    if not snrs or any(snr <= 0 for snr in snrs):
        raise ValueError(f"snrs must be positive numbers; got {list(snrs)}.")
    unknown = [method for method in methods if method not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(ESTIMATORS)}.")


def _check_variant(model: str, noise_variation: float, S0_range: tuple[float, float] | None) -> None:
    """Refuse a variant the simulation or the model's oracle cannot run, before any work."""
    check_noise_variation(noise_variation)
    if S0_range is not None:
        check_range(S0_range)
        if model != "msdki":
            raise ValueError(
                f"S0_range needs an oracle that marginalises S0, which only msdki has; got model={model!r} "
                "(leave S0_range out, or study msdki)."
            )


def describe_variant(
    *, model: str, noise_variation: float, S0_range: tuple[float, float] | None, sigma_known: bool
) -> str:
    """The study's data in words: its noise level, its S0, and what the methods and the oracle are told.

    Parameters
    ----------
    model : str
        The study's signal model (only msdki's oracle marginalises σ).
    noise_variation : float
    S0_range : (low, high) or None
    sigma_known : bool
        See :func:`run_study`.

    Returns
    -------
    str
    """
    noise = (
        "one noise level" if noise_variation == 1
        else f"noise level varying between voxels (factor log-uniform on [1, {noise_variation:g}]; "
        "SNR of the least noisy)"
    )
    S0 = (
        "S0 the same in every voxel, known to the oracle" if S0_range is None
        else f"S0 uniform on [{S0_range[0]:g}, {S0_range[1]:g}], marginalised by the oracle"
    )
    told = "methods given each voxel's noise level" if sigma_known else "methods estimate the noise level"
    if _sigma_marginalised(model, noise_variation, S0_range, sigma_known):
        told += (
            " and the oracle marginalises it over its distribution, as they must (oracle_sigma_known: "
            "the oracle given it)"
        )
    return f"{noise}; {S0}; {told}"


def _marginalises_sigma(data: SimulatedData, sigma_known: bool) -> bool:
    """:func:`_sigma_marginalised` for one SNR's data."""
    return _sigma_marginalised(data.model, data.noise_variation, data.S0_range, sigma_known)


def _sigma_marginalised(
    model: str, noise_variation: float, S0_range: tuple[float, float] | None, sigma_known: bool
) -> bool:
    """Whether the study's oracle marginalises each voxel's noise level instead of knowing it: where the
    methods must estimate a level that varies between voxels.  The bound that counts for them is then
    the Bayes estimator that does not know σ either (knowing it is worth up to a third of the RMSE at
    SNR 5); the one given σ runs beside it as :data:`ORACLE_SIGMA_KNOWN`.  Only msdki's oracle can, and
    not together with an unknown S0."""
    return model == "msdki" and noise_variation > 1 and S0_range is None and not sigma_known


def _simulate_snrs(
    signal_model: SignalModel,
    prior: ClusterPrior,
    snrs: Sequence[float],
    *,
    n_voxels: int,
    seed: int,
    noise_variation: float,
    S0_range: tuple[float, float] | None,
) -> dict[float, SimulatedData]:
    """One simulated data set per SNR, each from its own named random stream of ``seed`` (so the data at
    one SNR do not depend on which other SNRs are studied)."""
    return {
        snr: simulate(
            signal_model, prior, n_voxels=n_voxels, snr=snr, noise_variation=noise_variation, S0_range=S0_range,
            seed=stream_seed(seed, f"data at SNR {snr:g}"),
        )
        for snr in snrs
    }


@dataclass(frozen=True)
class _FitJob:
    """One fit of the study: a method (or the oracle) on one simulated data set."""

    data: SimulatedData
    method: str
    options: dict
    seed: int
    n_oracle: int
    sigma_known: bool


def _fit_jobs(
    data: dict[float, SimulatedData],
    methods: Sequence[str],
    method_options: dict[str, dict],
    *,
    seed: int,
    n_oracle: int,
    sigma_known: bool,
) -> list[_FitJob]:
    """Every fit of the study: at each SNR, the oracle (two where it marginalises σ; none if ``n_oracle``
    is 0), then each method."""
    return [
        _FitJob(simulated, method, dict(method_options.get(method, {})), seed, n_oracle, sigma_known)
        for simulated in data.values()
        for method in _oracles(simulated, n_oracle, sigma_known) + list(methods)
    ]


def _oracles(data: SimulatedData, n_oracle: int, sigma_known: bool) -> list[str]:
    """The oracles of one SNR's data, the reference first."""
    if n_oracle == 0:
        return []
    return [ORACLE, ORACLE_SIGMA_KNOWN] if _marginalises_sigma(data, sigma_known) else [ORACLE]


def _run_job(job: _FitJob, progress: bool = False) -> tuple[dict, dict | None, float]:
    """Parameters, their reported standard deviations (``None`` for a method without) and seconds of
    one fit."""
    data = job.data
    with measure() as cost:
        if job.method in (ORACLE, ORACLE_SIGMA_KNOWN):
            n = job.n_oracle
            sigma = data.sigma if np.ndim(data.sigma) == 0 else data.sigma[:n]
            unknowns = {"S0": data.S0[:n]} if data.S0_range is None else {"S0_range": data.S0_range}
            if job.method == ORACLE and _marginalises_sigma(data, job.sigma_known):
                unknowns["sigma_range"] = data.sigma_range
            oracle = _ORACLES[data.model]
            fitted = oracle(data.signals[:n], data.protocol, data.prior, sigma=sigma, **unknowns)
        else:
            signal_model = get_signal_model(data.model, data.protocol)
            options = job.options | ({"sigma": data.sigma} if job.sigma_known else {})
            estimator = get_estimator(job.method, signal_model, seed=job.seed, progress=progress, **options)
            fitted = estimator.fit(data.signals)
    return fitted.params, fitted.std, cost.seconds


#: Methods from the slowest to the fastest, for scheduling.
_EXPECTED_ORDER = ("gmvae", "vae", "selfsup", ORACLE, ORACLE_SIGMA_KNOWN, "nlls")


def _expected_rank(job: _FitJob) -> int:
    """Place of a job in :data:`_EXPECTED_ORDER` (an oracle that marginalises σ, 21 integrations per
    voxel, and unlisted methods first)."""
    if job.method == ORACLE and _marginalises_sigma(job.data, job.sigma_known):
        return -1
    return _EXPECTED_ORDER.index(job.method) if job.method in _EXPECTED_ORDER else 0


def _start_worker(n_threads: int) -> None:
    torch.set_num_threads(n_threads)


def _run_jobs(jobs: list[_FitJob], *, n_jobs: int, progress: bool) -> dict[tuple[float, str], tuple[dict, dict | None, float]]:
    """Run every job, in this process or in ``n_jobs`` worker processes; keyed by (SNR, method)."""
    if n_jobs == 1:
        finished = ((job, _run_job(job, progress)) for job in jobs)
        return _collect(finished)
    n_threads = max(1, (os.cpu_count() or 1) // n_jobs)
    # Longest fits first, so that the last ones to finish are short.
    order = sorted(jobs, key=lambda job: _expected_rank(job))
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_start_worker, initargs=(n_threads,)) as pool:
        futures = {pool.submit(_run_job, job): job for job in order}
        return _collect((futures[future], future.result()) for future in as_completed(futures))


def _collect(
    finished: Iterable[tuple[_FitJob, tuple[dict, dict | None, float]]],
) -> dict[tuple[float, str], tuple[dict, dict | None, float]]:
    """Key finished (job, (params, std, seconds)) pairs by (SNR, method), logging each as it arrives."""
    done = {}
    for job, outcome in finished:
        done[job.data.snr, job.method] = outcome
        logger.info("SNR %g: %s in %.1f s", job.data.snr, job.method, outcome[2])
    return done


def _tabulate(
    data: dict[float, SimulatedData],
    fits: dict[tuple[float, str], tuple[dict, dict | None, float]],
    methods: Sequence[str],
    *,
    n_oracle: int,
    sigma_known: bool,
) -> StudyResult:
    """The study's result: estimates, accuracy and calibration rows of every SNR, methods first, the
    oracles last (the one given σ, where there are two, compared with the reference)."""
    result = StudyResult(rows=[], data=dict(data))
    for snr, simulated in data.items():
        result.estimates[snr] = {}
        oracle_rows: list[dict] = []
        oracles = _oracles(simulated, n_oracle, sigma_known)
        for method in [*methods, *oracles[::-1]]:
            params, std, seconds = fits[snr, method]
            n = n_oracle if method in oracles else simulated.n_voxels
            if std is not None:
                result.calibration.extend(_labelled(simulation_calibration_rows(simulated, params, std, n), snr, method, seconds))
        if n_oracle > 0:
            params, _, seconds = fits[snr, ORACLE]
            result.estimates[snr][ORACLE] = params
            oracle_rows = _labelled(simulation_rows(simulated, params, n_oracle), snr, ORACLE, seconds)
        for method in [*methods, *oracles[1:]]:
            params, _, seconds = fits[snr, method]
            result.estimates[snr][method] = params
            n = n_oracle if method in oracles else simulated.n_voxels
            rows = _labelled(simulation_rows(simulated, params, n), snr, method, seconds)
            if oracle_rows:
                subset = {name: value[:n_oracle] for name, value in params.items()}
                add_oracle_ratios(rows, simulation_rows(simulated, subset, n_oracle), oracle_rows)
            result.rows.extend(rows)
        for row in oracle_rows:
            row["ratio_to_oracle"] = 1.0
        result.rows.extend(oracle_rows)
    return result


def _labelled(rows: list[dict], snr: float, method: str, seconds: float) -> list[dict]:
    """Rows with their SNR, method and fit time."""
    for row in rows:
        row.update(snr=snr, method=method, time_s=seconds)
    return rows


def _config(
    *,
    model: str,
    prior: str,
    snrs: Sequence[float],
    n_voxels: int,
    n_oracle: int,
    methods: Sequence[str],
    method_options: dict[str, dict],
    n_jobs: int,
    seed: int,
    protocol: str,
) -> dict:
    """Settings and machine of the study (``study.json``), its total time left out."""
    return {
        "varmap_version": __version__,
        "model": model,
        "prior": prior,
        "snrs": list(snrs),
        "n_voxels": n_voxels,
        "n_oracle": n_oracle,
        "methods": list(methods),
        "method_options": method_options,
        "n_jobs": n_jobs,
        "timing_note": _TIMING_NOTE,
        "seed": seed,
        "noise": "rician",
        "protocol": protocol,
        "machine": environment(),
    }


# ---------------------------------------------------------------------------------------- report
def format_markdown(rows: list[dict], *, title: str | None = None) -> str:
    """One Markdown table per SNR: a row per method, RMSE (or angular error) and bias per cluster.

    Parameters
    ----------
    rows : list of dict
        :attr:`StudyResult.rows`.
    title : str, optional
        A heading above the tables (the study writes the model and :attr:`StudyResult.variant`).

    Returns
    -------
    str
    """
    lines = [] if title is None else [f"## {title}", ""]
    lines += _tables_per_snr(
        rows,
        lambda parameter, cluster: f"{parameter} {cluster} {'angle (deg)' if parameter == 'n' else 'RMSE / bias'} [×oracle]",
        _cell,
        time_column=True,
    )
    return "\n".join(lines)


def format_calibration_markdown(rows: list[dict]) -> str:
    """One Markdown table per SNR of how the reported standard deviations describe the errors.

    Parameters
    ----------
    rows : list of dict
        :attr:`StudyResult.calibration`.

    Returns
    -------
    str
        A cell reads ``coverage of the ±1.96 std interval / RMS z (largest |z|)``; a calibrated
        uncertainty gives 0.95 / 1.0.
    """
    lines = ["## Calibration of the reported standard deviations",
             "",
             "Each cell: share of voxels whose truth lies within ±1.96 std of the estimate / RMS of z = "
             "(estimate − truth) / std (largest |z|). Calibrated: 0.95 / 1.0.",
             ""]
    lines += _tables_per_snr(
        rows,
        lambda parameter, cluster: f"{parameter} {cluster}",
        lambda row: f"{row['coverage_95']:.3f} / {row['rms_z']:.2f} ({row['max_abs_z']:.1f})",
    )
    return "\n".join(lines)


def _tables_per_snr(
    rows: list[dict], column_title: Callable[[str, str], str], cell: Callable[[dict], str], *, time_column: bool = False
) -> list[str]:
    """Markdown lines of one table per SNR: a row per method (with its fit time if ``time_column``), a
    column per (parameter, cluster) titled ``column_title(parameter, cluster)``, cells ``cell(row)``."""
    lines: list[str] = []
    for snr in dict.fromkeys(r["snr"] for r in rows):
        at_snr = [r for r in rows if r["snr"] == snr]
        groups = list(dict.fromkeys((r["parameter"], r["cluster"]) for r in at_snr))
        header = ["method", *(["time (s)"] if time_column else []), *(column_title(*group) for group in groups)]
        table = []
        for method in dict.fromkeys(r["method"] for r in at_snr):
            cells = {(r["parameter"], r["cluster"]): r for r in at_snr if r["method"] == method}
            time = [f"{next(iter(cells.values()))['time_s']:.1f}"] if time_column else []
            table.append([method, *time, *("" if key not in cells else cell(cells[key]) for key in groups)])
        lines += [f"### SNR {snr:g}", "", *markdown_table(header, table), ""]
    return lines


def _cell(row: dict) -> str:
    ratio = row["ratio_to_oracle"]
    suffix = "" if not np.isfinite(ratio) or row["method"] == ORACLE else f" [{ratio:.2f}]"
    if row["parameter"] == "n":
        return f"{row['angular_error_deg']:.2f}{suffix}"
    return f"{row['rmse']:.4f} / {row['bias']:+.4f}{suffix}"


def _write_outputs(result: StudyResult, config: dict, output_dir: Path, *, force: bool) -> list[Path]:
    """Write the tables, one scatter figure per SNR and ``study.json`` atomically into ``output_dir``."""
    from ..io import atomic_output_dir, save_json
    from ..plots import study_scatter_figure

    names = ["results.csv", "calibration.csv", "results.md"]
    with atomic_output_dir(output_dir, force=force) as staging:
        (staging / "results.csv").write_text(format_csv(result.rows, _COLUMNS), encoding="utf-8", newline="")
        (staging / "calibration.csv").write_text(format_csv(result.calibration, _CALIBRATION_COLUMNS),
                                                  encoding="utf-8", newline="")
        title = f"{config['model']} simulation study: {result.variant}"
        text = format_markdown(result.rows, title=title)
        if result.calibration:
            text += "\n" + format_calibration_markdown(result.calibration)
        (staging / "results.md").write_text(text, encoding="utf-8")
        for snr, data in result.data.items():
            name = f"scatter_snr{snr:g}.png"
            study_scatter_figure(
                result.estimates[snr], data.params, data.labels, data.prior.cluster_names, staging / name,
                title=f"{config['model']}, SNR {snr:g}",
            )
            names.append(name)
        save_json(config, staging / "study.json")
        names.append("study.json")
    return [output_dir / name for name in names]
