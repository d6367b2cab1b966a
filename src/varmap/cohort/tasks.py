"""One scan mapped into its BIDS-Derivatives folder: the task each Dask worker runs.

The scan's folder (``sub-<label>[/ses-<label>]``) is written through :func:`varmap.io.atomic_output_dir`:
everything goes into a hidden temporary folder beside it, renamed into place only when complete.  A
killed run therefore leaves no half-written scan, and a scan whose folder exists is finished, so a
re-run skips it (unless ``force``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import io
from .derivatives import to_bids
from .naming import BidsPrefix
from .population import ScanFiles

__all__ = ["ScanJob", "ScanOutcome", "map_scan", "remove_partial_folders"]

logger = logging.getLogger("varmap")

#: Name of the folder, inside a scan's temporary folder, that fit_image / apply_checkpoint write.
_FIT_FOLDER = "varmap"

#: One fit at a time per process: torch's forward-mode differentiation (the nlls Jacobians) is not
#: thread-safe, so a Dask worker with several threads runs its scans one after the other.
_FIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ScanJob:
    """Everything a worker needs to map one scan (picklable: paths, strings, numbers).

    Attributes
    ----------
    scan : ScanFiles
    prefix : BidsPrefix
        Names of the scan's derivatives.
    output_dir : Path
        Root of the derivatives dataset.
    bids_dir : Path
        Root of the input dataset (sources in the sidecars).
    model : str
    method : str
        Ignored with a ``checkpoint``.
    checkpoint : Path or None
        A population model: map with :func:`varmap.apply_checkpoint` (no training) instead of
        :func:`varmap.fit_image`.
    seed : int
    device : str
    force : bool
        Redo a finished scan.
    figure : bool
        Draw the overview figure (``figures/``).
    command : str
        The command recorded in the fit record.
    options : dict
        Estimator options of ``method``.
    """

    scan: ScanFiles
    prefix: BidsPrefix
    output_dir: Path
    bids_dir: Path
    model: str
    method: str
    checkpoint: Path | None = None
    seed: int = 0
    device: str = "auto"
    force: bool = False
    figure: bool = True
    command: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The scan's derivatives folder."""
        return self.output_dir / self.prefix.folder


@dataclass(frozen=True)
class ScanOutcome:
    """What became of one scan: ``"done"`` (mapped now) or ``"skipped"`` (finished by an earlier run).

    Attributes
    ----------
    name : str
        :attr:`BidsPrefix.name`.
    status : str
    seconds : float
        Wall time of the task.
    folder : Path
    """

    name: str
    status: str
    seconds: float
    folder: Path


def map_scan(job: ScanJob) -> ScanOutcome:
    """Map one scan and write its derivatives atomically; skip it when its folder exists (unless ``force``).

    Parameters
    ----------
    job : ScanJob

    Returns
    -------
    ScanOutcome

    Raises
    ------
    Exception
        Whatever the fit raises; the scan's folder is then left as it was.
    """
    from ..pipeline import apply_checkpoint, fit_image

    started = time.perf_counter()
    if job.folder.exists() and not job.force:
        return ScanOutcome(job.prefix.name, "skipped", time.perf_counter() - started, job.folder)
    scan = job.scan
    with _FIT_LOCK, io.atomic_output_dir(job.folder, force=job.force) as staging:
        fit_dir = staging / _FIT_FOLDER
        if job.checkpoint is not None:
            result = apply_checkpoint(job.checkpoint, scan.dwi, scan.bvals, scan.bvecs, mask=scan.mask,
                                      output_dir=fit_dir, device=job.device, progress=False, figure=job.figure,
                                      command=job.command)
        else:
            result = fit_image(scan.dwi, scan.bvals, scan.bvecs, mask=scan.mask, model=job.model, method=job.method,
                               output_dir=fit_dir, seed=job.seed, device=job.device, progress=False,
                               figure=job.figure, command=job.command, **job.options)
        to_bids(fit_dir, staging, prefix=job.prefix, model=job.model, fit_record=result.metadata, scan=scan,
                bids_dir=job.bids_dir)
    return ScanOutcome(job.prefix.name, "done", time.perf_counter() - started, job.folder)


def remove_partial_folders(folders: list[Path]) -> list[Path]:
    """Remove what a killed run left beside ``folders``: the hidden temporary folders of
    :func:`varmap.io.atomic_output_dir` (``.<name>.partial-*``, ``.<name>.old-*``).

    Run it before the tasks start, never while another run writes into the same derivatives folder.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    for folder in folders:
        if not folder.parent.is_dir():
            continue
        for pattern in (f".{folder.name}.partial-*", f".{folder.name}.old-*"):
            for leftover in folder.parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
    if removed:
        logger.info("removed %d unfinished folder(s) of an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed
