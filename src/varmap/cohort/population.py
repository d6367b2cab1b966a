"""One population model: a network estimator trained on voxels drawn from every subject of a cohort.

:func:`train_population_model` checks every scan before reading any voxel (files, one protocol for
all, masks, options), draws up to ``voxels_per_subject`` valid mask voxels from each subject (a named
random stream per subject, so adding a subject leaves the others' draws unchanged), pools them into one
``(n_voxels, n_measurements)`` matrix with each voxel's noise level, and trains one estimator on it, in
one process or data-parallel over several (:mod:`varmap.estimators.distributed`).  It writes
``OUTPUT_DIR/group/`` atomically: ``model.pt``, a checkpoint that :func:`varmap.apply_checkpoint` applies
to any scan of the same protocol (every subject of the cohort, or a new one), and ``group.json``, the
record of how it was made.

Pooling.  Estimators divide each voxel's signals by its own mean b=0 signal, so voxels of different
subjects are comparable; S0 is relative to the pooled data's median b=0 signal.  Subjects may differ in
noise level: each subject's is estimated from its own drawn voxels (as :meth:`Estimator.fit` would, or
the ``sigma`` given for all), and the pooled fit gets it per voxel.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import InputError, atomic_output_dir, check_output_dir, save_checkpoint, save_json
from ..pipeline.checkpoint import checkpoint_of
from ..pipeline.checks import checked_device, checked_options
from ..pipeline.noise import noise_level
from ..pipeline.scan import Scan, brain_mask, computed_mask_note, open_scan, read_signals
from ..provenance import environment, input_checksums, jsonable
from ..random_streams import numpy_stream

if TYPE_CHECKING:
    import torch

    from ..pipeline.noise import NoiseLevel
    from ..protocol import Protocol

__all__ = ["ScanFiles", "train_population_model", "POPULATION_METHODS"]

logger = logging.getLogger("varmap")

#: Methods that learn a network a population model can hold (nlls fits each voxel alone).
POPULATION_METHODS = ("gmvae", "vae", "selfsup")


@dataclass(frozen=True)
class ScanFiles:
    """The files of one subject's (and session's) diffusion scan.

    Attributes
    ----------
    subject : str
        Participant label, without ``sub-`` (BIDS).
    session : str or None
        Session label, without ``ses-``; ``None`` for a dataset without sessions.
    dwi : Path
        4-D NIfTI image.
    bvals, bvecs : Path
        FSL text files.
    mask : Path or None
        Brain mask in the DWI's grid; ``None``: computed as :func:`varmap.fit_image` does.
    """

    subject: str
    session: str | None
    dwi: Path
    bvals: Path
    bvecs: Path
    mask: Path | None

    @property
    def label(self) -> str:
        """``sub-<subject>[_ses-<session>]``: how messages, random streams and ``group.json`` name the scan."""
        return f"sub-{self.subject}" + ("" if self.session is None else f"_ses-{self.session}")


@dataclass(frozen=True)
class _PooledVoxels:
    """The drawn voxels of every subject, one after the other.

    Attributes
    ----------
    signals : ndarray, shape (n_voxels, n_measurements), float32
        Raw signals.
    sigma : ndarray, shape (n_voxels,)
        Noise standard deviation of each voxel's subject, raw units.
    subjects : list of dict
        What ``group.json`` records about each subject.
    noise : NoiseLevel
        The last subject's; its ``method`` and ``parameters``, the same for every subject of one
        protocol, go into the checkpoint, so that :func:`varmap.apply_checkpoint` estimates a new scan's
        noise map the same way.
    """

    signals: np.ndarray
    sigma: np.ndarray
    subjects: list[dict]
    noise: "NoiseLevel"


@dataclass(frozen=True)
class _TrainingJob:
    """What every training process gets (pickled into each)."""

    model: str
    method: str
    protocol: "Protocol"
    voxels: _PooledVoxels
    seed: int
    device: "torch.device"
    options: dict[str, Any]
    progress: bool
    record: dict
    started: float


def train_population_model(
    scans: Sequence[ScanFiles],
    *,
    model: str,
    method: str,
    output_dir: str | PathLike,
    seed: int = 0,
    n_proc: int = 1,
    voxels_per_subject: int = 20000,
    device: str = "auto",
    progress: bool = False,
    force: bool = False,
    **options: Any,
) -> Path:
    """Train one estimator on voxels of every scan and write it to ``output_dir/group/``.

    Parameters
    ----------
    scans : sequence of ScanFiles
        One per subject and session, all of one protocol (same b-values and directions, in order).
    model : {"msdki", "ball_stick"}
    method : {"gmvae", "vae", "selfsup"}
        A network method (:data:`POPULATION_METHODS`).
    output_dir : path
        The model goes to ``output_dir/group/`` (``model.pt``, ``group.json``), written atomically.
    seed : int
        Seed of every random draw: the voxels drawn from each subject and the training.
    n_proc : int
        Training processes (``torch.distributed`` data parallelism: gloo on the CPU, NCCL with one GPU
        per process).  The model matches one process's up to the training's random draws.
    voxels_per_subject : int
        Valid mask voxels drawn from each scan (all of them if it has fewer).
    device : {"auto", "cpu", "cuda"} or "cuda:N"
    progress : bool
        tqdm bars for reading and training.
    force : bool
        Replace an existing ``output_dir/group/``.
    **options
        Options of ``method`` (:data:`varmap.estimators.options.OPTIONS`); ``sigma`` (raw units) is then
        the noise level of every subject, one number.

    Returns
    -------
    Path
        ``output_dir/group/model.pt``.

    Raises
    ------
    InputError
        Before any voxel is read: for a method without a network, a bad option, ``n_proc`` or
        ``voxels_per_subject``, no scan, a label given twice, and every scan whose files cannot be used,
        whose protocol differs from the first scan's or whose computed mask is empty (all listed, each
        named by its subject and session).
    FileExistsError
        If ``output_dir/group/`` exists and ``force`` is false.
    torch.multiprocessing.ProcessRaisedException
        If a training process fails (``n_proc`` > 1); nothing is written.

    Notes
    -----
    Every training process holds all pooled voxels and trains on its share of each mini-batch
    (:func:`varmap.estimators.training.train_network`); rank 0 writes the outputs.  The processes are
    started with ``torch.multiprocessing.spawn``, which imports the calling script again in each: a
    script that calls this with ``n_proc`` > 1 must do so under ``if __name__ == "__main__":``.

    The 2-process model is not bit-identical to the 1-process one: each process draws the
    reparametrisation noise of its own voxels.  ``tests/cohort/test_population.py`` measures the
    difference on a new subject's maps (RMSE relative to the maps' spread, about 0.03 for D and 0.05
    for K on a tiny phantom cohort, against 0.09-0.4 between models of different seeds).
    """
    started = time.time()
    group_dir = check_output_dir(Path(output_dir) / "group", force=force)
    options = _checked_options(method, options)
    torch_device = checked_device(device)
    _check_counts(n_proc, voxels_per_subject, torch_device)
    opened = _open_scans(scans)
    protocol = opened[0][1].protocol
    _check_signal_model(model, protocol)
    timings = {"check_s": time.time() - started}
    voxels = _pool_voxels(opened, seed=seed, voxels_per_subject=voxels_per_subject, sigma=options.get("sigma"),
                          progress=progress)
    timings["read_s"] = time.time() - started - timings["check_s"]
    logger.info("population model: %s/%s on %d voxels of %d scans, %d process(es), device %s", model, method,
                len(voxels.signals), len(scans), n_proc, torch_device)
    record = _record_start(model, method, seed, n_proc, voxels_per_subject, torch_device, options, protocol,
                           voxels, timings)
    job = _TrainingJob(model=model, method=method, protocol=protocol, voxels=voxels, seed=seed, device=torch_device,
                       options={name: value for name, value in options.items() if name != "sigma"},
                       progress=progress, record=record, started=started)
    from ..estimators.distributed import launch

    with atomic_output_dir(group_dir, force=force) as folder:
        launch(_train_and_write, n_proc, (job, folder), device=torch_device)
    logger.info("population model written to %s", group_dir)
    return group_dir / "model.pt"


# ---------------------------------------------------------------------------------------------- checks
def _checked_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The given options of a network ``method``, checked; ``sigma`` must be one number for a cohort."""
    if method not in POPULATION_METHODS:
        raise InputError(
            f"method {method!r} cannot make a population model: it must learn a network to apply to other "
            f"scans; use one of {list(POPULATION_METHODS)}."
        )
    options = checked_options(method, options)
    if np.ndim(options.get("sigma")) != 0:
        raise InputError(
            "option sigma must be one noise level (raw units) for every subject of a population model; leave "
            "it out to estimate each subject's own."
        )
    return options


