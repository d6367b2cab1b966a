"""The one image pipeline: :func:`fit_image` and :func:`apply_checkpoint` in named steps.

Both check every input before any heavy work, decide the brain mask, then hand the scan and an
estimator to :func:`_map_scan`: read the masked voxels, ``estimator.fit`` (or ``.transform``), maps in
image space, fit.json's record and, with an output folder, every file.
"""

from __future__ import annotations

import logging
import time
from os import PathLike
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..io import check_input_file, check_output_dir
from ..provenance import fit_record, jsonable, python_call
from .checkpoint import checkpoint_of, restore_estimator
from .checks import checked_device, checked_options
from .maps import image_maps
from .noise import noise_level
from .outputs import write_outputs
from .result import ImageFitResult
from .scan import COMPUTED_MASK, Scan, brain_mask, open_scan, read_signals

if TYPE_CHECKING:
    import numpy as np

    from ..estimators import Estimator

__all__ = ["fit_image", "apply_checkpoint"]

logger = logging.getLogger("varmap")

_T = TypeVar("_T")


def fit_image(
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    model: str = "msdki",
    method: str = "gmvae",
    output_dir: str | PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
    **options: Any,
) -> ImageFitResult:
    """Fit a signal model to every voxel of a 4-D diffusion image and write the maps.

    Parameters
    ----------
    dwi : path
        4-D NIfTI image (.nii or .nii.gz).
    bvals, bvecs : path
        FSL text files (b-values in s/mm², directions as three rows).
    mask : path, optional
        Brain mask in the DWI's voxel grid (values > 0 are in).  Default: computed with dipy's
        ``median_otsu`` on the mean b=0 image (holes filled) and saved as ``mask.nii.gz``.
    model : {"msdki", "ball_stick"}
    method : {"nlls", "selfsup", "vae", "gmvae"}
    output_dir : path, optional
        Folder for the maps, ``fit.json``, ``model.pt`` and ``overview.png``; written atomically.
        ``None`` writes nothing.
    seed : int
        Seed of every random draw.
    device : {"auto", "cpu", "cuda"} or "cuda:N"
        ``"auto"``: the GPU when one is present.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        tqdm bars for reading, training and inference.
    figure : bool
        Draw ``overview.png``.
    command : str, optional
        The command line recorded in ``fit.json`` (the CLI passes its own); default the Python call.
    **options
        Estimator options of ``method`` (:data:`varmap.estimators.options.OPTIONS`: ``n_epochs``,
        ``batch_size``, ``n_components``, ``likelihood``, ``sigma`` in raw signal units...).  Only
        these are passed, so the estimator's defaults rule the rest.

    Returns
    -------
    ImageFitResult

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError, ValueError
        On bad input, before any heavy work; nothing is written.

    Notes
    -----
    With fewer than two b=0 volumes and no ``sigma``, the noise level is estimated from the b=0
    image(s) by pseudo-residuals (:func:`~varmap.pipeline.noise.estimate_sigma_from_image`); fit.json
    records where sigma came from (``config.sigma_source``).
    """
    started = time.perf_counter()
    if command is None:
        command = python_call("fit_image", dwi, bvals, bvecs, mask=mask, model=model, method=method,
                              output_dir=output_dir, seed=seed, device=device, **options)
    # ---- check every input before any heavy work
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    options = checked_options(method, options)
    torch_device = checked_device(device)
    scan = open_scan(dwi, bvals, bvecs, mask=mask)
    from ..signal_models import get_signal_model

    signal_model = get_signal_model(model, scan.protocol)
    timings = {"check_s": time.perf_counter() - started}
    logger.info("fitting %s with %s on %s (%s), device %s", model, method, scan.image.path.name,
                "x".join(map(str, scan.image.shape)), torch_device)

    # ---- mask, noise level, estimator
    mask_array = _timed(timings, "mask_s", brain_mask, scan)
    sigma, sigma_source = _timed(timings, "noise_s", noise_level, scan.image, scan.protocol, mask_array,
                                 options.get("sigma"))
    if sigma is not None:
        options["sigma"] = sigma
    from ..estimators import get_estimator

    estimator = get_estimator(method, signal_model, seed=seed, device=torch_device, progress=progress, **options)

    # ---- the scan mapped
    config = {"model": model, "method": method, "seed": seed, "device": str(torch_device),
              "options": jsonable(options), "sigma_source": sigma_source}
    return _map_scan(scan, mask_array, estimator, kind="fit", command=command, config=config,
                     input_files=scan.files, output_dir=output_dir, force=force, figure=figure,
                     progress=progress, timings=timings, started=started)


def apply_checkpoint(
    checkpoint: str | PathLike,
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    output_dir: str | PathLike | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
) -> ImageFitResult:
    """Map a new scan with a trained checkpoint (``model.pt`` of :func:`fit_image`), without training.

    The scan must have the protocol of the checkpoint (same b-values and directions, in order).
    Parameters and outputs are those of :func:`fit_image`, without ``model.pt``; ``fit.json`` names the
    checkpoint and its checksum.

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError
        Including a checkpoint that is not varmap's or a scan of another protocol.
    """
    started = time.perf_counter()
    if command is None:
        command = python_call("apply_checkpoint", checkpoint, dwi, bvals, bvecs, mask=mask,
                              output_dir=output_dir, device=device)
    # ---- check every input before any heavy work
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    torch_device = checked_device(device)
    checkpoint = check_input_file(checkpoint, "checkpoint")
    scan = open_scan(dwi, bvals, bvecs, mask=mask)
    estimator, saved = restore_estimator(checkpoint, scan, device=torch_device, progress=progress)
    timings = {"check_s": time.perf_counter() - started}
    method = saved["state"]["method"]
    logger.info("applying %s checkpoint (%s, %s) to %s, device %s", method, saved["model"], checkpoint.name,
                scan.image.path.name, torch_device)

    # ---- the scan mapped
    mask_array = _timed(timings, "mask_s", brain_mask, scan)
    config = {"model": saved["model"], "method": method, "device": str(torch_device),
              "checkpoint": str(checkpoint), "checkpoint_varmap_version": saved.get("varmap_version"),
              "sigma_source": "checkpoint"}
    return _map_scan(scan, mask_array, estimator, kind="apply", command=command, config=config,
                     input_files={"checkpoint": checkpoint, **scan.files}, output_dir=output_dir, force=force,
                     figure=figure, progress=progress, timings=timings, started=started)


def _map_scan(
    scan: Scan,
    mask: "np.ndarray",
    estimator: "Estimator",
    *,
    kind: str,
    command: str,
    config: dict,
    input_files: dict,
    output_dir: str | PathLike | None,
    force: bool,
    figure: bool,
    progress: bool,
    timings: dict[str, float],
    started: float,
) -> ImageFitResult:
    """Read the mask's voxels, fit (``kind="fit"``) or transform them, and make maps, record and files."""
    signals, voxels = _timed(timings, "read_s", read_signals, scan, mask, progress=progress)
    run = estimator.fit if kind == "fit" else estimator.transform
    fit = _timed(timings, "fit_s", run, signals)
    timings.update({f"fit_{stage}": seconds for stage, seconds in fit.timings.items()})
    logger.info("%s %d voxels in %.1f s", "fitted" if kind == "fit" else "mapped", int(voxels.valid.sum()),
                timings["fit_s"])
    config.update({
        "seed": fit.seed,
        "estimator": jsonable(fit.config),
        "mask": "given" if not scan.mask_computed else COMPUTED_MASK,
        "sigma": fit.sigma,
    })
    maps, units = _timed(timings, "maps_s", image_maps, fit, signals, mask)
    metadata = fit_record(kind=kind, command=command, config=config, image=scan.image, protocol=scan.protocol,
                          voxels=voxels, mask_computed=scan.mask_computed, units=units, history=fit.history,
                          timings=timings)
    result = ImageFitResult(maps=maps, units=units, mask=mask, affine=scan.image.affine, header=scan.image.header,
                            fit=fit, estimator=estimator, metadata=metadata)
    if output_dir is None:
        timings["total_s"] = time.perf_counter() - started
        return result
    write_outputs(
        result, output_dir, input_files=input_files, force=force, started=started, zooms=scan.image.zooms,
        checkpoint=checkpoint_of(config["model"], scan.protocol, estimator) if kind == "fit" else None,
        figure_title=f"{config['model']} / {config['method']} -- {scan.image.path.name}" if figure else None,
    )
    counts = metadata["voxels"]
    excluded = f" ({counts['excluded']} excluded)" if counts["excluded"] else ""
    logger.info("%s done: %s/%s, %d voxels%s, %.1f s; outputs in %s", kind, config["model"], config["method"],
                counts["fitted"], excluded, timings["total_s"], result.output_dir)
    return result


def _timed(timings: dict[str, float], key: str, step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``step(*args, **kwargs)``, its wall time stored as ``timings[key]`` (seconds)."""
    t0 = time.perf_counter()
    value = step(*args, **kwargs)
    timings[key] = time.perf_counter() - t0
    return value
