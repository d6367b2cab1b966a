"""The two levels of ``varmap bids``: every scan mapped (``participant``), one population model (``group``).

Both find the scans through pybids and check every one of them before any fitting
(:mod:`.discovery`, :mod:`.checks`).  ``participant`` then fans the usable scans out on Dask, one task
per subject/session (:mod:`.fanout`, :mod:`.tasks`), and reports each as it finishes; scans that
cannot be used, or whose fit fails, are failures of their own and do not stop the others.  ``group``
refuses to train on a cohort with any unusable scan.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..io import InputError, load_checkpoint
from ..protocol import Protocol
from .checks import problems_text, scan_problems
from .derivatives import write_dataset_description
from .discovery import find_scans
from .fanout import dask_client, fan_out
from .naming import BidsPrefix
from .population import ScanFiles
from .tasks import ScanJob, ScanOutcome, map_scan, remove_partial_folders

__all__ = ["CohortReport", "run_participant_level", "run_group_level", "MAX_EXIT_STATUS"]

logger = logging.getLogger("varmap")

#: Largest exit status that counts failed scans (the shell reserves 126 and above).
MAX_EXIT_STATUS = 100


@dataclass
class CohortReport:
    """What a ``participant`` run did to every scan.

    Attributes
    ----------
    done : list of str
        Scans mapped by this run (:attr:`BidsPrefix.name`).
    skipped : list of str
        Scans already finished by an earlier run.
    failed : dict of str
        Scan -> why it failed: the problems found by the checks, or the fit's error.
    outcomes : dict of ScanOutcome
        Per scan mapped or skipped.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, ScanOutcome] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        """Number of failed scans, at most :data:`MAX_EXIT_STATUS`; 0 when every scan is finished."""
        return min(len(self.failed), MAX_EXIT_STATUS)

    def summary(self) -> str:
        """One line: how many scans were mapped, skipped and failed, and which failed."""
        text = f"{len(self.done)} mapped, {len(self.skipped)} already done, {len(self.failed)} failed"
        return text + (f" ({', '.join(self.failed)})" if self.failed else "")


def run_participant_level(
    bids_dir: str | PathLike,
    output_dir: str | PathLike,
    *,
    model: str | None = None,
    method: str | None = None,
    population_model: str | PathLike | None = None,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    bids_filters: Mapping[str, str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    figure: bool = True,
    command: str = "",
    **options: Any,
) -> CohortReport:
    """Map every subject/session of a BIDS dataset into a BIDS-Derivatives dataset, one Dask task each.

    Parameters
    ----------
    bids_dir : path
        Root of the input BIDS dataset (:func:`~varmap.cohort.discovery.find_scans`).
    output_dir : path
        Root of the derivatives: ``dataset_description.json`` and ``sub-<label>[/ses-<label>]/``
        folders (:mod:`varmap.cohort.naming`).
    model : {"msdki", "ball_stick"}, optional
        Signal model; required without ``population_model`` (whose own model it must match if given).
    method : {"nlls", "selfsup", "vae", "gmvae"}, optional
        Estimator fitted to each scan; required without ``population_model``.
    population_model : path, optional
        ``model.pt`` of :func:`varmap.cohort.population.train_population_model` (or of ``varmap fit``):
        every scan is mapped with it by :func:`varmap.apply_checkpoint`, without training; every scan
        must have its protocol.
    participant_labels, session_labels : sequence of str, optional
        Subjects and sessions to map (default all).
    bids_filters : mapping, optional
        pybids entities the DWI series must have (``{"space": "T1w"}``).
    workers : int, optional
        Workers of a local Dask cluster (default: CPU cores, at most 4).
    scheduler : str, optional
        Address or scheduler file of a running Dask scheduler instead of a local cluster.
    client : distributed.Client, optional
        Use this client (a dask-jobqueue cluster's, for instance) instead of ``workers``/``scheduler``.
    seed, device, figure
        As :func:`varmap.fit_image`, for every scan.
    force : bool
        Redo scans that an earlier run finished.
    command : str
        Recorded in every scan's fit record.
    **options
        Estimator options of ``method`` (``n_epochs``...).

    Returns
    -------
    CohortReport
        Its :attr:`~CohortReport.exit_status` counts the failed scans.

    Raises
    ------
    InputError, FileNotFoundError, ValueError
        Before any fitting, when nothing can be run: no scan found, an unknown participant, bad
        options, a checkpoint that cannot be read or of another model.
    """
    from ..pipeline.checks import checked_device, checked_options

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    protocol = None
    if population_model is not None:
        population_model = Path(population_model)
        model, method, protocol = _population_model_settings(population_model, model)
        if options:
            raise InputError(f"estimator options ({', '.join(sorted(options))}) do not apply with "
                             f"--population-model: its estimator is already trained.")
    elif model is None or method is None:
        raise InputError("give --model and --method (a fit per scan), or --population-model FILE.")
    else:
        options = checked_options(method, options)
    checked_device(device)

    report = CohortReport()
    scans = _usable_scans(bids_dir, report, model=model, protocol=protocol, participant_labels=participant_labels,
                          session_labels=session_labels, bids_filters=bids_filters)
    write_dataset_description(output_dir, bids_dir)
    jobs = {
        prefix.name: ScanJob(scan=scan, prefix=prefix, output_dir=output_dir, bids_dir=bids_dir, model=model,
                             method=method, checkpoint=population_model, seed=seed, device=device, force=force,
                             figure=figure, command=command, options=dict(options))
        for prefix, scan in scans
    }
    remove_partial_folders([job.folder for job in jobs.values()])
    if jobs:
        _run_jobs(jobs, report, client=client, workers=workers, scheduler=scheduler)
    logger.info("participant level: %s; derivatives in %s", report.summary(), output_dir)
    return report


def run_group_level(
    bids_dir: str | PathLike,
    output_dir: str | PathLike,
    *,
    model: str,
    method: str = "gmvae",
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    bids_filters: Mapping[str, str] | None = None,
    n_proc: int = 1,
    seed: int = 0,
    voxels_per_subject: int = 20_000,
    device: str = "auto",
    progress: bool = False,
    force: bool = False,
    **options: Any,
) -> Path:
    """Train one population model on voxels of every scan, into ``output_dir/group/``.

    Parameters
    ----------
    bids_dir, output_dir, participant_labels, session_labels, bids_filters
        As :func:`run_participant_level`.
    model, method, n_proc, seed, voxels_per_subject, device, progress, force, **options
        Passed to :func:`varmap.cohort.population.train_population_model` (``n_proc`` > 1 trains with
        ``torch.distributed`` data parallelism).

    Returns
    -------
    Path
        The population model's ``model.pt``, for ``participant --population-model``.

    Raises
    ------
    InputError
        If any selected scan cannot be used (all problems listed): a population model is trained on
        the whole cohort or not at all.
    """
    from .population import train_population_model

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    report = CohortReport()
    scans = _usable_scans(bids_dir, report, model=model, protocol=None, participant_labels=participant_labels,
                          session_labels=session_labels, bids_filters=bids_filters)
    if report.failed:
        raise InputError(f"the population model needs every selected scan; {len(report.failed)} cannot be used "
                         f"(see above): fix them, or leave them out with --participant-label.")
    write_dataset_description(output_dir, bids_dir)
    logger.info("group level: training one %s/%s model on %d scans", model, method, len(scans))
    return train_population_model(
        [scan for _, scan in scans], model=model, method=method, output_dir=output_dir, seed=seed, n_proc=n_proc,
        voxels_per_subject=voxels_per_subject, device=device, progress=progress, force=force, **options,
    )


def _population_model_settings(path: Path, model: str | None) -> tuple[str, str, Protocol]:
    """Model, method and protocol of a population model's checkpoint; ``model`` must be its model."""
    checkpoint = load_checkpoint(path, device="cpu")
    if model is not None and model != checkpoint["model"]:
        raise InputError(f"--model {model} differs from the population model {path}'s ({checkpoint['model']}); "
                         f"leave --model out or give {checkpoint['model']}.")
    return checkpoint["model"], checkpoint["state"]["method"], Protocol.from_dict(checkpoint["protocol"])


def _usable_scans(
    bids_dir: Path,
    report: CohortReport,
    *,
    model: str,
    protocol: Protocol | None,
    participant_labels: Sequence[str] | None,
    session_labels: Sequence[str] | None,
    bids_filters: Mapping[str, str] | None,
) -> list[tuple[BidsPrefix, ScanFiles]]:
    """The scans found and checked; every problem is logged, per scan, and recorded as a failure."""
    found, problems = find_scans(bids_dir, participant_labels=participant_labels, session_labels=session_labels,
                                 filters=bids_filters)
    n_scans = len(found) + len(problems)
    usable = []
    for prefix, scan in found:
        scan_issues = scan_problems(scan, model=model, protocol=protocol)
        if scan_issues:
            problems[prefix.name] = scan_issues
        else:
            usable.append((prefix, scan))
    if problems:
        logger.error("%d of %d scans cannot be used:\n%s", len(problems), n_scans, problems_text(problems))
    for name, items in problems.items():
        report.failed[name] = "; ".join(items)
    logger.info("%d scan(s) to map: %s", len(usable), ", ".join(prefix.name for prefix, _ in usable) or "none")
    return usable


def _run_jobs(
    jobs: dict[str, ScanJob],
    report: CohortReport,
    *,
    client: Any,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Fan the jobs out and fill ``report``, one log line per finished scan."""
    finished = 0

    def on_done(name: str, outcome: ScanOutcome | None, error: BaseException | None) -> None:
        nonlocal finished
        finished += 1
        count = f"[{finished}/{len(jobs)}] {name}"
        if error is not None:
            report.failed[name] = " ".join(f"{type(error).__name__}: {error}".split())
            logger.error("%s: FAILED: %s", count, report.failed[name])
            return
        report.outcomes[name] = outcome
        if outcome.status == "skipped":
            report.skipped.append(name)
            logger.info("%s: already done (%s), skipped", count, outcome.folder)
        else:
            report.done.append(name)
            logger.info("%s: done in %.1f s", count, outcome.seconds)

    if client is not None:
        fan_out(client, map_scan, jobs, on_done=on_done)
        return
    with dask_client(workers=workers, scheduler=scheduler) as own_client:
        fan_out(own_client, map_scan, jobs, on_done=on_done)