def _check_counts(n_proc: int, voxels_per_subject: int, device: "torch.device") -> None:
    """Refuse a number of processes or voxels that cannot work, before any voxel is read."""
    if isinstance(voxels_per_subject, bool) or not isinstance(voxels_per_subject, int) or voxels_per_subject < 1:
        raise InputError(f"voxels_per_subject must be a positive whole number; got {voxels_per_subject!r}.")
    from ..estimators.distributed import check_n_proc

    try:
        check_n_proc(n_proc, device)
    except ValueError as err:
        raise InputError(str(err)) from None


def _open_scans(scans: Sequence[ScanFiles]) -> list[tuple[ScanFiles, Scan, np.ndarray]]:
    """Every scan opened with its brain mask, after checking that all can be used together.

    Raises
    ------
    InputError
        Listing every scan that cannot be used, by label, with the reason and the fix.
    """
    if not scans:
        raise InputError("no scan given; a population model needs the scans of at least one subject.")
    problems, opened = [], []
    labels = [files.label for files in scans]
    for label in sorted({label for label in labels if labels.count(label) > 1}):
        problems.append(f"{label}: given {labels.count(label)} times; give each subject and session once.")
    first: tuple[ScanFiles, Scan] | None = None
    for files in scans:
        try:
            scan = open_scan(files.dwi, files.bvals, files.bvecs, mask=files.mask)
        except (OSError, ValueError) as err:  # missing files, unreadable images, bad bvals/bvecs or mask
            problems.append(f"{files.label}: {err}")
            continue
        if first is None:
            first = (files, scan)
        elif scan.protocol != first[1].protocol:
            problems.append(
                f"{files.label}: its protocol ({scan.protocol!r}, from {files.bvals} / {files.bvecs}) differs "
                f"from {first[0].label}'s ({first[1].protocol!r}); one population model needs one protocol: "
                f"leave the scan out, or train one model per protocol."
            )
            continue
        try:
            opened.append((files, scan, brain_mask(scan)))
        except InputError as err:
            problems.append(f"{files.label}: {err}")
    if problems:
        raise InputError("cannot train a population model on these scans:\n  " + "\n  ".join(problems))
    return opened


def _check_signal_model(model: str, protocol: "Protocol") -> None:
    """Refuse a model the cohort's protocol cannot fit (:func:`get_signal_model`'s error as an InputError)."""
    from ..signal_models import get_signal_model

    try:
        get_signal_model(model, protocol)
    except ValueError as err:
        raise InputError(f"the cohort's protocol cannot be used: {err}") from None


# ---------------------------------------------------------------------------------------------- voxels
def _pool_voxels(
    opened: list[tuple[ScanFiles, Scan, np.ndarray]], *, seed: int, voxels_per_subject: int, sigma: float | None,
    progress: bool,
) -> _PooledVoxels:
    """Each subject's noise level (:func:`varmap.pipeline.noise.noise_level`, as :func:`varmap.fit_image`
    finds it) and drawn voxels (stream ``population_voxels/<label>``), pooled."""
    signals, sigmas, subjects = [], [], []
    for files, scan, mask in opened:
        all_signals, voxels = read_signals(scan, mask, progress=progress)
        noise = noise_level(scan, mask, sigma=sigma)
        all_sigma = np.broadcast_to(np.asarray(noise.sigma, dtype=np.float64), (len(all_signals),))
        valid = np.flatnonzero(voxels.valid)
        rows = np.sort(numpy_stream(seed, f"population_voxels/{files.label}").choice(
            valid, size=min(voxels_per_subject, valid.size), replace=False))
        signals.append(all_signals[rows])
        sigmas.append(all_sigma[rows])
        subjects.append({
            "label": files.label,
            "subject": files.subject,
            "session": files.session,
            "inputs": input_checksums(scan.files),
            "mask": "given" if files.mask is not None else computed_mask_note(scan.protocol),
            "voxels": {"in_mask": len(all_signals), "valid": int(valid.size), "drawn": int(rows.size)},
            "noise": noise.record(np.where(voxels.valid, all_sigma, np.nan)),
        })
        logger.info("%s: %d of %d valid voxels drawn; noise level median %.4g (%s)", files.label, rows.size,
                    valid.size, subjects[-1]["noise"]["median"], noise.source)
    return _PooledVoxels(signals=np.concatenate(signals), sigma=np.concatenate(sigmas), subjects=subjects,
                         noise=noise)


# ---------------------------------------------------------------------------------------------- training
def _record_start(
    model: str,
    method: str,
    seed: int,
    n_proc: int,
    voxels_per_subject: int,
    device: "torch.device",
    options: dict[str, Any],
    protocol: "Protocol",
    voxels: _PooledVoxels,
    timings: dict[str, float],
) -> dict:
    """``group.json`` before training: settings, protocol and subjects (the trainer adds the rest)."""
    from .. import __version__

    return {
        "varmap_version": __version__,
        "kind": "population",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"model": model, "method": method, "seed": seed, "n_proc": n_proc,
                   "voxels_per_subject": voxels_per_subject, "device": str(device), "options": jsonable(options)},
        "seed": seed,
        "protocol": {
            "n_measurements": protocol.n_measurements,
            "n_b0": protocol.n_b0,
            "shells_s_per_mm2": (protocol.dw_shell_bvals * 1000).round(1).tolist(),
        },
        "subjects": voxels.subjects,
        "voxels": {"drawn": len(voxels.signals)},
        "checkpoint": "model.pt",
        "timings": dict(timings),
    }


def _train_and_write(job: _TrainingJob, folder: Path) -> None:
    """Train the estimator on the pooled voxels (in every process); rank 0 writes model.pt and group.json."""
    from ..estimators import get_estimator
    from ..estimators.distributed import rank_and_size, rank_device
    from ..signal_models import get_signal_model

    rank, n_proc = rank_and_size()
    signal_model = get_signal_model(job.model, job.protocol)
    estimator = get_estimator(job.method, signal_model, seed=job.seed, device=rank_device(job.device),
                              progress=job.progress and rank == 0, sigma=job.voxels.sigma, **job.options)
    estimator.train(job.voxels.signals)
    if rank != 0:
        return
    save_checkpoint(checkpoint_of(job.model, job.protocol, estimator, job.voxels.noise), folder / "model.pt")
    timings = {**job.record["timings"], **{f"fit_{stage}": seconds for stage, seconds in estimator.timings_.items()}}
    timings["total_s"] = time.time() - job.started
    record = {**job.record, "estimator": jsonable(estimator.get_config()), "timings": timings,
              "history": jsonable(estimator.history_), "environment": environment()}
    save_json(record, folder / "group.json")
